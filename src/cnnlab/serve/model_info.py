"""What the page's model panel shows: the model, its data, its layer table and its training.

Computed once when the server starts; `cnnlab summary` prints the same layer rows.

    >>> info = model_info(load_run("runs/demo"))
    >>> info.parameters, info.preprocessing, info.drawing
    (50378, 'mnist', True)
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.checkpoint import LoadedRun, read_metrics
from cnnlab.models import conv_layer_names, count_parameters
from cnnlab.predict import preprocessing_for
from cnnlab.summary import format_shape, summarize


@dataclass(frozen=True)
class SummaryRow:
    name: str
    kind: str
    input_shape: tuple[int, ...] | None
    output_shapes: tuple[tuple[int, ...], ...]
    parameters: int
    mult_adds: int


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
        summary=tuple(
            SummaryRow(r.name, r.kind, r.input_shape, r.output_shapes, r.parameters, r.mult_adds)
            for r in report.rows
        ),
        mult_adds=report.mult_adds,
        metrics=tuple(read_metrics(run.run_dir)),
    )
