"""`cnnlab train` under faults: bad flags, existing run folders, a diverging loss, out of memory.

Every test runs the CLI in-process on the synthetic data (conftest's `fake_root`) and checks the
exit code and the one `cnnlab: error:` line: which flag, which epoch and step, which choices.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch

import cnnlab.run
import cnnlab.train
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.cli import main
from cnnlab.files import load_safetensors
from tests.conftest import one_error_line

SMALL = ["--epochs", "1", "--train-subset", "64", "--test-subset", "32", "--quiet"]
SMALL += ["--threads", "1"]  # tiny batches run faster on one thread of a shared machine


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch):
    """Skip loss.png and filters.png: drawing them is most of a small run's time, and no fault
    tested here involves them (viz and atomic writes are tested on their own)."""
    monkeypatch.setattr(cnnlab.run, "write_run_figures", lambda run_dir, result: None)


def train(root: Path, out: Path | None, *flags: str) -> int:
    argv = ["train", "--data-dir", str(root), *SMALL, *flags]
    return main(argv + (["--out", str(out)] if out is not None else []))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]


def file_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# --- bad flags: one line each, naming the flag and the valid choices ----------------------------

BAD_CHOICES = [
    ("--model", "vgg", "unknown model 'vgg'; known models: cnn, mlp, resnet"),
    (
        "--dataset",
        "imagenet",
        "unknown dataset 'imagenet'; known datasets: cifar10, fashion-mnist, mnist, or folder:PATH",
    ),
    ("--dataset", "folder:", "--dataset 'folder:': give the folder after 'folder:'"),
    ("--augment", "flip", "unknown augmentation 'flip'; choose from none, natural, digits"),
    ("--fit", "stretch", "unknown fit 'stretch'; choose from crop, pad"),
    ("--image-size", "32", "--image-size only applies to folder datasets (--dataset folder:PATH)"),
    ("--test-fraction", "0.2", "--test-fraction only applies to folder datasets"),
    ("--optimizer", "rmsprop", "unknown optimizer 'rmsprop'; choose from adam, adamw, sgd"),
    ("--schedule", "step", "unknown schedule 'step'; choose from constant, onecycle, cosine"),
    ("--precision", "fp16", "unknown precision 'fp16'; choose from auto, fp32, bf16"),
    ("--device", "tpu", "unknown device 'tpu'; choose from auto, cpu, cuda, mps"),
    ("--val-size", "100000", "--val-size 100000 must be between 0 and 599 (the training set has"),
    ("--lr", "-0.1", "--lr must be positive, got -0.1"),
    ("--lr", "nan", "--lr must be positive, got nan"),
    ("--weight-decay", "-1", "--weight-decay must be >= 0, got -1.0"),
    ("--label-smoothing", "1.5", "--label-smoothing must be in [0, 1)"),
]


@pytest.mark.parametrize(
    ("flag", "value", "message"), BAD_CHOICES, ids=[f"{f}={v}" for f, v, _ in BAD_CHOICES]
)
def test_bad_flag_value_is_one_line(fake_root, tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    assert train(fake_root, out, flag, value) == 1
    assert message in one_error_line(capsys)
    assert not out.exists(), "a refused command creates no run folder"


def test_val_size_equal_to_training_set(fake_root, tmp_path, capsys):
    assert train(fake_root, tmp_path / "run", "--val-size", "600") == 1
    line = one_error_line(capsys)
    assert "--val-size 600 must be between 0 and 599 (the training set has 600 images)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_unavailable_device(fake_root, tmp_path, capsys):
    assert train(fake_root, tmp_path / "run", "--device", "cuda") == 1
    assert "--device cuda: no CUDA GPU is available here" in one_error_line(capsys)


USAGE_ERRORS = [
    ("--epochs", "-1", "must be a positive integer, got -1"),
    ("--epochs", "0", "must be a positive integer, got 0"),
    ("--epochs", "two", "not an integer: 'two'"),
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--train-subset", "0", "must be a positive integer, got 0"),
    ("--val-size", "-5", "must be 0 or more, got -5"),
    ("--seed", "-1", "must be 0 or more, got -1"),
    ("--lr", "fast", "invalid float value: 'fast'"),
]


@pytest.mark.parametrize(
    ("flag", "value", "message"), USAGE_ERRORS, ids=[f"{f}={v}" for f, v, _ in USAGE_ERRORS]
)
def test_type_errors_are_argparse_usage_errors(fake_root, tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train(fake_root, out, flag, value)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.splitlines()[-1] == f"cnnlab train: error: argument {flag}: {message}"
    assert not out.exists()


def test_out_inside_a_regular_file(fake_root, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    assert train(fake_root, out) == 1
    assert f"cannot write to output folder {out}: Not a directory" in one_error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_is_a_regular_file(fake_root, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert train(fake_root, out) == 1
    assert f"output {out} exists and is not a folder" in one_error_line(capsys)
    assert out.read_text() == "mine"


def test_option_the_model_lacks_is_refused_before_the_run_folder(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(fake_root, out, "--model", "cnn", "--hidden", "32") == 1
    assert "model 'cnn' has no option hidden; its options: none" in one_error_line(capsys)
    assert not out.exists()


def test_negative_momentum_is_one_line(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    try:
        rc = train(fake_root, out, "--optimizer", "sgd", "--momentum", "-1")
    except Exception as err:  # what escapes today; the assertions below state the requirement
        pytest.fail(f"{type(err).__name__} escaped: {err}")
    assert rc == 1
    assert "--momentum" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("bad", [{"epochs": "five"}, {"lr": "0.1"}, {"batch_size": None}])
def test_config_file_with_mistyped_values(fake_root, tmp_path, capsys, bad):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": bad}))
    argv = ["train", "--data-dir", str(fake_root), "--config", str(config), "--quiet"]
    try:
        rc = main([*argv, "--out", str(tmp_path / "run")])
    except Exception as err:  # what escapes today; the assertions below state the requirement
        pytest.fail(f"{type(err).__name__} escaped: {err}")
    assert rc == 1
    line = one_error_line(capsys)
    assert str(config) in line and next(iter(bad)) in line


def test_resume_refuses_changed_flags(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(fake_root, run) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--optimizer", "sgd"]) == 1
    line = one_error_line(capsys)
    assert "--lr, --optimizer cannot be changed when resuming; only --epochs can" in line
    assert main(["train", "--resume", str(run), "--epochs", "1", "--data-dir", str(fake_root)]) == 1
    assert f"{run} already finished its 1 epochs; pass --epochs N" in one_error_line(capsys)


# --- existing run folders -----------------------------------------------------------------------


def test_existing_run_folder_is_not_overwritten(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(fake_root, run) == 0
    (run / "notes.txt").write_text("my notes")
    before = file_bytes(run)
    capsys.readouterr()
    assert train(fake_root, run, "--lr", "0.01") == 1
    line = one_error_line(capsys)
    assert f"run folder {run} already exists and is not empty" in line
    assert "--overwrite" in line and f"--resume {run}" in line
    assert file_bytes(run) == before


def test_folder_with_only_a_user_file_is_not_overwritten(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README").write_text("do not touch")
    assert train(fake_root, run) == 1
    assert "--overwrite" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["README"]


def test_overwrite_replaces_training_files_and_keeps_user_files(fake_root, tmp_path):
    run = tmp_path / "run"
    assert train(fake_root, run) == 0
    first_config = json.loads((run / CONFIG_FILE).read_text())
    (run / "notes.txt").write_text("my notes")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.py").write_text("print('mine')")
    assert train(fake_root, run, "--lr", "0.01", "--overwrite") == 0
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "analysis" / "plot.py").read_text() == "print('mine')"
    assert first_config["train"]["lr"] == 1e-3
    assert json.loads((run / CONFIG_FILE).read_text())["train"]["lr"] == 0.01
    assert [m["epoch"] for m in metrics(run)] == [1]


def test_existing_empty_folder_is_used(fake_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert train(fake_root, run) == 0
    assert (run / WEIGHTS_FILE).is_file()


# --- a loss that stops being finite --------------------------------------------------------------


def test_huge_learning_rate_stops_with_epoch_and_step(fake_root, tmp_path, capsys):
    """A real divergence, no fault injected: SGD at lr 1e9 overflows within a few steps."""
    run = tmp_path / "run"
    assert train(fake_root, run, "--lr", "1e9", "--optimizer", "sgd", "--train-subset", "256") == 1
    line = one_error_line(capsys)
    assert re.search(r"loss became (nan|inf|-inf) at epoch 1, step [1-4];", line), line
    assert "try a lower --lr" in line
    assert "No epoch was completed, so nothing was saved." in line
    assert not (run / METRICS_FILE).exists() and not (run / WEIGHTS_FILE).exists()


def test_divergence_in_first_epoch_does_not_claim_a_kept_epoch(fake_root, tmp_path, capsys):
    flags = ["--lr", "1e9", "--optimizer", "sgd", "--train-subset", "256"]
    assert train(fake_root, tmp_path / "run", *flags) == 1
    line = one_error_line(capsys)
    assert "No epoch was completed" in line
    assert "last completed epoch is kept" not in line


def nan_loss_from_call(monkeypatch, first_bad: int) -> None:
    """Fault injection: the real step runs, but from call `first_bad` on its loss is nan."""
    real_step = cnnlab.train.train_step
    calls = itertools.count(1)

    def step(*args, **kwargs):
        loss, correct = real_step(*args, **kwargs)
        if next(calls) >= first_bad:
            loss = torch.full_like(loss, float("nan"))
        return loss, correct

    monkeypatch.setattr(cnnlab.train, "train_step", step)


def test_nan_in_epoch_two_keeps_epoch_one(fake_root, tmp_path, capsys, monkeypatch):
    """600 images in batches of 8 is 75 steps an epoch; the loss turns nan at step 60 of epoch 2.

    The non-finite check runs every 50 steps, so this also checks the step number across checks.
    The reference is a separate one-epoch run with the same seed: its weights must be the ones kept.
    """
    flags = ["--model", "mlp", "--train-subset", "600", "--batch-size", "8", "--precision", "fp32"]
    reference = tmp_path / "reference"
    assert train(fake_root, reference, *flags) == 0

    run = tmp_path / "run"
    nan_loss_from_call(monkeypatch, 75 + 60)
    capsys.readouterr()
    assert train(fake_root, run, *flags, "--epochs", "2") == 1
    line = one_error_line(capsys)
    assert "loss became nan at epoch 2, step 60;" in line
    assert f"Epoch 1 is saved in {run}." in line

    assert [m["epoch"] for m in metrics(run)] == [1]
    assert metrics(run)[0]["loss"] == metrics(reference)[0]["loss"]
    tensors, meta = load_safetensors(run / CHECKPOINT_FILE)
    assert (meta["epochs_done"], meta["global_step"]) == (1, 75)
    weights, _ = load_safetensors(run / WEIGHTS_FILE)
    expected, _ = load_safetensors(reference / WEIGHTS_FILE)
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        assert torch.equal(value, expected[name]), name
        assert torch.equal(value, tensors[f"model.{name}"]), name


def test_nan_while_resuming_changes_no_saved_file(fake_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(fake_root, run, "--train-subset", "128") == 0  # 2 steps an epoch
    saved = {name: (run / name).read_bytes() for name in (WEIGHTS_FILE, CHECKPOINT_FILE)}
    saved_metrics = (run / METRICS_FILE).read_text()
    nan_loss_from_call(monkeypatch, 1)
    capsys.readouterr()
    argv = ["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(fake_root)]
    argv += ["--threads", "1"]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "loss became nan at epoch 2, step 1;" in line
    assert f"Epoch 1 is saved in {run}." in line
    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert (run / METRICS_FILE).read_text() == saved_metrics
    assert len(saved_metrics.splitlines()) == 1


# --- out of memory ------------------------------------------------------------------------------


def out_of_memory_from_call(monkeypatch, first_bad: int) -> None:
    real_step = cnnlab.train.train_step
    calls = itertools.count(1)

    def step(*args, **kwargs):
        if next(calls) >= first_bad:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 12.25 GiB (GPU 0; 79.10 GiB total)"
            )
        return real_step(*args, **kwargs)

    monkeypatch.setattr(cnnlab.train, "train_step", step)


def test_out_of_memory_suggests_a_smaller_batch(fake_root, tmp_path, capsys, monkeypatch):
    """No GPU here: the CUDA out-of-memory error is injected into the training step."""
    out_of_memory_from_call(monkeypatch, 1)
    assert train(fake_root, tmp_path / "run", "--batch-size", "4096") == 1
    line = one_error_line(capsys)
    assert "out of memory on cpu at batch size 4096" in line
    assert "try a smaller --batch-size, such as 2048" in line
    assert "No epoch was completed" in line


def test_out_of_memory_in_epoch_two_keeps_epoch_one(fake_root, tmp_path, capsys, monkeypatch):
    """Injected CUDA out-of-memory error on the first step of epoch 2 (64 images, batch 32)."""
    run = tmp_path / "run"
    out_of_memory_from_call(monkeypatch, 3)
    assert train(fake_root, run, "--batch-size", "32", "--epochs", "2") == 1
    line = one_error_line(capsys)
    assert "at batch size 32; try a smaller --batch-size, such as 16" in line
    assert f"Epoch 1 is saved in {run}." in line
    assert [m["epoch"] for m in metrics(run)] == [1]


def test_cpu_allocation_failure_suggests_a_smaller_batch(fake_root, tmp_path, capsys, monkeypatch):
    """What PyTorch's CPU allocator raises when a batch does not fit (injected)."""

    def step(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 40000000000000 bytes."
        )

    monkeypatch.setattr(cnnlab.train, "train_step", step)
    assert train(fake_root, tmp_path / "run", "--batch-size", "60000") == 1
    line = one_error_line(capsys)
    assert "out of memory on cpu at batch size 60000; try a smaller --batch-size" in line


def test_batch_size_one_out_of_memory_suggests_one(fake_root, tmp_path, capsys, monkeypatch):
    """Injected fault: the suggestion never goes below a batch of 1."""
    out_of_memory_from_call(monkeypatch, 1)
    assert train(fake_root, tmp_path / "run", "--batch-size", "1", "--train-subset", "4") == 1
    assert "such as 1" in one_error_line(capsys)
