"""Validated reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values. cnnlab checks every part of that against
the file before use, so a truncated or wrong file ends in one `DataError` that names the file and
the problem instead of a bare exception from deep inside a reader.

    >>> images = read_idx("data/MNIST/raw/train-images-idx3-ubyte")   # (60000, 28, 28) uint8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError
from cnnlab.files import require_regular_file

UINT8_TYPE_CODE = 0x08
MAX_DIMS = 3  # labels have 1 dimension (N,), images 3 (N, H, W)
MAX_IDX_BYTES = 1 << 30  # MNIST's largest file is 47 MB; a file over 1 GiB is not a dataset split


def parse_idx(raw: bytes, name: str = "<bytes>") -> torch.Tensor:
    """Parse the bytes of an unsigned-byte IDX file into a uint8 tensor of its declared shape."""
    dims, header_size = idx_layout(raw[: 4 + 4 * MAX_DIMS], len(raw), name)
    values = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
    return torch.from_numpy(values.copy())


def idx_layout(head: bytes, size: int, name: str) -> tuple[tuple[int, ...], int]:
    """(dims, header size) of an IDX file of `size` bytes that starts with `head`, after checking
    that the header is valid and declares exactly `size` bytes."""
    if size < 4:
        raise DataError(f"{name}: file is empty or shorter than the 4-byte IDX header")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number {head[:4].hex()})")
    type_code, ndim = head[2], head[3]
    if type_code != UINT8_TYPE_CODE:
        raise DataError(
            f"{name}: IDX type code 0x{type_code:02x} is not unsigned byte (0x08) as MNIST uses"
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    if ndim > MAX_DIMS:
        raise DataError(
            f"{name}: IDX header declares {ndim} dimensions; image and label files have at most "
            f"{MAX_DIMS}"
        )
    header_size = 4 + 4 * ndim
    if size < header_size:
        raise DataError(f"{name}: truncated header ({size} bytes, {ndim} dimensions declared)")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(dims, dtype=object))
    if size != expected:
        shape = "x".join(map(str, dims))
        problem = "truncated" if size < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: header declares {shape} values ({expected} bytes in all), "
            f"file has {size} bytes"
        )
    return dims, header_size


def read_idx(path: str | Path) -> torch.Tensor:
    """Read and validate one IDX file; every problem is a `DataError` naming the file.

    Only a regular file of at most `MAX_IDX_BYTES` is opened, and its header is checked against
    its size before the values are read: a FIFO, a device or a huge file is refused at once.
    """
    path = Path(path)
    size = require_regular_file(path, DataError, MAX_IDX_BYTES, what="an IDX file")
    try:
        with open(path, "rb") as f:
            dims, header_size = idx_layout(f.read(4 + 4 * MAX_DIMS), size, str(path))
            f.seek(header_size)
            body = f.read(size - header_size)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(body) != size - header_size:  # the file changed while it was read
        raise DataError(f"{path}: truncated while it was read")
    values = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    return torch.from_numpy(values.copy())


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int):
    """Read an images file and its labels file and check they belong together.

    Returns `(images, labels)`: uint8 `(N, H, W)` and int64 `(N,)`.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    return check_idx_pair(images, labels, images_path, labels_path, num_classes)


def check_idx_pair(images, labels, images_path, labels_path, num_classes: int):
    """Check that parsed images and labels belong together; `(images, labels.long())`."""
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (N, H, W), found {images.ndim}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension (N,), found {labels.ndim}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.numel() and int(labels.max()) >= num_classes:
        bad = int((labels >= num_classes).nonzero()[0, 0])
        raise DataError(
            f"{labels_path}: label {int(labels[bad])} at index {bad} is out of range "
            f"0..{num_classes - 1}"
        )
    return images, labels.long()
