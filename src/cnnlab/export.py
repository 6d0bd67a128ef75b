"""Export a trained run to ONNX, checked against PyTorch, and run such a file with onnxruntime.

The file is self-describing: besides the graph (batch norm folded into the convolutions, a
dynamic batch dimension) its metadata holds the class names, the input shape, the preprocessing
style and the normalization, so nothing from cnnlab is needed to use it:

    >>> report = export_onnx(load_run("runs/demo"), Path("digits.onnx"), data_root)
    >>> report.max_abs_diff, report.same_argmax      # onnxruntime vs PyTorch logits
    >>> classifier = onnx_classifier(Path("digits.onnx"))   # for cnnlab.predict

The model takes float32 `(N, C, H, W)` scaled like training input: pixels / 255, then
(x - mean) / std when the metadata's normalization has a mean and std.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.data.preprocess import Normalization, to_model_input
from cnnlab.data.sources import is_present, load_split
from cnnlab.errors import CheckpointError, ConfigError, ExportError
from cnnlab.files import atomic_write_bytes
from cnnlab.images import STYLES
from cnnlab.predict import Classifier, EvalSettings, Predictor, preprocessing_for
from cnnlab.runfiles import LoadedRun, run_dataset_name

TOLERANCE = 1e-4  # largest allowed |logit difference| between onnxruntime and PyTorch
CHECK_IMAGES = 1000
INPUT_NAME, OUTPUT_NAME = "input", "logits"
MISSING_EXTRA = (
    "ONNX needs the export extra (onnx, onnxscript, onnxruntime): pip install 'cnnlab[export]'"
)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    exporter: str  # "dynamo" (torch.export + onnxscript) or "torchscript"
    opset: int
    images: int  # how many inputs the check compared
    inputs: str  # what they were: "test images" or "random images"
    max_abs_diff: float  # over all logits
    same_argmax: int  # inputs where both give the same class


def require_onnx():
    """(onnx, onnxruntime), or a `ConfigError` that names the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return onnx, onnxruntime


def export_onnx(
    run: LoadedRun,
    out: Path,
    data_root: Path | None = None,
    check_images: int = CHECK_IMAGES,
) -> ExportReport:
    """Export `run`'s model (on the CPU) to `out`, after checking it against PyTorch.

    The check runs onnxruntime and the PyTorch model (as trained, not folded) on `check_images`
    test images from `data_root` when the dataset is there, else on seeded random images: the
    logits must agree within `TOLERANCE` and give the same class everywhere, or nothing is
    written and `ExportError` says by how much they differ.
    """
    onnx, _ = require_onnx()
    model = copy.deepcopy(run.model).cpu().eval()
    folded = Predictor(
        model, EvalSettings(norm=run.normalization)
    ).model  # batch norm folded, as predictions use
    example = torch.zeros(2, *run.model_config.input_shape)
    proto, exporter = _to_onnx(folded, example)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    metadata = onnx_metadata(run, opset, exporter)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"cnnlab {run_dataset_name(run.config)} classifier; see metadata"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    images, inputs = check_inputs(run, data_root, check_images)
    diff, same = compare_with_torch(data, model, run.normalization, images)
    if diff > TOLERANCE or same < len(images):
        raise ExportError(
            f"the ONNX model differs from PyTorch on {len(images):,} {inputs}: max |logit diff| "
            f"{diff:.2e} (allowed {TOLERANCE:g}), same class on {same:,}; {out} not written"
        )
    atomic_write_bytes(Path(out), data)
    return ExportReport(Path(out), exporter, opset, len(images), inputs, diff, same)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor):
    """(ModelProto, exporter name): torch.export + onnxscript, else the TorchScript exporter for
    models torch.export cannot trace (the check after export holds either way)."""
    import onnx

    batch = torch.export.Dim("batch")
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        return program.model_proto, "dynamo"
    except Exception:  # torch.export's failures come in many types; fall back, then check
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        return onnx.load_from_string(buffer.getvalue()), "torchscript"


def onnx_metadata(run: LoadedRun, opset: int, exporter: str) -> dict[str, str]:
    """The metadata_props: everything a user needs to prepare inputs and read outputs."""
    classes = list(run.config.get("dataset", {}).get("classes") or run.dataset.classes)
    norm = run.normalization
    return {
        "classes": json.dumps(classes),
        "input_shape": json.dumps(list(run.model_config.input_shape)),
        "input": "float32 (N, C, H, W): uint8 pixels / 255, then (x - mean) / std when the "
        "normalization has a mean and std",
        "output": "float32 (N, classes) logits; softmax gives probabilities",
        "preprocessing": preprocessing_for(run.config),
        "normalization": json.dumps(norm.to_json()),
        "dataset": run_dataset_name(run.config),
        "model": run.model_config.name,
        "opset": str(opset),
        "exporter": exporter,
        "cnnlab_version": __version__,
    }


def check_inputs(run: LoadedRun, data_root: Path | None, n: int) -> tuple[torch.Tensor, str]:
    """uint8 `(n, C, H, W)`: the first n test images when present, else seeded random ones."""
    spec = run.dataset
    shape = tuple(run.model_config.input_shape)
    if data_root is not None and is_present(spec, data_root) and spec.shape == shape:
        test = load_split(spec, data_root, train=False)
        return test.images[:n], "test images"
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator), (
        "random images"
    )


def compare_with_torch(
    data: bytes, model: torch.nn.Module, norm: Normalization, images: torch.Tensor
) -> tuple[float, int]:
    """(max |logit difference|, inputs with the same argmax): onnxruntime vs `model` in fp32."""
    _, ort = require_onnx()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = to_model_input(images, norm)
    with torch.no_grad():
        expected = model.cpu().eval()(x).float().numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(expected - got).max()) if len(images) else 0.0
    return diff, int((expected.argmax(axis=1) == got.argmax(axis=1)).sum())


def onnx_classifier(path: Path) -> Classifier:
    """A `Classifier` for `cnnlab.predict` from an exported file: onnxruntime, and the class
    names, input shape, preprocessing and normalization from the file's metadata."""
    _, ort = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        reason = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a valid ONNX model ({reason})") from None
    meta = session.get_modelmeta().custom_metadata_map
    try:
        classes = tuple(str(c) for c in json.loads(meta["classes"]))
        shape = tuple(int(s) for s in json.loads(meta["input_shape"]))
        norm = Normalization.from_json(json.loads(meta.get("normalization", "{}")))
        style = meta["preprocessing"]
        if len(shape) != 3 or style not in STYLES:
            raise ValueError(f"input shape {shape}, preprocessing {style!r}")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a cnnlab export (its metadata lacks or garbles {err}); export with "
            "`cnnlab export RUN --format onnx`"
        ) from None
    input_name = session.get_inputs()[0].name

    def logits(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / np.float32(255.0)
        if norm.enabled:
            x = (x - np.float32(norm.mean)) / np.float32(norm.std)
        return session.run(None, {input_name: x})[0]

    return Classifier(logits, classes, shape, style, str(path))
