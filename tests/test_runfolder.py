"""A run folder is never lost: --overwrite keeps the old run until the new one has an epoch,
leftovers of a killed process are cleared, and every state names its next command.

In-process, on synthetic data: each failure of a new run (a diverging loss, Ctrl-C, a full disk)
is injected into the first epoch of `train --overwrite`, and the old run's files must come out
byte for byte as they were.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab.resume
import cnnlab.run
import cnnlab.train
from cnnlab import runfolder
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.cli import main
from cnnlab.errors import CheckpointError, OutputError
from cnnlab.files import load_safetensors
from cnnlab.lock import LOCK_FILE
from tests.conftest import idx_bytes, one_error_line

SMALL = ["--epochs", "1", "--train-subset", "64", "--test-subset", "32", "--quiet"]
SMALL += ["--threads", "1", "--model", "mlp", "--hidden", "8"]


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch):
    """Skip loss.png and filters.png (most of a small run's time; not what is tested here)."""
    monkeypatch.setattr(cnnlab.run, "write_run_figures", lambda run_dir, result: None)


def train(root: Path, out: Path, *flags: str) -> int:
    return main(["train", "--data-dir", str(root), *SMALL, *flags, "--out", str(out)])


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture
def old_run(fake_root, tmp_path) -> Path:
    """A finished run with a user's file and an eval figure in it."""
    run = tmp_path / "run"
    assert train(fake_root, run) == 0
    (run / "notes.txt").write_text("mine")
    (run / "confusion.png").write_bytes(b"figure of the old model")
    return run


def nan_loss(monkeypatch) -> None:
    """Fault injection: the real step runs, but its loss is nan (a diverging run)."""
    real_step = cnnlab.train.train_step

    def step(*args, **kwargs):
        loss, correct = real_step(*args, **kwargs)
        return torch.full_like(loss, float("nan")), correct

    monkeypatch.setattr(cnnlab.train, "train_step", step)


def interrupt_first_step(monkeypatch) -> None:
    def step(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.train, "train_step", step)


def full_disk_at_first_save(monkeypatch) -> None:
    def save_epoch(folder, end):
        raise OutputError(f"cannot write {folder / CHECKPOINT_FILE}: No space left on device")

    monkeypatch.setattr(cnnlab.run, "save_epoch", save_epoch)


FAILURES = {  # failure -> (extra flags, fault injection, exit status)
    "diverging_loss": ([], nan_loss, 1),
    "ctrl_c": ([], interrupt_first_step, 130),
    "full_disk": ([], full_disk_at_first_save, 1),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_overwrite_keeps_the_old_run_whole_until_the_new_one_saves_an_epoch(
    old_run, fake_root, monkeypatch, capsys, failure
):
    before = snapshot(old_run)
    flags, inject, status = FAILURES[failure]
    if inject is not None:
        inject(monkeypatch)
    capsys.readouterr()
    assert train(fake_root, old_run, "--overwrite", *flags) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "No epoch was completed, so nothing was saved." in err
    assert "previous run is unchanged" in err
    assert snapshot(old_run) == before, "the old run must stay exactly as it was"
    assert sorted(os.listdir(old_run)) == sorted(before), "no staging folder, lock or temp file"


def test_overwrite_replaces_the_run_and_its_figures_and_keeps_other_files(old_run, fake_root):
    assert train(fake_root, old_run, "--overwrite", "--lr", "0.01") == 0
    assert (old_run / "notes.txt").read_text() == "mine"
    assert not (old_run / "confusion.png").exists(), "a figure of the old model was kept"
    config = json.loads((old_run / CONFIG_FILE).read_text())
    assert config["train"]["lr"] == 0.01
    assert sorted(os.listdir(old_run)) == sorted(
        [CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, "notes.txt"]
    )


def test_overwrite_refuses_a_folder_that_is_not_a_cnnlab_run(fake_root, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / CONFIG_FILE).write_text('{"name": "my project", "model": "not yours"}')
    (project / WEIGHTS_FILE).write_bytes(b"my own weights")
    before = snapshot(project)
    assert train(fake_root, project, "--overwrite") == 1
    line = one_error_line(capsys)
    assert "holds no cnnlab run" in line and "choose another --out" in line
    assert snapshot(project) == before
    assert sorted(os.listdir(project)) == sorted(before)


def test_a_fresh_run_that_saves_nothing_leaves_no_folder(fake_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs" / "new"
    with monkeypatch.context() as patch:
        nan_loss(patch)
        assert train(fake_root, out) == 1
    assert "No epoch was completed" in one_error_line(capsys)
    assert not out.exists()
    assert train(fake_root, out) == 0, "the same command works once the loss is finite"


def test_ctrl_c_during_a_save_takes_effect_after_the_epoch_is_saved(tmp_path):
    """The signal is sent from inside the save: the save finishes, then KeyboardInterrupt."""
    run = tmp_path / "run"
    run.mkdir()
    stage = runfolder.Stage(run, run / f"{runfolder.STAGING_PREFIX}{os.getpid()}", {})
    stage.staging.mkdir()

    def save_files(folder: Path) -> None:
        (folder / CHECKPOINT_FILE).write_bytes(b"checkpoint")
        os.kill(os.getpid(), signal.SIGINT)
        (folder / WEIGHTS_FILE).write_bytes(b"weights")
        (folder / METRICS_FILE).write_text("{}\n")

    with pytest.raises(KeyboardInterrupt):
        stage.save(save_files)
    assert sorted(os.listdir(run)) == [CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE]
    assert stage.swapped


# --- leftovers of a killed process --------------------------------------------------------------


def dead_pid() -> int:
    """A pid no process has now (a child that has exited and been reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_next_run_removes_a_killed_runs_staging_folder_and_temp_files(old_run, fake_root):
    """Killed during its first epoch: the old run is whole, staging holds only config.json."""
    before = snapshot(old_run)
    staging = old_run / f"{runfolder.STAGING_PREFIX}{dead_pid()}"
    staging.mkdir()
    shutil.copy(old_run / CONFIG_FILE, staging / CONFIG_FILE)
    stale = old_run / f".{WEIGHTS_FILE}.{dead_pid()}.0a1b2c3d.tmp"
    stale.write_bytes(b"half a file")
    (old_run / LOCK_FILE).write_text('{"pid": 1}')  # the lock file a SIGKILL leaves
    argv = ["train", "--resume", str(old_run), "--epochs", "2", "--data-dir", str(fake_root)]
    assert main([*argv, "--threads", "1"]) == 0
    assert not staging.exists() and not stale.exists() and not (old_run / LOCK_FILE).exists()
    assert snapshot(old_run)["notes.txt"] == before["notes.txt"]
    assert [m["epoch"] for m in cnnlab.runfiles.read_metrics(old_run)] == [1, 2]


def test_a_swap_killed_halfway_is_finished_by_the_next_process(old_run, fake_root, tmp_path):
    """Killed after the old config.json went and part of the new run moved in."""
    new = tmp_path / "new"
    assert train(fake_root, new, "--lr", "0.01") == 0
    staging = old_run / f"{runfolder.STAGING_PREFIX}{dead_pid()}"
    staging.mkdir()
    for name in (WEIGHTS_FILE, METRICS_FILE, CONFIG_FILE):
        shutil.copy(new / name, staging / name)
    (old_run / CONFIG_FILE).unlink()
    shutil.copy(new / CHECKPOINT_FILE, old_run / CHECKPOINT_FILE)  # moved before the kill
    with runfolder.locked_run(old_run):
        pass
    assert not staging.exists()
    assert snapshot(old_run) | {"notes.txt": b""} == snapshot(new) | {"notes.txt": b""}
    assert (old_run / "notes.txt").read_text() == "mine"


# --- states and their next command --------------------------------------------------------------


def test_checkpoint_without_weights_says_resume_and_resume_restores_them(
    old_run, fake_root, capsys
):
    weights = (old_run / WEIGHTS_FILE).read_bytes()
    metrics = (old_run / METRICS_FILE).read_text()
    (old_run / WEIGHTS_FILE).unlink()
    (old_run / METRICS_FILE).unlink()
    capsys.readouterr()
    assert main(["eval", str(old_run), "--data-dir", str(fake_root)]) == 1
    line = one_error_line(capsys)
    command = line.split(" with: ", 1)[1]
    assert shlex.split(command) == ["cnnlab", "train", "--resume", str(old_run.absolute())]
    assert main(["train", *shlex.split(command)[2:], "--data-dir", str(fake_root)]) == 0
    assert "Restored model.safetensors and metrics.jsonl" in capsys.readouterr().out
    restored, _ = load_safetensors(old_run / WEIGHTS_FILE)
    expected, _ = load_safetensors(old_run / CHECKPOINT_FILE)
    assert all(torch.equal(v, expected[f"model.{k}"]) for k, v in restored.items())
    assert (old_run / METRICS_FILE).read_text() == metrics
    assert (old_run / WEIGHTS_FILE).read_bytes() == weights
    assert main(["eval", str(old_run), "--data-dir", str(fake_root)]) == 0


def test_a_folder_with_only_config_json_says_start_again_and_that_works(old_run, fake_root, capsys):
    for name in (WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_FILE):
        (old_run / name).unlink()
    capsys.readouterr()
    for argv in (["eval", str(old_run)], ["train", "--resume", str(old_run)]):
        assert main([*argv, "--data-dir", str(fake_root)]) == 1
        line = one_error_line(capsys)
        assert "holds no completed epoch" in line
        command = shlex.split(line.split("start it again with: ", 1)[1])
        assert command[:3] == ["cnnlab", "train", "--config"] and "--overwrite" in command
    assert main([*command[1:], "--data-dir", str(fake_root), "--quiet"]) == 0
    assert (old_run / WEIGHTS_FILE).is_file() and (old_run / "notes.txt").read_text() == "mine"


def test_zero_image_test_split_is_refused_before_any_folder(fake_root, tmp_path, capsys):
    folder = fake_root / "MNIST" / "raw"
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(out), "--quiet"]
    assert main(argv) == 1
    assert "the test split has no images" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash reads the printed commands back")
def test_printed_commands_are_quoted_absolute_paths(fake_root, tmp_path, capsys, monkeypatch):
    """bash, the reference, must read each printed command back into the folder's path."""
    monkeypatch.chdir(tmp_path)
    out = Path("my runs") / "it's\nnew"
    capsys.readouterr()
    assert train(fake_root, out) == 0
    lines = capsys.readouterr().out.split("\n")
    for prefix in ("Evaluate: cnnlab eval ", "Train further: cnnlab train --resume "):
        line = next(line for line in lines if line.startswith(prefix))
        assert "\n" not in line
        word = line[len(prefix) :].split(" --epochs ")[0]
        read = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, text=True)
        assert read.stdout == str(tmp_path / out)


def test_resume_of_a_folder_without_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        cnnlab.resume.resume_run(tmp_path / "nothing", None, tmp_path)
