"""Missing, truncated or wrong dataset files: one `cnnlab: error:` line naming the file, exit 1.

Each test corrupts one file of the synthetic dataset (conftest's `fake_root`) and runs
`cnnlab train` in-process. A failed download is simulated by fault injection; a socket guard
fails any test that would reach the network.
"""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from cnnlab.cli import main
from cnnlab.data import DATASETS, get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.errors import DataError
from tests.conftest import idx_bytes, one_error_line, write_fake_dataset

MNIST_RAW = Path("MNIST") / "raw"
ALL_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs below use `--threads 1` (tiny batches on a shared machine); undo it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def failing_download(monkeypatch) -> list:
    """torchvision's download fails as it does offline; returns the roots it was asked for."""
    calls: list = []

    def download(self):
        calls.append(Path(self.root))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", download)
    return calls


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


CORRUPTIONS = [
    ("train-images-idx3-ubyte", truncate, "truncated: header declares 600x28x28 values"),
    ("t10k-labels-idx1-ubyte", wrong_magic, "not an IDX file (bad magic number 1f8b0808)"),
    ("train-labels-idx1-ubyte", one_label_short, "has 600 images but"),
    ("train-labels-idx1-ubyte", empty, "file is empty or shorter than the 4-byte IDX header"),
    ("t10k-labels-idx1-ubyte", label_ten, "label 10 at index 7 is out of range 0..9"),
    ("train-images-idx3-ubyte", small_images, "images are (20, 20), mnist needs (28, 28)"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "problem"), CORRUPTIONS, ids=[c[1].__name__ for c in CORRUPTIONS]
)
def test_corrupt_file_gives_one_line_naming_file(
    fake_root, tmp_path, capsys, network_attempts, name, corrupt, problem
):
    path = fake_root / MNIST_RAW / name
    corrupt(path)
    out = tmp_path / "run"
    assert train(fake_root, out) == 1
    line = one_error_line(capsys)
    assert str(path) in line
    assert problem in line
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


@pytest.mark.parametrize(
    ("name", "corrupt", "problem"), CORRUPTIONS, ids=[c[1].__name__ for c in CORRUPTIONS]
)
def test_load_dataset_raises_data_error(fake_root, name, corrupt, problem):
    path = fake_root / MNIST_RAW / name
    corrupt(path)
    with pytest.raises(DataError) as info:
        load_dataset(get_dataset("mnist"), fake_root, allow_download=False)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_missing_files_without_download_name_the_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(get_dataset("mnist"), tmp_path, allow_download=False)
    assert str(tmp_path / MNIST_RAW) in str(info.value)


# --- missing data while offline -----------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(n for n, s in DATASETS.items() if s.kind == "idx"))
def test_offline_download_names_folder_and_expected_files(
    tmp_path, capsys, network_attempts, failing_download, dataset
):
    root, out = tmp_path / "empty-root", tmp_path / "run"
    assert train(root, out, "--dataset", dataset) == 1
    line = one_error_line(capsys)
    folder = root / DATASETS[dataset].raw_folder
    assert f"{dataset} is not in {folder} and could not be downloaded" in line
    assert "URLError" in line
    assert all(name in line for name in ALL_FILES)
    assert "--data-dir" in line
    assert failing_download == [root]
    assert network_attempts == []
    assert not out.exists()


def test_offline_constructor_failure(tmp_path, capsys, network_attempts, monkeypatch):
    """The other way torchvision can fail: the dataset class itself raises."""

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", offline)
    assert train(tmp_path / "root", tmp_path / "run") == 1
    line = one_error_line(capsys)
    assert str(tmp_path / "root" / MNIST_RAW) in line
    assert "Network is unreachable" in line
    assert network_attempts == []


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


def test_second_dataset_is_checked_too(tmp_path, capsys):
    root = write_fake_dataset(tmp_path / "data", "fashion-mnist")
    path = root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    wrong_magic(path)
    assert train(root, tmp_path / "run", "--dataset", "fashion-mnist") == 1
    assert str(path) in one_error_line(capsys)
