"""The IDX reader: every malformed file ends in one `DataError` that names the file and the problem.

The reference for a valid file is `conftest.idx_bytes` plus NumPy: parsing must give back exactly
the array that was encoded. Property-based tests throw random headers and bodies at the parser.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.data.idx import parse_idx, read_idx, read_idx_pair
from cnnlab.errors import DataError
from tests.conftest import idx_bytes

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# --- valid files ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 4, 2), (0, 28, 28), (2, 1)])
def test_parse_returns_the_encoded_array(shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    tensor = parse_idx(idx_bytes(array))
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == shape
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_read_idx_pair_returns_images_and_int64_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([9, 0], dtype=np.uint8)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "lab").write_bytes(idx_bytes(labels))
    got_images, got_labels = read_idx_pair(tmp_path / "img", tmp_path / "lab", num_classes=10)
    np.testing.assert_array_equal(got_images.numpy(), images)
    assert got_labels.dtype == torch.int64
    assert got_labels.tolist() == [9, 0]


# --- one malformed file: the message names the file and the problem ----------------------------

VALID_IMAGES = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
VALID_LABELS = idx_bytes(np.zeros(4, dtype=np.uint8))

MALFORMED = {
    "empty": (b"", "shorter than the 4-byte IDX header"),
    "three_bytes": (b"\x00\x00\x08", "shorter than the 4-byte IDX header"),
    # what a user gets by renaming the .gz download instead of extracting it
    "gzip_magic": (b"\x1f\x8b\x08\x08" + VALID_IMAGES, "bad magic number 1f8b0808"),
    "text_file": (b"<html>404 Not Found</html>", "bad magic number 3c68746d"),
    "float_type_code": (header(0x0D, (4,)) + bytes(16), "type code 0x0d is not unsigned byte"),
    "zero_dimensions": (b"\x00\x00\x08\x00", "declares zero dimensions"),
    "too_many_dimensions": (header(0x08, (1,) * 70) + b"\x07", "declares 70 dimensions"),
    "truncated_header": (VALID_IMAGES[:9], "truncated header (9 bytes, 3 dimensions declared)"),
    "truncated_body": (
        VALID_IMAGES[:-1],
        f"truncated: header declares 4x28x28 values ({len(VALID_IMAGES)} bytes in all), "
        f"file has {len(VALID_IMAGES) - 1} bytes",
    ),
    "trailing_bytes": (VALID_LABELS + b"\x00", "has trailing bytes"),
    "count_too_large": (header(0x08, (5, 28, 28)) + VALID_IMAGES[16:], "truncated"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_data_error_naming_file_and_problem(tmp_path, case):
    raw, problem = MALFORMED[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_folder_in_place_of_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.mkdir()
    with pytest.raises(DataError, match="expected an IDX file, found a folder") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    with pytest.raises(DataError, match="file not found") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_path_under_a_regular_file_is_a_data_error(tmp_path):
    """Not a FileNotFoundError but NotADirectoryError: still a typed error naming the path."""
    (tmp_path / "MNIST").write_bytes(b"not a folder")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --- a pair of files that do not belong together ------------------------------------------------


def write_pair(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    images_path, labels_path = tmp_path / "images-idx", tmp_path / "labels-idx"
    images_path.write_bytes(idx_bytes(images))
    labels_path.write_bytes(idx_bytes(labels))
    return images_path, labels_path


def test_mismatched_counts_name_both_files_and_both_counts(tmp_path):
    images, labels = write_pair(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError) as info:
        read_idx_pair(images, labels, num_classes=10)
    assert str(info.value) == f"{images} has 5 images but {labels} has 4 labels"


def test_label_out_of_range_names_label_index_and_range(tmp_path):
    images, labels = write_pair(
        tmp_path, np.zeros((4, 28, 28), np.uint8), np.array([3, 9, 10, 12], np.uint8)
    )
    with pytest.raises(DataError) as info:
        read_idx_pair(images, labels, num_classes=10)
    assert str(info.value) == f"{labels}: label 10 at index 2 is out of range 0..9"


def test_images_and_labels_swapped(tmp_path):
    labels, images = write_pair(
        tmp_path, np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8)
    )  # the labels file where the images should be, and the other way round
    with pytest.raises(DataError, match=r"expected 3 dimensions \(N, H, W\), found 1") as info:
        read_idx_pair(images, labels, num_classes=10)
    assert str(info.value).startswith(str(images))


def test_labels_with_two_dimensions(tmp_path):
    images, labels = write_pair(
        tmp_path, np.zeros((4, 28, 28), np.uint8), np.zeros((4, 1), np.uint8)
    )
    with pytest.raises(DataError, match=r"expected 1 dimension \(N,\), found 2") as info:
        read_idx_pair(images, labels, num_classes=10)
    assert str(info.value).startswith(str(labels))


# --- properties ---------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=80))
def test_random_bytes_parse_or_raise_data_error(raw):
    try:
        tensor = parse_idx(raw, "random.idx")
    except DataError as err:
        assert str(err).startswith("random.idx: ")
        return
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3]))
    assert tuple(tensor.shape) == dims
    assert tensor.dtype == torch.uint8


@st.composite
def idx_files(draw):
    """A header that is valid or nearly so, and a body of about the declared length."""
    type_code = draw(st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0B, 0x0D, 0x0E]))
    dims = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=5)))
    expected = int(np.prod(dims)) if dims else 0
    length = draw(st.one_of(st.just(expected), st.integers(0, expected + 8)))
    body = draw(st.binary(min_size=length, max_size=length))
    cut = draw(st.one_of(st.none(), st.integers(0, 4 + 4 * len(dims))))
    return type_code, dims, body, cut


@PROPERTY_SETTINGS
@given(idx_files())
def test_headers_and_bodies_match_an_independent_reading(case):
    """Succeed with the declared shape exactly when the file is well formed, else `DataError`."""
    type_code, dims, body, cut = case
    head = header(type_code, dims)
    full = head + body
    raw = full if cut is None else full[:cut]
    expected_values = int(np.prod(dims)) if dims else 0
    # judged on the bytes actually parsed: a cut that removes exactly the body of a file that
    # declares zero values leaves a well-formed empty file
    well_formed = (
        raw[: len(head)] == head
        and type_code == 0x08
        and 1 <= len(dims) <= 3
        and len(raw) - len(head) == expected_values
    )
    if not well_formed:
        with pytest.raises(DataError, match=r"^case\.idx: "):
            parse_idx(raw, "case.idx")
        return
    tensor = parse_idx(raw, "case.idx")
    assert tuple(tensor.shape) == dims
    assert tensor.flatten().tolist() == list(raw[len(head) :])


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(max_size=40))
def test_read_idx_of_random_file_names_the_file(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t10k-labels-idx1-ubyte"
        path.write_bytes(raw)
        try:
            read_idx(path)
        except DataError as err:
            assert str(err).startswith(f"{path}: ")
