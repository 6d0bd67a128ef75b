"""How fast a trained model predicts: the whole `cnnlab predict` path (decode, prepare, model) for
one image and for a folder, and the model alone at batch 1 and a large batch in PyTorch and
onnxruntime, measured side by side in one process.

The images are the run's first test images (seeded random ones where its data is absent), written
as PNG files to a temporary folder: what a user's folder of digits would be.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.bench.timing import Clock, timed
from cnnlab.errors import ConfigError
from cnnlab.predict import Classifier, Failure, predict_files, run_classifier
from cnnlab.runtime import Runtime

BLOCKS = 10  # the engines take turns this many times


@dataclass(frozen=True)
class LatencyRuns:
    """Calls of one piece of work on `images` images each; the seconds of every call."""

    name: str
    engine: str  # "PyTorch" or "onnxruntime"
    images: int
    seconds: tuple[float, ...]

    @property
    def images_per_second(self) -> float:
        return self.images / statistics.median(self.seconds)

    def per_image_ms(self, quantile: float) -> float:
        """The `quantile` (0.5: median, 0.99: p99) of the calls' time, per image, in ms."""
        return float(np.quantile(self.seconds, quantile)) / self.images * 1e3

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "engine": self.engine,
            "images_per_call": self.images,
            "calls": len(self.seconds),
            "images_per_second": self.images_per_second,
            "per_image_ms_p50": self.per_image_ms(0.5),
            "per_image_ms_p99": self.per_image_ms(0.99),
            "seconds": list(self.seconds),
        }


@dataclass(frozen=True)
class PredictReport:
    """`cnnlab bench --predict`: the predict path, then the model alone per engine."""

    source: str
    inputs: str  # "test images" or "random images"
    runs: tuple[LatencyRuns, ...]
    onnx_note: str | None  # why onnxruntime was not measured, when it was not

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "inputs": self.inputs,
            "onnx_note": self.onnx_note,
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass(frozen=True)
class PredictPlan:
    folder: int = 1000  # images in the folder, and the large batch of the model alone
    single_calls: int = 300  # calls with one image
    folder_calls: int = 10  # calls with the folder or the large batch


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    """uint8 (N, C, H, W) -> N PNG files (greyscale or RGB), named in order."""
    paths = []
    for n, image in enumerate(images):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        path = folder / f"{n:05d}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)
        paths.append(path)
    return paths


def interleaved_calls(
    works, calls: int, device, clock: Clock, blocks: int = BLOCKS
) -> list[tuple[float, ...]]:
    """Seconds of each of `calls` calls of every work in `works`, the works taking turns in
    `blocks` blocks of calls (so drift in the machine's speed hits all alike). Each block starts
    with one untimed call: the other engine's threads may still be spinning from its last call
    (onnxruntime's and OpenMP's threads both spin before they sleep), which is not this
    engine's cost."""
    seconds = [[] for _ in works]
    for block in range(min(blocks, calls)):
        count = calls // blocks + (block < calls % blocks) if calls >= blocks else 1
        for work, times in zip(works, seconds):
            work()
            times += [timed(work, device, clock)[1] for _ in range(count)]
    return [tuple(times) for times in seconds]


def predict_all(files: list[Path], classifier: Classifier) -> None:
    """The whole predict path, as `cnnlab predict` runs it; a failure would skew the figures."""
    for result in predict_files(files, classifier, top_k=3, batch_size=len(files)):
        if isinstance(result, Failure):
            raise ConfigError(f"the benchmark's own image failed to predict: {result.message}")


def onnx_classifier_for(run, data_root: Path | None, folder: Path):
    """(classifier, None) from a checked ONNX export of `run`, or (None, why not)."""
    from cnnlab.export import export_onnx, onnx_classifier, require_onnx

    try:
        require_onnx()
    except ConfigError as err:
        return None, str(err)
    path = folder / "model.onnx"
    export_onnx(run, path, data_root)
    return onnx_classifier(path), None


def predict_bench(
    run_dir: Path,
    runtime: Runtime,
    data_root: Path | None,
    plan: PredictPlan = PredictPlan(),
    clock: Clock = time.perf_counter,
) -> PredictReport:
    """Measure the predict path and the model alone for the run in `run_dir`."""
    from cnnlab.export import check_inputs
    from cnnlab.runfiles import load_run

    run = load_run(run_dir)
    images, inputs = check_inputs(run, data_root, plan.folder)
    arrays = images.numpy()
    classifier = run_classifier(run_dir, runtime, batch_size=plan.folder)
    device = runtime.device
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        files = write_pngs(arrays, Path(tmp))
        ort, note = onnx_classifier_for(run, data_root, Path(tmp))
        engines = [("PyTorch", classifier)] + ([("onnxruntime", ort)] if ort else [])
        runs = []
        for count, calls in ((1, plan.single_calls), (len(files), plan.folder_calls)):
            name = "predict 1 image" if count == 1 else f"predict a folder of {count:,} images"
            chosen = files[:count]
            works = [lambda m=model, f=chosen: predict_all(f, m) for _, model in engines]
            timings = interleaved_calls(works, calls, device, clock)
            runs += [
                LatencyRuns(name, engine, count, t) for (engine, _), t in zip(engines, timings)
            ]
        for batch, calls in ((1, plan.single_calls), (len(arrays), plan.folder_calls)):
            x = np.ascontiguousarray(arrays[:batch])
            works = [lambda m=model, x=x: m.logits(x) for _, model in engines]
            timings = interleaved_calls(works, calls, device, clock)
            name = f"model alone, batch {batch:,}"
            runs += [
                LatencyRuns(name, engine, batch, t) for (engine, _), t in zip(engines, timings)
            ]
    return PredictReport(str(run.run_dir), inputs, tuple(runs), note)
