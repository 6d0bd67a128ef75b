"""Resume: a run killed mid-epoch and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.cli import main
from cnnlab.runfiles import read_metrics
from tests.conftest import strip_timing, write_fake_dataset


def train_cmd(root, out, *extra):
    return [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        "--data-dir",
        str(root),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--epochs",
        "3",
        "--test-subset",
        "500",
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]


def start_and_wait_for_epochs(cmd, run, epochs_done: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(read_metrics(run)) < epochs_done:  # an absent metrics.jsonl reads as []
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training never completed an epoch"
        time.sleep(0.01)
    time.sleep(0.2)  # well inside the next epoch (one epoch takes seconds)
    return proc


@pytest.fixture(scope="module")
def big_fake_root(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("data"), "mnist", n_train=4000, n_test=500)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(big_fake_root, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(train_cmd(big_fake_root, straight), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = start_and_wait_for_epochs(train_cmd(big_fake_root, killed), killed, 1)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    completed = len(read_metrics(killed))
    assert 1 <= completed < 3, "the kill must land before the run finished"
    assert proc.returncode == -signal.SIGKILL

    cmd = [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        "--resume",
        str(killed),
        "--quiet",
        "--threads",
        "1",
        "--data-dir",
        str(big_fake_root),
    ]
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming after epoch {completed} of 3" in resumed.stdout

    assert strip_timing(read_metrics(killed)) == strip_timing(read_metrics(straight))
    assert [m["epoch"] for m in read_metrics(killed)] == [1, 2, 3]
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = load_file(straight / name), load_file(killed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_sigint_stops_keeps_the_checkpoint_and_says_how_to_resume(big_fake_root, tmp_path):
    run = tmp_path / "run"
    proc = start_and_wait_for_epochs(train_cmd(big_fake_root, run), run, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = len(read_metrics(run))
    assert done in (1, 2)
    assert f"Epoch {done} is saved in {run}" in err
    assert f"Resume with: cnnlab train --resume {run}" in err
    assert "Traceback" not in err
    assert not list(run.glob(".*.tmp"))


def test_resume_extends_a_finished_run(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--data-dir", str(fake_root), "--quiet"]
    assert main(["train", "--epochs", "1", "--out", str(run), *base]) == 0
    assert main(["train", "--resume", str(run), *base]) == 1
    assert "already finished its 1 epochs; pass --epochs N" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", *base]) == 0
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert main(["train", "--resume", str(run), "--lr", "0.1", *base]) == 1
    assert "--lr cannot be changed when resuming" in capsys.readouterr().err

    straight = tmp_path / "straight"
    assert main(["train", "--epochs", "2", "--out", str(straight), *base]) == 0
    # extending changes nothing for a constant schedule: 1 + 1 epochs == 2 epochs, except that
    # the extended run also measured the test set when epoch 1 was its last
    extended = strip_timing(read_metrics(run))
    assert {"test_accuracy", "test_loss"} <= set(extended[0])
    extended[0] = {k: v for k, v in extended[0].items() if not k.startswith("test_")}
    assert extended == strip_timing(read_metrics(straight))
    a, b = load_file(run / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
