"""The command line end to end, in-process (`cli.main(argv)`) and once as a real subprocess."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.bench import BenchReport, InferenceRate, LoopRuns
from cnnlab.bench.accuracy import time_line_phases
from cnnlab.cli import main
from cnnlab.cli.bench import print_report
from cnnlab.runfiles import read_metrics
from cnnlab.runtime import Runtime
from tests.conftest import strip_timing

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def trained(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--epochs", "2", "--val-size", "100"]
    assert main(argv + ["--out", str(run), "--quiet"]) == 0
    return run, capsys.readouterr().out


def test_train_prints_the_tutorial_lines_and_writes_the_run(trained):
    run, out = trained
    lines = out.strip().splitlines()
    assert lines[0] == f"Run folder: {run}"
    assert lines[1].startswith("Data: ") and "(--data-dir), a custom copy" in lines[1]
    assert re.fullmatch(r"Epoch 1: loss=\d\.\d{4}\b.*", lines[2])
    assert re.fullmatch(r"Epoch 2: loss=\d\.\d{4}\b.*val_acc=.*", lines[3])
    assert re.fullmatch(r"Test accuracy: \d\.\d{3}", lines[4])
    assert lines[-3] == f"Evaluate: cnnlab eval {run}"
    assert lines[-2].startswith(f"Train further: cnnlab train --resume {run} --epochs ")
    assert re.fullmatch(
        r"Time: [\d.]+ s in all: start-up [\d.]+ s, data .*, other [\d.]+ s", lines[-1]
    )
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
    for name in ("loss.png", "filters.png"):
        assert (run / name).read_bytes()[:8] == PNG
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert f"loss={metrics[0]['loss']:.4f}" in lines[2]
    assert f"Test accuracy: {metrics[-1]['test_accuracy']:.3f}" == lines[4]
    assert {"loss", "train_accuracy", "val_accuracy", "seconds", "images_per_second"} <= set(
        metrics[0]
    )
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {
        "name": "cnn",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "options": {},
    }
    assert {"cnnlab", "torch", "torchvision"} <= set(config["versions"])
    assert {"device", "precision", "threads"} <= set(config["runtime"])
    assert config["train"]["lr"] == 1e-3 and config["normalization"]["mean"] is None
    assert set(load_file(run / "model.safetensors")) == {
        f"{layer}.{p}" for layer in ("conv1", "conv2", "fc") for p in ("weight", "bias")
    } | {
        f"{bn}.{p}"
        for bn in ("bn1", "bn2")
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }


def test_eval_prints_the_same_accuracy(trained, fake_root, capsys):
    run, train_out = trained
    test_line = next(line for line in train_out.splitlines() if line.startswith("Test accuracy"))
    assert main(["eval", str(run), "--data-dir", str(fake_root)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(test_line + " ")
    assert "Per-class accuracy" in out and "Most confused" in out
    assert (run / "confusion.png").read_bytes()[:8] == PNG

    assert (
        main(["eval", str(run / "model.safetensors"), "--data-dir", str(fake_root), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert f"Test accuracy: {report['accuracy']:.3f}" == test_line
    confusion = report["confusion_matrix"]
    assert sum(map(sum, confusion)) == 200 == report["images"]
    per_class = [row[i] / max(sum(row), 1) for i, row in enumerate(confusion)]
    assert list(report["per_class_accuracy"].values()) == pytest.approx(per_class)


def test_eval_val_split(trained, fake_root, capsys):
    run, _ = trained
    assert main(["eval", str(run), "--data-dir", str(fake_root), "--split", "val", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 100
    assert report["accuracy"] == pytest.approx(read_metrics(run)[-1]["val_accuracy"])


def test_derived_figures_never_touch_training_files(trained, fake_root):
    run, _ = trained
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["filters", str(run)]) == 0
    assert main(["filters", str(run), "--layer", "conv2"]) == 0
    assert main(["eval", str(run), "--data-dir", str(fake_root)]) == 0
    for name, data in before.items():
        if name != "confusion.png":
            assert (run / name).read_bytes() == data, name
    assert (run / "filters-conv1.png").read_bytes()[:8] == PNG
    assert (run / "filters-conv2.png").read_bytes()[:8] == PNG


def test_filters_bad_layer_and_mlp(trained, fake_root, tmp_path, capsys):
    run, _ = trained
    assert main(["filters", str(run), "--layer", "fc"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "cnnlab: error: unknown layer 'fc'; valid layers: conv1, conv2"
    mlp = tmp_path / "mlp"
    argv = ["train", "--model", "mlp", "--hidden", "16", "--data-dir", str(fake_root)]
    assert main(argv + ["--epochs", "1", "--out", str(mlp), "--quiet"]) == 0
    assert not (mlp / "filters.png").exists() and (mlp / "loss.png").exists()
    capsys.readouterr()
    assert main(["filters", str(mlp)]) == 1
    assert "no convolutional layers" in capsys.readouterr().err


def test_config_rerun_reproduces_and_flags_override(trained, fake_root, tmp_path, capsys):
    run, _ = trained
    again = tmp_path / "again"
    argv = ["train", "--config", str(run / "config.json"), "--data-dir", str(fake_root)]
    assert main(argv + ["--out", str(again), "--quiet"]) == 0
    assert strip_timing(read_metrics(again)) == strip_timing(read_metrics(run))
    other = tmp_path / "other"
    assert main(argv + ["--out", str(other), "--epochs", "1", "--quiet"]) == 0
    config = json.loads((other / "config.json").read_text())["train"]
    assert config["epochs"] == 1 and config["val_size"] == 100


def test_datasets_and_models_listings(fake_root, capsys):
    assert main(["datasets", "--data-dir", str(fake_root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mnist\s+1x28x28\s+10\s+60,000\s+10,000\s+--data-dir", out, re.M)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cnn\s+50,378\s", out, re.M)
    assert re.search(r"^mlp\s+101,770\s", out, re.M)


BENCH_MODES = (
    "--speedrun",
    "--ablation",
    "--profile",
    "--accuracy",
    "--predict",
    "--busy",
    "--floors",
)


@pytest.mark.parametrize("first,second", list(itertools.combinations(BENCH_MODES, 2)))
def test_bench_modes_exclude_each_other(first, second, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", first, second])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"cnnlab bench: error: argument {second}: not allowed with argument {first}"
    )


def test_bench_prints_its_report(capsys):
    report = BenchReport(
        runtime=Runtime(torch.device("cpu"), "fp32", True, 2),
        threads=2,
        steps=300,
        batch_size=64,
        model="cnn",
        epoch_images=60_000,
        tutorial=LoopRuns("tutorial loop", (1000.0, 3000.0, 2000.0)),
        cnnlab=LoopRuns("cnnlab train", (5000.0, 4000.0, 6000.0)),
        forward_flops_per_image=7_740_000,
        limit_batch=512,
        limit_gflops={"bf16": 1000.0, "fp32": 250.0},
        inference=(InferenceRate(1, 2432.0, True), InferenceRate(1000, 28266.0, False)),
    )
    print_report(report)
    # by hand: 5,000 / 2,000 images/s; 5,000 x 3 x 7.74 MFLOP = 116.1 GFLOP/s, 46.44% of fp32's
    # 250; 60,000 x 23.22 MFLOP / 250 GFLOP/s = 5.57 s
    assert capsys.readouterr().out.splitlines() == [
        "(a) tutorial loop:        2,000 images/s",
        "(b) cnnlab train:         5,000 images/s  (2.50x the tutorial loop)",
        "model: 7.74 MFLOP forward per image, 23.22 MFLOP per training image (3x)",
        "(b) achieves 116 GFLOP/s",
        "(c) limit, conv2 shape at batch 512: bf16 1000 GFLOP/s, fp32 250 GFLOP/s",
        "(b) is 46.4% of the limit; an epoch at the limit would take 5.6 s",
        "inference (batch norm NOT folded): 2,432 images/s at batch 1, "
        "28,266 images/s at batch 1000",
        "(medians over repeats; per-repeat figures are in --json)",
    ]


def test_subprocess_smoke(fake_root, tmp_path):
    """The installed entry point, as a user runs it: python -m cnnlab train, then eval."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data-dir", str(fake_root), "--epochs", "1"]
    started = time.perf_counter()
    done = subprocess.run(cmd + ["--out", str(run)], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "Epoch 1: loss=" in done.stdout and "Test accuracy: " in done.stdout
    # the Time line accounts for the process as this test's clock saw it
    total = float(re.search(r"Time: ([\d.]+) s in all", done.stdout)[1])
    phases = time_line_phases(done.stdout)
    assert list(phases)[:4] == ["start-up", "data", "setup", "training"] and "other" in phases
    assert abs(sum(phases.values()) - total) <= 0.1 * len(phases)  # each rounded to 0.1 s
    assert total <= wall + 0.05 and total >= 0.5 * wall, (total, wall)
    assert phases["training"] == pytest.approx(read_metrics(run)[0]["seconds"], abs=0.06)
    assert "it/s" not in done.stderr and "batch/s" not in done.stderr  # no bar off a terminal
    cmd = [sys.executable, "-m", "cnnlab", "eval", str(run), "--data-dir", str(fake_root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
