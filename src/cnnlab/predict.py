"""Predictions from a trained model: the `Predictor` and the settings a run predicts with.

>>> predictor = Predictor(model, EvalSettings(norm=run.normalization))
>>> predictor.logits(images)   # uint8 (N, C, H, W) -> float32 (N, classes)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.runtime import Runtime, autocast, bf16_supported

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How a model is run for predictions: input scaling, batch size, precision, memory layout."""

    norm: Normalization = field(default_factory=Normalization)
    batch_size: int = 1000
    precision: str = "fp32"
    channels_last: bool = False


class Predictor:
    """Eval-mode predictions for uint8 images, scaled as in training.

    On creation it folds every batch norm that directly follows a convolution into that
    convolution (torch.fx's `fuse`, on a copy): the same function with one pass less over
    memory per layer. A model that cannot be traced is used unfolded; `folded` says which, and a
    warning is logged, so that a benchmark never reports a fold that did not happen.

        >>> Predictor(model, EvalSettings(norm=norm)).logits(images)
    """

    def __init__(self, model: torch.nn.Module, settings: EvalSettings | None = None):
        settings = settings or EvalSettings()
        was_training = model.training
        try:
            self.model = fuse(model.eval())
            self.folded = True
        except (TraceError, TypeError, RuntimeError, NotImplementedError) as err:
            log.warning("batch norm not folded (%s: %s)", type(err).__name__, err)
            self.model = copy.deepcopy(model)
            self.folded = False
        model.train(was_training)
        # The copy's layout is set here, whatever the source model's: the same weights then give
        # the same bits whether the model comes from training or from a run folder.
        layout = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=layout)
        self.device = next(model.parameters()).device
        self.settings = settings

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> float32 logits `(N, classes)`, batch by batch.

        `images` may also be a memory-mapped numpy array (a folder dataset bigger than memory).
        """
        s = self.settings
        outputs = []
        for start in range(0, images.shape[0], s.batch_size):
            batch = images[start : start + s.batch_size]
            if not isinstance(batch, torch.Tensor):
                batch = torch.from_numpy(np.array(batch))  # the rows read from the mapped file
            batch = batch.to(self.device)
            x = to_model_input(batch, s.norm, s.channels_last)
            with autocast(self.device, s.precision):
                outputs.append(self.model(x).float())
        return torch.cat(outputs) if outputs else torch.empty(0)


def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, settings: EvalSettings | None = None
) -> torch.Tensor:
    """uint8 `(N, C, H, W)` -> float32 logits `(N, classes)` with a one-off `Predictor`."""
    return Predictor(model, settings).logits(images)


def run_eval_settings(run_config: dict, runtime: Runtime, norm: Normalization) -> EvalSettings:
    """The settings a run trained with, where this machine supports them.

    Predicting with the run's own precision and memory layout reproduces its recorded accuracy
    to the last image; every command that predicts for a run goes through here.
    """
    recorded = run_config.get("runtime", {})
    precision = recorded.get("precision", "fp32")
    if precision == "bf16" and not bf16_supported(runtime.device):
        precision = "fp32"
    channels_last = bool(recorded.get("channels_last", False) and runtime.channels_last)
    return EvalSettings(norm=norm, precision=precision, channels_last=channels_last)
