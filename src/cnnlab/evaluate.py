"""Accuracy, per-class accuracy, the confusion matrix and the most-confused pairs.

>>> report = evaluate(model, test_split, batch_size=1000)
>>> report.accuracy, report.per_class_accuracy, report.confusion
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from cnnlab.data import Split
from cnnlab.preprocess import Normalization, to_model_input
from cnnlab.runtime import Runtime, bf16_supported


def autocast(device: torch.device, precision: str):
    """bf16 autocast for `precision == "bf16"`, otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


class Predictor:
    """Eval-mode predictions for uint8 images, scaled as in training.

    On creation it folds every batch norm that directly follows a convolution into that
    convolution (torch.fx's `fuse`, on a copy): the same function with one pass less over
    memory per layer. Models that cannot be traced are used as they are.

        >>> Predictor(model, norm).logits(images)   # uint8 (N, C, H, W) -> (N, classes)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        norm: Normalization = Normalization(),
        precision: str = "fp32",
        channels_last: bool = False,
        batch_size: int = 1000,
    ):
        was_training = model.training
        try:
            self.model = fuse(model.eval())
        except (TraceError, TypeError, RuntimeError, NotImplementedError):
            self.model = copy.deepcopy(model)
        model.train(was_training)
        # The copy's layout is set here, whatever the source model's: the same weights then give
        # the same bits whether the model comes from training or from a run folder.
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=layout)
        self.device = next(model.parameters()).device
        self.norm = norm
        self.precision = precision
        self.channels_last = channels_last
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> float32 logits `(N, classes)`, batch by batch."""
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            x = to_model_input(batch, self.norm, self.channels_last)
            with autocast(self.device, self.precision):
                outputs.append(self.model(x).float())
        return torch.cat(outputs) if outputs else torch.empty(0)


def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    norm: Normalization = Normalization(),
    batch_size: int = 1000,
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 `(N, C, H, W)` -> float32 logits `(N, classes)` with a one-off `Predictor`."""
    return Predictor(model, norm, precision, channels_last, batch_size).logits(images)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """`(classes, classes)` int64 counts: rows are true labels, columns are predictions."""
    flat = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def most_confused(confusion: torch.Tensor, k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true, predicted, count), largest first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True)
    n = confusion.shape[0]
    return [(int(i) // n, int(i) % n, int(c)) for c, i in zip(counts[:k], flat[:k]) if c > 0]


@dataclass
class EvalReport:
    accuracy: float
    loss: float
    confusion: torch.Tensor  # (classes, classes)
    predictions: torch.Tensor  # (N,)
    confidences: torch.Tensor  # (N,) softmax probability of the prediction

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diagonal() / totals).tolist()

    def to_json(self, class_names) -> dict:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "images": int(self.confusion.sum()),
            "per_class_accuracy": dict(zip(class_names, self.per_class_accuracy)),
            "confusion_matrix": self.confusion.tolist(),
            "classes": list(class_names),
            "most_confused": [
                {"true": class_names[t], "predicted": class_names[p], "count": c}
                for t, p, c in most_confused(self.confusion)
            ],
        }


def evaluate(
    model: torch.nn.Module,
    split: Split,
    norm: Normalization = Normalization(),
    batch_size: int = 1000,
    precision: str = "fp32",
    channels_last: bool = False,
) -> EvalReport:
    logits = predict_logits(model, split.images, norm, batch_size, precision, channels_last)
    labels = split.labels.to(logits.device)
    probs = logits.softmax(dim=1)
    confidences, predictions = probs.max(dim=1)
    num_classes = logits.shape[1]
    return EvalReport(
        accuracy=int((predictions == labels).sum()) / len(labels) if len(labels) else 0.0,
        loss=float(F.cross_entropy(logits, labels)) if len(labels) else 0.0,
        confusion=confusion_matrix(predictions, labels, num_classes),
        predictions=predictions.cpu(),
        confidences=confidences.cpu(),
    )


def prediction_settings(run_config: dict, runtime: Runtime) -> tuple[str, bool]:
    """(precision, channels_last) the run trained with, where this machine supports them.

    Predicting with the run's own precision and memory layout reproduces its recorded accuracy
    to the last image; every command that predicts for a run goes through here.
    """
    recorded = run_config.get("runtime", {})
    precision = recorded.get("precision", "fp32")
    if precision == "bf16" and not bf16_supported(runtime.device):
        precision = "fp32"
    return precision, bool(recorded.get("channels_last", False) and runtime.channels_last)


def evaluate_run(run, split: Split, runtime: Runtime) -> EvalReport:
    """`evaluate` a `LoadedRun` the way it evaluated itself during training."""
    precision, channels_last = prediction_settings(run.config, runtime)
    norm = run.normalization
    return evaluate(run.model, split.to(runtime.device), norm, 1000, precision, channels_last)
