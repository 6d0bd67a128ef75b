"""The CIFAR-10 binary reader, on small files written in the official record format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import cifar as data_cifar
from cnnlab.data.cifar import (
    FOLDER,
    load_cifar10,
    read_cifar_batch,
    read_cifar_meta,
)
from cnnlab.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def records(labels, seed: int) -> tuple[bytes, np.ndarray]:
    """CIFAR-10 records (label byte + R, G, B planes) and the images they hold as (N, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes([label]) + image.tobytes() for label, image in zip(labels, images))
    return raw, images


def write_cifar(root: Path, n: int = 3) -> dict:
    """A tiny CIFAR-10 folder: n records per file; returns what each file holds."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    held = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        labels = [(k + i) % 10 for i in range(n)]
        raw, images = records(labels, seed=k)
        (folder / name).write_bytes(raw)
        held[name] = (images, labels)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    return held


def test_reads_records_in_the_official_layout(tmp_path):
    held = write_cifar(tmp_path)
    data = load_cifar10(tmp_path, allow_download=False)
    assert data.classes == tuple(CLASSES)
    assert data.train_images.shape == (15, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64
    expected = np.concatenate([held[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    assert np.array_equal(data.train_images.numpy(), expected)
    labels = sum((held[f"data_batch_{i}.bin"][1] for i in range(1, 6)), [])
    assert data.train_labels.tolist() == labels
    assert np.array_equal(data.test_images.numpy(), held["test_batch.bin"][0])
    assert data.test_labels.tolist() == held["test_batch.bin"][1]


def test_first_pixel_bytes_are_the_red_plane(tmp_path):
    path = tmp_path / "one.bin"
    raw = bytes([7]) + bytes([1] * 1024 + [2] * 1024 + [3] * 1024)
    path.write_bytes(raw)
    images, labels = read_cifar_batch(path)
    assert labels.tolist() == [7]
    assert [int(images[0, c].unique()) for c in range(3)] == [1, 2, 3]


def test_truncated_file_is_an_error(tmp_path):
    raw, _ = records([1, 2, 3], seed=0)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(raw[:-1])
    with pytest.raises(DataError, match=rf"{path}: 9218 bytes .*2 records and 3072 stray bytes"):
        read_cifar_batch(path)


def test_trailing_bytes_are_an_error(tmp_path):
    raw, _ = records([1, 2, 3], seed=0)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(raw + bytes(5))
    with pytest.raises(DataError, match="3 records and 5 stray bytes"):
        read_cifar_batch(path)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data_cifar, "MAX_RECORDS", 2)
    raw, _ = records([1, 2, 3], seed=0)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(raw)
    with pytest.raises(DataError, match="9,219 bytes is more than all of CIFAR-10"):
        read_cifar_batch(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="file is empty"):
        read_cifar_batch(path)


def test_label_out_of_range_names_the_record(tmp_path):
    raw, _ = records([1, 10, 3], seed=0)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(raw)
    with pytest.raises(DataError, match="label 10 in record 1 is out of range 0..9"):
        read_cifar_batch(path)


def test_missing_meta_is_an_error_without_download(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / FOLDER / "batches.meta.txt").unlink()
    with pytest.raises(DataError, match=r"cifar10 is not in .*missing batches.meta.txt"):
        load_cifar10(tmp_path, allow_download=False)


def test_meta_with_nine_names_is_an_error(tmp_path):
    path = tmp_path / "batches.meta.txt"
    path.write_text("\n".join(CLASSES[:9]))
    with pytest.raises(DataError, match="lists 9 class names; CIFAR-10 has 10"):
        read_cifar_meta(path)


def test_binary_meta_is_an_error(tmp_path):
    path = tmp_path / "batches.meta.txt"
    path.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(DataError, match="not a text file"):
        read_cifar_meta(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    os.mkfifo(path)
    with pytest.raises(DataError, match="not a regular file"):
        read_cifar_batch(path)


def test_folder_in_place_of_a_file_is_an_error(tmp_path):
    (tmp_path / "test_batch.bin").mkdir()
    with pytest.raises(DataError, match="found a folder"):
        read_cifar_batch(tmp_path / "test_batch.bin")


def test_failed_download_names_the_files_and_folder(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable\nsecond line")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path)
    message = str(err.value)
    assert f"cifar10 is not in {tmp_path / FOLDER}" in message
    assert "OSError: Network is unreachable)" in message and "second line" not in message
    assert "data_batch_1.bin" in message and "test_batch.bin" in message
    assert "batches.meta.txt" in message and data_cifar.URL in message


def test_download_is_called_with_the_official_url_and_checksum(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, md5))
        write_cifar(Path(download_root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    data = load_cifar10(tmp_path)
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
        )
    ]
    assert data.test_images.shape == (3, 3, 32, 32)
