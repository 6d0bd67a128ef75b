"""Validated reader for the binary version of CIFAR-10, and its download.

The official `cifar-10-binary.tar.gz` extracts to `cifar-10-batches-bin/`: five training files
`data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, each 10,000 records of one label
byte followed by 3,072 pixel bytes (1,024 red, then green, then blue, rows top to bottom), and
`batches.meta.txt`, the ten class names one per line. Nothing is unpickled (the Python version of
CIFAR-10 is a pickle); every file is checked before it is read, so a truncated or wrong file ends
in one `DataError` naming the file and the problem.

    >>> data = load_cifar10(Path("~/.cache/cnnlab").expanduser())
    >>> data.train_images.shape, data.classes[0]
    (torch.Size([50000, 3, 32, 32]), 'airplane')
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError

FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # label byte + pixels
OFFICIAL_RECORDS = 10_000  # per file; a file of any whole number of records is accepted
MAX_RECORDS = 60_000  # the whole dataset: a bigger file is refused before it is read
NUM_CLASSES = 10
MAX_META_BYTES = 64 * 1024


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as uint8 `(N, 3, 32, 32)` images and int64 `(N,)` labels, plus the class names."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


def regular_file_size(path: Path) -> int:
    """The size of `path` after checking it is a regular file (a FIFO would block a reader)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise DataError(f"{path}: expected a CIFAR-10 file, found {kind}")
    return info.st_size


def read_bounded(path: Path, size: int) -> np.ndarray:
    """Exactly `size` bytes of a regular file, as uint8; a file that changed size is an error."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                raise DataError(f"{path}: file changed while it was being read")
            raw = np.fromfile(f, dtype=np.uint8, count=size)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if raw.size != size:
        raise DataError(f"{path}: truncated while reading ({raw.size} of {size} bytes)")
    return raw


def parse_cifar_records(raw: np.ndarray, name: str = "<bytes>"):
    """Split CIFAR-10 records into uint8 `(N, 3, 32, 32)` images and int64 `(N,)` labels."""
    if raw.size == 0 or raw.size % RECORD_BYTES:
        whole, rest = divmod(raw.size, RECORD_BYTES)
        problem = "is empty" if raw.size == 0 else f"holds {whole} records and {rest} stray bytes"
        raise DataError(
            f"{name}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            f"records (1 label byte + 3072 pixel bytes; an official file is "
            f"{OFFICIAL_RECORDS * RECORD_BYTES:,} bytes): the file {problem}"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    if int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{name}: label {int(labels[bad])} in record {bad} is out of range 0..{NUM_CLASSES - 1}"
        )
    images = records[:, 1:].reshape(-1, *SHAPE)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def read_cifar_batch(path: str | Path):
    """Read and validate one CIFAR-10 binary file: `(images, labels)`, uint8 and int64."""
    path = Path(path)
    size = regular_file_size(path)
    if size > MAX_RECORDS * RECORD_BYTES:
        raise DataError(
            f"{path}: {size:,} bytes is more than all of CIFAR-10 ({MAX_RECORDS:,} records); "
            f"not a CIFAR-10 file"
        )
    return parse_cifar_records(read_bounded(path, size), str(path))


def read_cifar_meta(path: str | Path) -> tuple[str, ...]:
    """The ten class names of `batches.meta.txt`, one per line (blank lines ignored)."""
    path = Path(path)
    size = regular_file_size(path)
    if size > MAX_META_BYTES:
        raise DataError(f"{path}: {size} bytes is far too long for a list of 10 class names")
    try:
        text = read_bounded(path, size).tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of class names") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise DataError(
            f"{path}: lists {len(names)} class names; CIFAR-10 has {NUM_CLASSES}, one per line"
        )
    if len(set(names)) != NUM_CLASSES:
        raise DataError(f"{path}: class names repeat: {', '.join(names)}")
    return names


def expected_files() -> tuple[str, ...]:
    return (*TRAIN_FILES, TEST_FILE, META_FILE)


def is_cifar10_present(root: str | Path) -> bool:
    """True when every file of the binary version exists under `root` (validated on reading)."""
    folder = Path(root) / FOLDER
    return all((folder / name).exists() for name in expected_files())


def download_cifar10(root: str | Path) -> None:
    """Fetch and extract the official binary tarball into `root`; a failure is one `DataError`."""
    from torchvision.datasets.utils import download_and_extract_archive  # only a download needs it

    root = Path(root)
    try:
        download_and_extract_archive(URL, download_root=root, md5=MD5, remove_finished=True)
    except Exception as err:  # network, HTTP, checksum, disk: torchvision raises many kinds
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"cifar10 is not in {root / FOLDER} and could not be downloaded "
            f"({type(err).__name__}: {reason}). Put {', '.join(expected_files())} there "
            f"(extract {URL}), or point --data-dir / CNNLAB_DATA at a folder holding {FOLDER}/"
        ) from None


def load_cifar10(root: str | Path, allow_download: bool = True) -> Cifar10:
    """Read CIFAR-10 from `root/cifar-10-batches-bin/`; download it first if files are missing."""
    root = Path(root)
    if not is_cifar10_present(root):
        if not allow_download:
            missing = [n for n in expected_files() if not (root / FOLDER / n).exists()]
            raise DataError(f"cifar10 is not in {root / FOLDER} (missing {', '.join(missing)})")
        download_cifar10(root)
    folder = root / FOLDER
    classes = read_cifar_meta(folder / META_FILE)
    train = [read_cifar_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = read_cifar_batch(folder / TEST_FILE)
    return Cifar10(
        train_images=torch.cat([images for images, _ in train]),
        train_labels=torch.cat([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
    )
