"""One process per run folder, SIGTERM handled like Ctrl-C, and resume with the run's own runtime.

The lock tests hold the lock from this process or from a helper process (deterministic, no race
between two trainings); the signal tests run `python -m cnnlab train` and signal it mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, load_training_state
from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.lock import LOCK_FILE, lock_run_folder
from cnnlab.runfiles import read_metrics
from cnnlab.runfolder import STAGING_PREFIX
from cnnlab.runtime import available_cpus, resume_settings
from tests.conftest import one_error_line, write_fake_dataset

SMALL = ["--epochs", "1", "--train-subset", "64", "--test-subset", "32", "--quiet"]


@pytest.fixture
def run(fake_root, tmp_path) -> Path:
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), *SMALL, "--threads", "1", "--out", str(out)]
    assert main([*argv, "--model", "mlp", "--hidden", "8"]) == 0
    return out


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# --- the lock -----------------------------------------------------------------------------------


def test_a_locked_run_folder_refuses_resume_and_overwrite(run, fake_root, capsys):
    before = snapshot(run)
    with lock_run_folder(run, command="cnnlab train --out holder"):
        for argv in (
            ["train", "--resume", str(run), "--epochs", "2"],
            ["train", *SMALL, "--out", str(run), "--overwrite"],
        ):
            capsys.readouterr()
            assert main([*argv, "--data-dir", str(fake_root)]) == 1
            line = one_error_line(capsys)
            assert f"run folder {run} is in use by another cnnlab process" in line
            assert f"pid {os.getpid()}" in line and "cnnlab train --out holder" in line
        assert {k: v for k, v in snapshot(run).items() if k != LOCK_FILE} == before
    assert not (run / LOCK_FILE).exists(), "the holder removes the lock file when done"


HOLDER = """
import sys, time
from pathlib import Path
from cnnlab.lock import lock_run_folder
lock = lock_run_folder(Path(sys.argv[1]), command="cnnlab train --resume held")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_cannot_leave_the_lock_stuck(run, fake_root, capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(fake_root)]
        assert main(argv) == 1
        line = one_error_line(capsys)
        assert f"pid {holder.pid}" in line and "cnnlab train --resume held" in line
    finally:
        holder.kill()  # SIGKILL: no code of the holder runs
        holder.wait()
    assert (run / LOCK_FILE).exists(), "the killed holder's file is left behind..."
    assert main([*argv, "--threads", "1"]) == 0, "...but its lock went with it"
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert not (run / LOCK_FILE).exists()


# --- resume with the recorded runtime -----------------------------------------------------------


@pytest.mark.skipif(available_cpus() < 2, reason="needs two CPUs to differ from one thread")
def test_resume_reuses_the_recorded_threads_and_says_when_it_cannot(fake_root, tmp_path, capsys):
    base = ["--data-dir", str(fake_root), "--quiet", "--train-subset", "256", "--test-subset", "32"]
    straight = tmp_path / "straight"
    assert main(["train", *base, "--epochs", "2", "--threads", "1", "--out", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    assert main(["train", *base, "--epochs", "1", "--threads", "1", "--out", str(resumed)]) == 0
    torch.set_num_threads(2)  # what a new process starts with on this machine
    capsys.readouterr()
    assert (
        main(["train", "--resume", str(resumed), "--epochs", "2", "--data-dir", str(fake_root)])
        == 0
    )
    out = capsys.readouterr().out
    assert "not be bit-identical" not in out
    assert json.loads((resumed / CONFIG_FILE).read_text())["runtime"]["threads"] == 1
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    argv = ["train", "--resume", str(resumed), "--epochs", "3", "--threads", "2"]
    assert main([*argv, "--data-dir", str(fake_root)]) == 0
    out = capsys.readouterr().out
    assert "Note: threads 1 then, 2 now: the result will not be bit-identical" in out
    assert json.loads((resumed / CONFIG_FILE).read_text())["runtime"]["threads"] == 2


# --- signals ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_fake_root(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("data"), "mnist", n_train=4000, n_test=200)


def train_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cnnlab", "train", "--data-dir", str(root), "--out", str(out),
        "--batch-size", "16", "--epochs", "3", "--quiet", "--threads", "1", *extra,
    ]  # fmt: skip


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


def test_sigterm_keeps_the_epoch_and_says_how_to_resume(big_fake_root, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(big_fake_root, run), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(read_metrics(run)) >= 1, proc, "completed an epoch")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    done = len(read_metrics(run))
    assert "Traceback" not in err
    assert f"Terminated. Epoch {done} is saved in {run}. " in err
    assert f"Resume with: cnnlab train --resume {run}" in err
    assert load_training_state(run).epochs_done == done
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_sigkill_during_an_overwrites_first_epoch_keeps_the_old_run(big_fake_root, tmp_path):
    run = tmp_path / "run"
    old = subprocess.run(
        train_cmd(big_fake_root, run, "--epochs", "1", "--train-subset", "64"),
        capture_output=True,
        timeout=120,
    )
    assert old.returncode == 0, old.stderr
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    proc = subprocess.Popen(
        train_cmd(big_fake_root, run, "--overwrite", "--lr", "0.01"), stderr=subprocess.PIPE
    )
    wait_for(lambda: any(p.name.startswith(STAGING_PREFIX) for p in run.iterdir()), proc, "staged")
    time.sleep(0.5)  # inside the first epoch (it takes seconds)
    proc.kill()
    proc.wait()
    assert {k: v for k, v in snapshot(run).items() if k != LOCK_FILE} == before
    assert json.loads((run / CONFIG_FILE).read_text())["train"]["lr"] == 1e-3
    assert list(run.rglob(CONFIG_FILE)) == [run / CONFIG_FILE], "no file describes the new model"
    argv = ["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(big_fake_root)]
    assert main([*argv, "--quiet"]) == 0
    assert not any(p.name.startswith(".") for p in run.iterdir()), "leftovers were cleared"
    assert (run / "notes.txt").read_text() == "mine"
    assert load_training_state(run).epochs_done == 2
    assert (run / CHECKPOINT_FILE).is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_resume_on_a_machine_without_the_runs_device_names_the_flag():
    with pytest.raises(ConfigError, match="the run trained on cuda, which is not available here"):
        resume_settings({"device": "cuda", "precision": "fp32", "threads": 1}, None, None, None)
    assert resume_settings({"device": "cuda"}, "cpu", "fp32", 1) == ("cpu", "fp32", 1)


def test_resume_settings_are_the_recorded_ones_unless_given():
    recorded = {"device": "cpu", "precision": "fp32", "threads": 10**3}
    assert resume_settings(recorded, None, None, None) == ("cpu", "fp32", available_cpus())
    assert resume_settings(recorded, None, None, 1) == ("cpu", "fp32", 1)
