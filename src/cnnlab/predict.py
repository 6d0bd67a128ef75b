"""Predictions from a trained model: the `Predictor`, and people's own image files classified.

The `Predictor` runs a model on uint8 images exactly as the run evaluated itself. A `Classifier`
is whatever turns uint8 `(N, C, H, W)` images into logits, with the class names, the input shape
and the preprocessing style it was trained with; `run_classifier` builds one from a run folder,
`cnnlab.export.onnx_classifier` from an exported ONNX file. Everything else is the same for both:

    >>> Predictor(model, EvalSettings(norm=run.normalization)).logits(images)  # (N, classes)
    >>> classifier = run_classifier(Path("runs/demo"), resolve_runtime())
    >>> files, problems = collect_files(["digits/"])
    >>> for result in predict_files(files, classifier, top_k=3):
    ...     print(result.to_json())
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from cnnlab.choices import PREDICT_BATCH_SIZE
from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.errors import CheckpointError, ConfigError, EvaluationError, ImageError
from cnnlab.images import STYLES, open_image, prepare
from cnnlab.runtime import Runtime, autocast, bf16_supported, is_out_of_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How a model is run for predictions: input scaling, batch size, precision, memory layout.

    `batch_size` is where a `Predictor` starts: on out-of-memory it halves the batch and retries.
    """

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

    When a batch runs out of memory (on any device) the predictor halves its batch size, logs a
    warning and retries, down to one image; `batch_size` is the size it last used.

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
        self.batch_size = settings.batch_size

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> float32 logits `(N, classes)`, batch by batch.

        `images` may also be a memory-mapped numpy array (a folder dataset bigger than memory).
        """
        outputs = []
        start = 0
        while start < images.shape[0]:
            batch = images[start : start + self.batch_size]
            if not isinstance(batch, torch.Tensor):
                batch = torch.from_numpy(np.array(batch))  # the rows read from the mapped file
            out = self._forward_or_none(batch)
            if out is None:  # out of memory: the batch was halved, try again
                continue
            outputs.append(out)
            start += len(batch)
        return torch.cat(outputs) if outputs else torch.empty(0)

    def _forward_or_none(self, batch: torch.Tensor) -> torch.Tensor | None:
        """The batch's logits, or None after an out-of-memory error has halved `batch_size`."""
        s = self.settings
        try:
            x = to_model_input(batch.to(self.device), s.norm, s.channels_last)
            with autocast(self.device, s.precision):
                return self.model(x).float()
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if len(batch) == 1:
                raise EvaluationError(
                    f"out of memory on {self.device} predicting even one image at a time "
                    f"(the evaluation batch started at {s.batch_size} and halved at each "
                    f"out-of-memory error)"
                ) from None
        smaller = max(len(batch) // 2, 1)
        log.warning(
            "out of memory on %s at evaluation batch %d; retrying at batch %d",
            self.device,
            len(batch),
            smaller,
        )
        self.batch_size = smaller
        return None


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BATCH_SIZE = PREDICT_BATCH_SIZE  # images per forward pass
THUMBNAIL = (256, 256)  # the largest original kept for figures
# How each dataset's images were made, hence how a user's image must be prepared. A dataset
# not listed here (or a config.json that says "preprocessing") is prepared as "resize".
PREPROCESSING = {"mnist": "mnist", "fashion-mnist": "resize"}


@dataclass(frozen=True)
class Classifier:
    """A trained model as prediction needs it."""

    logits: Callable[[np.ndarray], np.ndarray]  # uint8 (N, C, H, W) -> float (N, classes)
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)
    preprocessing: str  # a style of cnnlab.images.prepare
    source: str  # the run folder or model file, for messages


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: the label, its probability and the `top` (name, probability)."""

    file: str
    index: int
    label: str
    confidence: float
    top: tuple[tuple[str, float], ...]
    probabilities: np.ndarray  # (classes,)
    seen: np.ndarray  # uint8 (C, H, W): what the model was given
    original: Image.Image | None = None  # a thumbnail, for the first few images only

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "label": self.label,
            "index": self.index,
            "confidence": self.confidence,
            "top": [[name, p] for name, p in self.top],
        }


@dataclass(frozen=True)
class Failure:
    """An image that could not be read or holds nothing to classify; `message` names it."""

    file: str
    message: str


def preprocessing_for(run_config: dict) -> str:
    """The preprocessing style for a run's config.json: its own "preprocessing" entry (top level
    or in "dataset") if it has one, else what `PREPROCESSING` says for its dataset."""
    dataset = run_config.get("dataset") or {}
    train = run_config.get("train") or {}
    style = run_config.get("preprocessing") or dataset.get("preprocessing")
    if style is None:
        style = PREPROCESSING.get(dataset.get("name") or train.get("dataset", "mnist"), "resize")
    if style not in STYLES:
        raise CheckpointError(
            f"unknown preprocessing {style!r} in the run's config; known: {', '.join(STYLES)}"
        )
    return style


def run_classifier(path: Path, runtime: Runtime, batch_size: int = BATCH_SIZE) -> Classifier:
    """The model of a run folder, predicting as it evaluated itself (`run_eval_settings`)."""
    from cnnlab.runfiles import load_run  # here: runfiles loads models through checkpoint

    run = load_run(path, runtime.device)
    settings = run_eval_settings(run.config, runtime, run.normalization)
    predictor = Predictor(run.model, replace(settings, batch_size=batch_size))
    classes = tuple(run.config.get("dataset", {}).get("classes") or run.dataset.classes)
    if len(classes) != run.model_config.num_classes:
        raise CheckpointError(
            f"{run.run_dir}: {len(classes)} class names for a model with "
            f"{run.model_config.num_classes} outputs"
        )

    def logits(images: np.ndarray) -> np.ndarray:
        return predictor.logits(torch.from_numpy(images)).cpu().numpy()

    shape = tuple(int(s) for s in run.model_config.input_shape)
    return Classifier(logits, classes, shape, preprocessing_for(run.config), str(run.run_dir))


def is_image_name(path: Path) -> bool:
    """Folders are searched for these: a known image suffix, no hidden part in the path."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(
        part.startswith(".") for part in path.parts
    )


def collect_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand folders (recursively, sorted; hidden files and other suffixes skipped) and keep
    files named explicitly whatever their name. Returns the files and one message per folder
    that held no image, so the caller can report it."""
    files: list[Path] = []
    problems: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(path)  # a missing or odd file fails with its own message when read
            continue
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
            found += [Path(folder, n) for n in names if is_image_name(Path(n))]
        if not found:
            problems.append(
                f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        files += sorted(found)
    return files, problems


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, classes) logits -> probabilities, in float64."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict_arrays(
    images: np.ndarray, classifier: Classifier, top_k: int = 3, files: Sequence[str] = ()
) -> list[Prediction]:
    """Prepared uint8 `(N, C, H, W)` images -> one `Prediction` each (`files` names them)."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    probabilities = softmax(classifier.logits(np.ascontiguousarray(images)))
    k = min(top_k, len(classifier.classes))
    predictions = []
    for n, probs in enumerate(probabilities):
        order = np.argsort(-probs, kind="stable")[:k]
        top = tuple((classifier.classes[i], float(probs[i])) for i in order)
        predictions.append(
            Prediction(
                file=files[n] if n < len(files) else str(n),
                index=int(order[0]),
                label=top[0][0],
                confidence=top[0][1],
                top=top,
                probabilities=probs,
                seen=images[n],
            )
        )
    return predictions


def predict_files(
    files: Sequence[Path],
    classifier: Classifier,
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    keep_originals: int = 0,
) -> Iterator[Prediction | Failure]:
    """Read, prepare and classify `files` batch by batch, yielding one result per file in order.

    A file that cannot be read, or is blank, gives a `Failure` and the others go on. The first
    `keep_originals` predictions carry a thumbnail of the image as read (for figures).
    """
    kept = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        results: list[Prediction | Failure | None] = [None] * len(chunk)
        ready, names, where, originals = [], [], [], []
        for n, file in enumerate(chunk):
            try:
                image = open_image(file)
                ready.append(prepare(image, classifier.preprocessing, classifier.shape))
            except ImageError as err:
                message = str(err) if str(err).startswith(str(file)) else f"{file}: {err}"
                results[n] = Failure(str(file), message)
                continue
            names.append(str(file))
            where.append(n)
            if kept < keep_originals:
                image.thumbnail(THUMBNAIL)
                originals.append(image)
                kept += 1
            else:
                originals.append(None)
        if ready:
            predictions = predict_arrays(np.stack(ready), classifier, top_k, names)
            for n, prediction, original in zip(where, predictions, originals):
                results[n] = replace(prediction, original=original)
        yield from results
