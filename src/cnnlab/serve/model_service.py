"""What each request of the live page computes: the image the model sees, its guess, its maps.

A `ModelService` is made once per server from a run folder. Its methods are safe to call from
many threads at once: predictions go through a `Predictor` (no hooks, no state), and feature maps
are captured on one of a few private copies of the model, borrowed for the length of one forward
pass, so the hooks of one request never see another request's tensors.

    >>> service = ModelService(load_run("runs/demo"))
    >>> pixels = service.prepare(png_bytes)          # uint8 (C, H, W), what the model sees
    >>> service.predict(pixels, top_k=3).label, [s.title for s in service.feature_maps(pixels)]
    ('7', ['conv1: 32 maps, 28x28', 'after pooling: 32 at 14x14', ...])
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.data.preprocess import to_model_input
from cnnlab.errors import NoInkError
from cnnlab.images import open_image, prepare
from cnnlab.models import conv_layer_names
from cnnlab.predict import (
    Classifier,
    EvalSettings,
    Prediction,
    Predictor,
    predict_arrays,
    preprocessing_for,
)
from cnnlab.runfiles import LoadedRun
from cnnlab.serve.explain_position import ConvExplanation, explain_position
from cnnlab.teach.featuremaps import Stage, capture_feature_maps

DEFAULT_REPLICAS = 2


@dataclass(frozen=True)
class StageMaps:
    """One recorded stage's maps as uint8, scaled with the stage's own range.

    A byte v stands for `low + v / 255 * (high - low)`; one scale per stage keeps the maps of a
    stage comparable, so a learner sees which filters respond most.
    """

    name: str  # the layer, e.g. 'conv1' or 'pool#2'
    kind: str  # 'conv' (before batch norm), 'relu' or 'pool'
    shape: tuple[int, int, int]  # (C, H, W)
    title: str  # 'conv1: 32 maps, 28x28', 'after pooling: 32 at 14x14'
    low: float
    high: float
    data: bytes  # C * H * W bytes, map by map, row by row


def stage_title(stage: Stage) -> str:
    """The label the tutorial would give a stage: 'conv1: 32 maps, 28x28', '64 at 7x7'."""
    channels, height, width = stage.tensor.shape[1:]
    if stage.kind == "conv":
        return f"{stage.name}: {stage.shape_text}"
    after = {"pool": "after pooling", "relu": "after ReLU"}.get(stage.kind, stage.name)
    return f"{after}: {channels} at {height}x{width}"


def scale_to_bytes(values: torch.Tensor) -> tuple[float, float, bytes]:
    """float values -> (low, high, uint8 bytes) with low -> 0 and high -> 255."""
    low, high = float(values.min()), float(values.max())
    span = high - low
    if span <= 0:
        return low, high, bytes(values.numel())
    scaled = ((values - low) * (255.0 / span)).round_().clamp_(0, 255).to(torch.uint8)
    return low, high, scaled.numpy().tobytes()


def stage_maps(stage: Stage) -> StageMaps:
    tensor = stage.tensor[0]  # (C, H, W) of the one image
    low, high, data = scale_to_bytes(tensor)
    return StageMaps(
        stage.name, stage.kind, tuple(tensor.shape), stage_title(stage), low, high, data
    )


class ReplicaPool:
    """A few private copies of a model; `borrow` lends one to a single caller at a time.

    With one copy this is a lock around the model; more copies let forward passes overlap.
    """

    def __init__(self, model: torch.nn.Module, size: int = DEFAULT_REPLICAS):
        if size < 1:
            raise ValueError(f"a replica pool needs at least one copy, got {size}")
        self._free: queue.SimpleQueue[torch.nn.Module] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(copy.deepcopy(model).eval())
        self.size = size

    @contextmanager
    def borrow(self) -> Iterator[torch.nn.Module]:
        model = self._free.get()
        try:
            yield model
        finally:
            self._free.put(model)


class ModelService:
    """A loaded run ready to answer: preprocessing, prediction and feature maps."""

    def __init__(self, run: LoadedRun, replicas: int = DEFAULT_REPLICAS):
        self.run = run
        self.classes: tuple[str, ...] = tuple(run.dataset.classes)
        self.input_shape: tuple[int, int, int] = tuple(run.model_config.input_shape)
        self.style = preprocessing_for(run.config)
        self.norm = run.normalization
        predictor = Predictor(run.model, EvalSettings(norm=self.norm))  # fp32: exact batch-1
        self.classifier = Classifier(
            logits=lambda images: predictor.logits(torch.from_numpy(images)).numpy(),
            classes=self.classes,
            shape=self.input_shape,
            preprocessing=self.style,
            source=str(run.run_dir),
        )
        self.replicas = ReplicaPool(run.model, replicas)
        self.conv_layers = conv_layer_names(run.model)

    def prepare(self, data: bytes) -> np.ndarray:
        """Image file bytes -> uint8 (C, H, W) as the model sees it.

        Raises `ImageError` for anything that is not a usable image and `NoInkError` for an
        empty one (a blank canvas, one flat colour): there is nothing to classify.
        """
        pixels = prepare(open_image(data, name="the upload"), self.style, self.input_shape)
        if pixels.min() == pixels.max():
            raise NoInkError("no ink: the image is one flat colour, so there is nothing to read")
        return pixels

    def model_input(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (C, H, W) -> float (1, C, H, W) in the run's input scale."""
        return to_model_input(torch.from_numpy(np.ascontiguousarray(pixels))[None], self.norm)

    def predict(self, pixels: np.ndarray, top_k: int = 3) -> Prediction:
        """The guess for uint8 (C, H, W), as `cnnlab predict` makes it for a file."""
        return predict_arrays(pixels[None], self.classifier, top_k, files=("upload",))[0]

    def feature_maps(self, pixels: np.ndarray) -> list[StageMaps]:
        """Every conv and pooling output for this image, in the order the model computes them.

        Empty for a model without conv layers.
        """
        if not self.conv_layers:
            return []
        x = self.model_input(pixels)
        with self.replicas.borrow() as model:
            maps = capture_feature_maps(model, x, relu=False)
        return [stage_maps(stage) for stage in maps.stages]

    def explain(
        self, pixels: np.ndarray, layer: str, channel: int, row: int, col: int
    ) -> ConvExplanation:
        """The tutorial's sum at one position of one feature map (see `explain_position`)."""
        x = self.model_input(pixels)
        with self.replicas.borrow() as model:
            return explain_position(model, x, layer, channel, row, col)
