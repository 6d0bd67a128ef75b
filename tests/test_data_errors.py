"""Missing, truncated or wrong dataset files: one `cnnlab: error:` line naming the file, exit 1.

Each test corrupts one file of the synthetic dataset (conftest's `fake_root`) and runs
`cnnlab train` in-process. A failed download is simulated by fault injection; a socket guard
fails any test that would reach the network.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.utils

from cnnlab.cli import main
from cnnlab.data import DATASETS, get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.errors import DataError
from tests.conftest import idx_bytes, one_error_line

MNIST_RAW = Path("MNIST") / "raw"
ALL_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Refuse every connection and DNS lookup, and record the attempts."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def train(root: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--data-dir", str(root), "--out", str(out), "--epochs", "1", "--quiet"]
    argv += ["--threads", "1"]
    return main([*argv, "--train-subset", "64", "--test-subset", "32", *extra])


# --- corrupt files through the CLI --------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def wrong_magic(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b\x08\x08" + path.read_bytes()[4:])  # a gzip file, not extracted


def one_label_short(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros(599, np.uint8)))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def label_ten(path: Path) -> None:
    labels = np.zeros(200, np.uint8)
    labels[7] = 10
    path.write_bytes(idx_bytes(labels))


def small_images(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((600, 20, 20), np.uint8)))


# (split, file of the split: 0 images / 1 labels, corruption, problem as `str.format` of the spec)
CORRUPTIONS = [
    ("train", 0, truncate, "truncated: header declares 600x{h}x{w} values"),
    ("test", 1, wrong_magic, "not an IDX file (bad magic number 1f8b0808)"),
    ("train", 1, one_label_short, "has 600 images but"),
    ("train", 1, empty, "file is empty or shorter than the 4-byte IDX header"),
    ("test", 1, label_ten, "label 10 at index 7 is out of range 0..{last}"),
    ("train", 0, small_images, "images are (20, 20), {name} needs ({h}, {w})"),
]
IDX_DATASETS = sorted(n for n, s in DATASETS.items() if s.kind == "idx")  # CIFAR-10: its own tests
CASES = [(dataset, *c) for dataset in IDX_DATASETS for c in CORRUPTIONS]
CASE_IDS = [f"{c[0]}-{c[3].__name__}" for c in CASES]


def corrupted(root: Path, dataset: str, split: str, which: int, corrupt) -> tuple[Path, dict]:
    """Corrupt one file of `dataset` under `root`: its path, and the spec's fields for messages."""
    spec = get_dataset(dataset)
    path = root / spec.raw_folder / spec.files(split == "train")[which]
    corrupt(path)
    _, h, w = spec.shape
    return path, {"name": spec.name, "h": h, "w": w, "last": spec.num_classes - 1}


@pytest.mark.parametrize(("dataset", "split", "which", "corrupt", "problem"), CASES, ids=CASE_IDS)
def test_corrupt_file_gives_one_line_naming_file(
    fake_root, tmp_path, capsys, network_attempts, dataset, split, which, corrupt, problem
):
    path, fields = corrupted(fake_root, dataset, split, which, corrupt)
    out = tmp_path / "run"
    assert train(fake_root, out, "--dataset", dataset) == 1
    line = one_error_line(capsys)
    assert str(path) in line
    assert problem.format(**fields) in line
    assert not out.exists(), "the data is checked before the run folder is made"
    assert network_attempts == []


def test_mismatched_counts_name_both_files(fake_root, tmp_path, capsys):
    images = fake_root / MNIST_RAW / "train-images-idx3-ubyte"
    labels = fake_root / MNIST_RAW / "train-labels-idx1-ubyte"
    one_label_short(labels)
    assert train(fake_root, tmp_path / "run") == 1
    assert f"{images} has 600 images but {labels} has 599 labels" in one_error_line(capsys)


def test_folder_in_place_of_file_is_reported_not_downloaded(
    fake_root, tmp_path, capsys, network_attempts, failing_download
):
    path = fake_root / MNIST_RAW / "t10k-images-idx3-ubyte"
    path.unlink()
    path.mkdir()
    assert train(fake_root, tmp_path / "run") == 1
    line = one_error_line(capsys)
    assert failing_download == [] and network_attempts == []
    assert f"{path}: expected an IDX file, found a folder" in line


def test_corrupt_test_file_through_eval(fake_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(fake_root, run) == 0
    path = fake_root / MNIST_RAW / "t10k-images-idx3-ubyte"
    truncate(path)
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(fake_root)]) == 1
    line = one_error_line(capsys)
    assert str(path) in line and "truncated" in line


# --- the library raises DataError --------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "split", "which", "corrupt", "problem"), CASES, ids=CASE_IDS)
def test_load_dataset_raises_data_error(fake_root, dataset, split, which, corrupt, problem):
    path, fields = corrupted(fake_root, dataset, split, which, corrupt)
    with pytest.raises(DataError) as info:
        load_dataset(get_dataset(dataset), fake_root, allow_download=False)
    assert str(path) in str(info.value)
    assert problem.format(**fields) in str(info.value)


@pytest.mark.parametrize("dataset", IDX_DATASETS)
def test_missing_files_without_download_name_the_folder(tmp_path, dataset):
    spec = get_dataset(dataset)
    with pytest.raises(DataError) as info:
        load_dataset(spec, tmp_path, allow_download=False)
    assert str(tmp_path / spec.raw_folder) in str(info.value)


# --- missing data while offline -----------------------------------------------------------------


@pytest.mark.parametrize("dataset", IDX_DATASETS)
def test_offline_download_names_folder_and_expected_files(
    tmp_path, capsys, network_attempts, failing_download, dataset
):
    root, out = tmp_path / "empty-root", tmp_path / "run"
    assert train(root, out, "--dataset", dataset) == 1
    line = one_error_line(capsys)
    folder = root / DATASETS[dataset].raw_folder
    assert f"{dataset} is not in {folder} and could not be downloaded" in line
    assert "URLError" in line
    spec = get_dataset(dataset)
    assert all(name in line for train in (True, False) for name in spec.files(train))
    assert "--data-dir" in line
    assert failing_download == [root]
    assert network_attempts == []
    assert not out.exists()


def test_download_never_instantiates_torchvision_datasets_or_unpickles(
    tmp_path, capsys, network_attempts, failing_download, monkeypatch
):
    """torchvision's dataset classes may torch.load legacy processed/*.pt files: never used."""

    def forbidden(*args, **kwargs):
        raise AssertionError("must not be called")

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    root = tmp_path / "root"
    (root / "MNIST" / "processed").mkdir(parents=True)
    (root / "MNIST" / "processed" / "training.pt").write_bytes(b"legacy pickle")
    assert train(root, tmp_path / "run") == 1
    line = one_error_line(capsys)
    assert str(root / MNIST_RAW) in line and "could not be downloaded" in line
    assert failing_download == [root]


def test_one_missing_file_triggers_the_download(fake_root, tmp_path, capsys, failing_download):
    (fake_root / MNIST_RAW / "t10k-labels-idx1-ubyte").unlink()
    assert train(fake_root, tmp_path / "run") == 1
    assert str(fake_root / MNIST_RAW) in one_error_line(capsys)
    assert failing_download == [fake_root]


def test_existing_files_are_never_downloaded(fake_root, tmp_path, failing_download):
    assert train(fake_root, tmp_path / "run") == 0
    assert failing_download == []


def test_offline_at_socket_level_is_one_line(tmp_path, capsys, network_attempts):
    """No fault injected into torchvision: only the sockets refuse, as on a machine offline."""
    root = tmp_path / "root"
    assert train(root, tmp_path / "run") == 1
    captured = capsys.readouterr()
    assert network_attempts, "torchvision did try to download"
    assert "Traceback" not in captured.err + captured.out
    assert str(root / MNIST_RAW) in captured.err
    assert all(name in captured.err for name in ALL_FILES)
    assert len(captured.err.splitlines()) == 1, captured.err
