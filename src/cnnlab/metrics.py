"""How well a model does on a split: accuracy, per class, confusion matrix, most-confused pairs.

>>> report = evaluate(model, test_split, EvalSettings(batch_size=1000))
>>> report.accuracy, report.per_class_accuracy, report.confusion
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.data.splits import Split
from cnnlab.predict import EvalSettings, predict_logits, run_eval_settings
from cnnlab.runtime import Runtime


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
    model: torch.nn.Module, split: Split, settings: EvalSettings | None = None
) -> EvalReport:
    """Accuracy, loss, confusion matrix and per-image predictions of `model` on `split`."""
    logits = predict_logits(model, split.images, settings)
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


def evaluate_run(run, split: Split, runtime: Runtime) -> EvalReport:
    """`evaluate` a `LoadedRun` the way it evaluated itself during training."""
    settings = run_eval_settings(run.config, runtime, run.normalization)
    return evaluate(run.model, split.to(runtime.device), settings)
