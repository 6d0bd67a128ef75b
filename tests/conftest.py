"""Shared fixtures: a synthetic dataset in torchvision's layout, and the real data root.

Tests use the synthetic data by default; tests that need real MNIST take `data_root` and skip,
saying why, when CNNLAB_DATA is not set (CI sets it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import DATASETS, list_datasets

# One fixed thread count for every command under test, in this process and the ones it starts,
# however busy the machine is: a command not told its count takes the CPUs that are free when it
# starts (cnnlab.cpuload), and tests compare runs bit for bit. test_busy_machine.py tests that.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000080N, big-endian dims, values)."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 images whose class is a bright 6x6 square at one of 10 places, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = 2 + 8 * (label // 4), 2 + 6 * (label % 4)
        images[i, row : row + 6, col : col + 6] = 255
    return images


def write_fake_cifar(root: Path, n_train=600, n_test=200, seed=0) -> Path:
    """CIFAR-10's binary layout: the synthetic squares, padded to 32x32 and coloured."""
    from cnnlab.data.cifar import FOLDER, META_FILE, TEST_FILE, TRAIN_FILES

    spec = DATASETS["cifar10"]
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (folder / META_FILE).write_text("\n".join(spec.classes) + "\n")
    parts = [(name, n_train // len(TRAIN_FILES)) for name in TRAIN_FILES] + [(TEST_FILE, n_test)]
    for name, n in parts:
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        grey = np.pad(synthetic_images(labels, seed + n), ((0, 0), (2, 2), (2, 2)))
        rgb = np.stack([grey, grey // 2, 255 - grey], axis=1)  # (N, 3, 32, 32)
        records = np.concatenate([labels[:, None], rgb.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())
    return root


def write_fake_dataset(root: Path, name: str = "mnist", n_train=600, n_test=200, seed=0) -> Path:
    """Write a small, learnable dataset in the real files' layout under `root`."""
    spec = DATASETS[name]
    if spec.kind == "cifar10":
        return write_fake_cifar(root, n_train, n_test, seed)
    folder = root / spec.raw_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for train, n in ((True, n_train), (False, n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images_name, labels_name = spec.files(train)
        (folder / images_name).write_bytes(idx_bytes(synthetic_images(labels, seed + n)))
        (folder / labels_name).write_bytes(idx_bytes(labels))
    return root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A data root holding a small synthetic copy of every registered dataset (MNIST: seed 0)."""
    root = tmp_path / "data"
    for seed, name in enumerate(["mnist", *(n for n in list_datasets() if n != "mnist")]):
        write_fake_dataset(root, name, seed=seed)
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root from CNNLAB_DATA; skip when it is not set."""
    value = os.environ.get("CNNLAB_DATA")
    if not value:
        pytest.skip("real MNIST needed: set CNNLAB_DATA to a folder holding MNIST/raw/")
    root = Path(value)
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"CNNLAB_DATA={value} holds no MNIST/raw/")
    return root


@pytest.fixture(autouse=True)
def restore_threads():
    """Commands under test set the thread count (`--threads 1` on tiny batches); undo it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run folder): a tiny MLP trained one epoch on 64 synthetic images, once per
    module, for tests that take run folders apart (use `run_copy` to change one)."""
    import torch

    from cnnlab.cli import main

    base = tmp_path_factory.mktemp("trained")
    root = write_fake_dataset(base / "data", "mnist", n_train=64, n_test=16)
    run = base / "run"
    threads = torch.get_num_threads()
    argv = ["train", "--data-dir", str(root), "--out", str(run), "--epochs", "1", "--quiet"]
    argv += ["--model", "mlp", "--hidden", "8", "--batch-size", "32", "--threads", "1"]
    assert main(argv) == 0
    torch.set_num_threads(threads)
    return root, run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the `trained` run folder for one test to change."""
    return Path(shutil.copytree(trained[1], tmp_path / "run"))


@pytest.fixture
def no_run_figures(monkeypatch):
    """Runs write no loss.png or filters.png (drawn and tested elsewhere): faster tests."""
    import cnnlab.run

    monkeypatch.setattr(cnnlab.run, "write_run_figures", lambda run_dir, result: None)


@pytest.fixture
def failing_download(monkeypatch) -> list:
    """torchvision's download fails as it does offline; returns the roots it was asked for."""
    import urllib.error

    import torchvision.datasets.utils

    calls: list = []

    def download(url, download_root, **kwargs):
        root = Path(download_root).parent.parent  # download_root is ROOT/<Name>/raw
        if root not in calls:
            calls.append(root)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", download)
    return calls


@pytest.fixture(autouse=True)
def _no_ambient_data_root(monkeypatch, tmp_path):
    """Commands under test never fall back to the user's real cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def strip_timing(metrics: list[dict]) -> list[dict]:
    """Metrics without their wall-clock fields, which no two runs share."""
    return [
        {k: v for k, v in m.items() if k not in ("seconds", "images_per_second")} for m in metrics
    ]


def one_error_line(capsys) -> str:
    """The only line on stderr, which must be cnnlab's error line; no traceback anywhere."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cnnlab: error: ")
    return lines[0]
