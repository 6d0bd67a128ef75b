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
from cnnlab.files import read_bytes

UINT8_TYPE_CODE = 0x08
MAX_DIMS = 3  # labels have 1 dimension (N,), images 3 (N, H, W)


def parse_idx(raw: bytes, name: str = "<bytes>") -> torch.Tensor:
    """Parse the bytes of an unsigned-byte IDX file into a uint8 tensor of its declared shape."""
    if len(raw) < 4:
        raise DataError(f"{name}: file is empty or shorter than the 4-byte IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number {raw[:4].hex()})")
    type_code, ndim = raw[2], raw[3]
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
    if len(raw) < header_size:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes, {ndim} dimensions declared)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(dims, dtype=object))
    if len(raw) != expected:
        shape = "x".join(map(str, dims))
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: header declares {shape} values ({expected} bytes in all), "
            f"file has {len(raw)} bytes"
        )
    values = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
    return torch.from_numpy(values.copy())


def read_idx(path: str | Path) -> torch.Tensor:
    """Read and validate one IDX file; every problem is a `DataError` naming the file."""
    return parse_idx(read_bytes(path, DataError, what="an IDX file"), str(path))


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
