"""What the page's model panel shows: the model, its data, its layer table and its training.

Computed once when the server starts; `cnnlab summary` prints the same layer rows.

    >>> info = model_info(load_run("runs/demo"))
    >>> info.parameters, info.preprocessing, info.drawing
    (50378, 'mnist', True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.models import conv_layer_names, count_parameters
from cnnlab.predict import preprocessing_for
from cnnlab.runfiles import LoadedRun, read_metrics
from cnnlab.serve.model_service import stage_title
from cnnlab.teach.featuremaps import capture_feature_maps
from cnnlab.teach.summary import format_shape, summarize


@dataclass(frozen=True)
class SummaryRow:
    name: str
    kind: str
    input_shape: tuple[int, ...] | None
    output_shapes: tuple[tuple[int, ...], ...]
    parameters: int
    mult_adds: int


@dataclass(frozen=True)
class StageShape:
    """A stage whose maps the page shows, known before any image arrives (fixed layout)."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    title: str


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the registered model, e.g. 'cnn'
    run: str  # the run folder's name
    dataset: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    parameters: int
    preprocessing: str  # 'mnist' (centred like MNIST's digits) or 'resize'
    drawing: bool  # True where drawing a digit makes sense; else uploading is the main input
    conv_layers: tuple[str, ...]
    stages: tuple[StageShape, ...]  # what /api/predict?activations=1 returns maps for
    summary: tuple[SummaryRow, ...]
    mult_adds: int
    metrics: tuple[dict, ...]  # metrics.jsonl, one record per epoch

    @property
    def input_text(self) -> str:
        return format_shape(self.input_shape)

    @property
    def test_accuracy(self) -> float | None:
        """The recorded test accuracy of the last epoch, where training measured one."""
        for record in reversed(self.metrics):
            if isinstance(record.get("test_accuracy"), (int, float)):
                return float(record["test_accuracy"])
        return None


def stage_shapes(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> list[StageShape]:
    """The conv and pooling stages of one forward pass of zeros, as the page will show them."""
    if not conv_layer_names(model):
        return []
    maps = capture_feature_maps(model, torch.zeros(1, *input_shape), relu=False)
    return [
        StageShape(s.name, s.kind, tuple(s.tensor.shape[1:]), stage_title(s)) for s in maps.stages
    ]


def model_info(run: LoadedRun) -> ModelInfo:
    input_shape = tuple(run.model_config.input_shape)
    report = summarize(run.model, input_shape)
    style = preprocessing_for(run.config)
    return ModelInfo(
        name=run.model_config.name,
        run=run.run_dir.name,
        dataset=run.dataset.name,
        classes=tuple(run.dataset.classes),
        input_shape=input_shape,
        parameters=count_parameters(run.model),
        preprocessing=style,
        drawing=style == "mnist",
        conv_layers=tuple(conv_layer_names(run.model)),
        stages=tuple(stage_shapes(run.model, input_shape)),
        summary=tuple(
            SummaryRow(r.name, r.kind, r.input_shape, r.output_shapes, r.parameters, r.mult_adds)
            for r in report.rows
        ),
        mult_adds=report.mult_adds,
        metrics=tuple(read_metrics(run.run_dir)),
    )
