"""`cnnlab bench --predict`: the predict path and the model alone, PyTorch and onnxruntime."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from cnnlab.bench.prediction import (
    LatencyRuns,
    PredictPlan,
    interleaved_calls,
    predict_bench,
    write_pngs,
)
from cnnlab.bundled import bundled_run_dir
from cnnlab.cli import main
from cnnlab.data.sources import PACKAGED_ROOT
from cnnlab.runtime import resolve_runtime
from tests.conftest import one_error_line


def test_latency_figures_follow_from_the_call_times():
    runs = LatencyRuns("x", "PyTorch", 10, (0.1, 0.2, 0.4, 0.3, 5.0))
    assert runs.images_per_second == pytest.approx(10 / 0.3)
    assert runs.per_image_ms(0.5) == pytest.approx(30.0)
    assert runs.per_image_ms(0.99) == pytest.approx(
        np.quantile([0.1, 0.2, 0.4, 0.3, 5.0], 0.99) * 100
    )


def test_engines_take_turns_in_blocks_each_after_an_untimed_call():
    order = []
    ticks = itertools.count()
    works = [lambda: order.append("a"), lambda: order.append("b")]
    device = resolve_runtime("cpu", "fp32").device
    seconds = interleaved_calls(works, 5, device, lambda: next(ticks), blocks=2)
    assert "".join(order) == "aaaabbbb" + "aaabbb"  # blocks of 3 and 2 timed calls
    assert seconds == [(1,) * 5, (1,) * 5]  # each timed call between two consecutive clock reads
    order.clear()
    assert [len(s) for s in interleaved_calls(works, 2, device, lambda: 0, blocks=10)] == [2, 2]
    assert "".join(order) == "aabb" * 2


def test_the_pngs_hold_the_images(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    colour = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    for images, folder in ((grey, tmp_path / "g"), (colour, tmp_path / "c")):
        folder.mkdir()
        paths = write_pngs(images, folder)
        for image, path in zip(images, paths):
            read = np.asarray(Image.open(path))
            expected = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            assert np.array_equal(read, expected)


def test_predict_bench_measures_every_path_with_both_engines(tmp_path):
    pytest.importorskip("onnxruntime")
    runtime = resolve_runtime("cpu", "fp32")
    plan = PredictPlan(folder=12, single_calls=3, folder_calls=2)
    report = predict_bench(bundled_run_dir(), runtime, PACKAGED_ROOT, plan)
    assert report.onnx_note is None and report.inputs == "test images"
    rows = [(r.name, r.engine, r.images, len(r.seconds)) for r in report.runs]
    assert rows == [
        ("predict 1 image", "PyTorch", 1, 3),
        ("predict 1 image", "onnxruntime", 1, 3),
        ("predict a folder of 12 images", "PyTorch", 12, 2),
        ("predict a folder of 12 images", "onnxruntime", 12, 2),
        ("model alone, batch 1", "PyTorch", 1, 3),
        ("model alone, batch 1", "onnxruntime", 1, 3),
        ("model alone, batch 12", "PyTorch", 12, 2),
        ("model alone, batch 12", "onnxruntime", 12, 2),
    ]
    assert all(s > 0 for r in report.runs for s in r.seconds)


def test_the_command_prints_and_writes_the_figures(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "predict.json"
    argv = ["bench", "--predict", "--device", "cpu", "--steps", "2", "--repeats", "2"]
    assert main(argv + ["--images", "8", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model alone, batch 8" in printed and "onnxruntime" in printed
    saved = json.loads(out.read_text())
    assert [r["images_per_call"] for r in saved["runs"]] == [1, 1, 8, 8, 1, 1, 8, 8]
    assert saved["source"].endswith("mnist-cnn")


def test_run_is_refused_without_predict(tmp_path, capsys):
    assert main(["bench", "--run", str(tmp_path)]) == 1
    assert "--run is for --predict" in one_error_line(capsys)
