"""Every file cnnlab reads is a regular file of a size consistent with what it declares.

A symlink to /dev/zero would exhaust memory, a FIFO would block forever and a huge sparse file
would be read whole; each must be one clear error, at once. Each test arms an alarm, so that a
regression fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.cli import main
from cnnlab.data.idx import read_idx
from cnnlab.errors import CheckpointError, DataError
from cnnlab.files import read_json
from cnnlab.runfiles import load_run, read_metrics
from tests.conftest import idx_bytes, one_error_line, write_fake_dataset

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")


@contextlib.contextmanager
def within(seconds: int):
    """Fail instead of hanging: SIGALRM after `seconds`."""

    def hung(signum, frame):
        raise AssertionError(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def zero_device(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def huge_sparse(path: Path) -> None:
    """A 64 GiB file that takes no disk space: its first bytes are the real file's."""
    head = path.read_bytes()[:64] if path.exists() else b""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(64 << 30)


REPLACEMENTS = [zero_device, fifo, huge_sparse]
RUN_FILES = [CONFIG_FILE, WEIGHTS_FILE]


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", RUN_FILES)
def test_eval_of_a_run_file_that_is_not_a_regular_file(run_copy, trained, capsys, name, replace):
    replace(run_copy / name)
    with within(20), pytest.raises(CheckpointError) as info:
        load_run(run_copy)
    assert str(run_copy / name) in str(info.value)
    with within(20):
        assert main(["eval", str(run_copy), "--data-dir", str(trained[0])]) == 1
    assert str(run_copy / name) in one_error_line(capsys)


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", [CHECKPOINT_FILE, METRICS_FILE])
def test_resume_with_a_file_that_is_not_a_regular_file(run_copy, trained, capsys, name, replace):
    replace(run_copy / name)
    argv = ["train", "--resume", str(run_copy), "--epochs", "2", "--data-dir", str(trained[0])]
    with within(30):
        assert main([*argv, "--threads", "1"]) in (0, 1)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if name == CHECKPOINT_FILE:
        assert str(run_copy / name) in captured.err
    with within(20), contextlib.suppress(CheckpointError):
        read_metrics(run_copy)


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=lambda f: f.__name__)
def test_idx_file_that_is_not_a_regular_file(tmp_path, capsys, replace):
    root = write_fake_dataset(tmp_path / "data", "mnist", n_train=32, n_test=8)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    replace(path)
    with within(20), pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    argv = ["train", "--data-dir", str(root), "--out", str(tmp_path / "run"), "--quiet"]
    with within(20):
        assert main(argv) == 1
    assert str(path) in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_idx_header_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    """A valid header for 10**9 images on a file of a few bytes: refused from the header."""
    path = tmp_path / "train-images-idx3-ubyte"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10**9, 28, 28))
    path.write_bytes(header + bytes(100))
    with pytest.raises(DataError, match="truncated: header declares 1000000000x28x28"):
        read_idx(path)


def test_idx_reader_still_reads_a_valid_file(tmp_path):
    """The control: header-first reading returns exactly the encoded array."""
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path).numpy(), array)


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=lambda f: f.__name__)
def test_config_flag_pointing_at_a_device_or_fifo(tmp_path, fake_root, capsys, replace):
    config = tmp_path / "config.json"
    replace(config)
    argv = ["train", "--data-dir", str(fake_root), "--config", str(config)]
    with within(20):
        assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    assert str(config) in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_read_json_refuses_what_is_not_a_small_regular_file(tmp_path):
    folder = tmp_path / "config.json"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="not a regular file|expected a file, found a folder"):
        read_json(folder)
    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "a" * (17 << 20) + '"}')
    with pytest.raises(CheckpointError, match="more than the 16,777,216 expected"):
        read_json(big)
