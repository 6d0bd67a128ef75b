"""Image-folder datasets on small folders of PNG files written by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import folder as data_folder
from cnnlab.data.folder import load_image_folder
from cnnlab.data.folder_scan import share_out, stratified_holdout
from cnnlab.errors import ConfigError, DataError


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def grey_folder(root: Path, counts: dict[str, int], size=(28, 28), seed=0) -> dict[str, np.ndarray]:
    """PATH/<class>/<i>.png greyscale images; returns {relative path: pixels (H, W)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in counts.items():
        for i in range(n):
            pixels = rng.integers(0, 256, size=size, dtype=np.uint8)
            rel = f"{name}/{i:03d}.png"
            write_png(root / rel, pixels)
            written[rel] = pixels
    return written


def rows(split) -> dict[str, np.ndarray]:
    images = split.batch(slice(None))[0].numpy()
    return dict(zip(split.files, images))


def load(root, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return load_image_folder(root, **kw)


def test_grey_pngs_keep_their_shape_and_exact_pixels(tmp_path):
    written = grey_folder(tmp_path / "digits", {"seven": 5, "one": 5, "four": 5})
    data = load(tmp_path / "digits", tmp_path, test_fraction=0.2)
    assert data.classes == ("four", "one", "seven")
    assert data.shape == (1, 28, 28) and data.layout == "classes" and data.held_out == ("test",)
    assert (len(data.train), len(data.test)) == (12, 3) and data.val is None
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    for split in (data.train, data.test):
        for file, image in rows(split).items():
            assert np.array_equal(image[0], written[file])
        assert [data.classes[y] for y in split.labels] == [f.split("/")[0] for f in split.files]
    assert sorted(data.train.files + data.test.files) == sorted(written)


def test_train_val_test_layout_keeps_the_folders_assignment(tmp_path):
    root = tmp_path / "set"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        grey_folder(root / split, {"cat": n, "dog": n}, size=(8, 8), seed=n)
    data = load(root, tmp_path)
    assert data.layout == "splits" and data.held_out == () and data.classes == ("cat", "dog")
    assignment = data.assignment()
    assert {k: len(v) for k, v in assignment.items()} == {"train": 8, "val": 4, "test": 6}
    for split, files in assignment.items():
        assert all(f.startswith(f"{split}/") for f in files)
    assert data.test.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_split_layout_without_test_holds_out_a_stratified_test_split(tmp_path):
    grey_folder(tmp_path / "set" / "train", {"a": 10, "b": 20}, size=(4, 4))
    data = load(tmp_path / "set", tmp_path, test_fraction=0.1)
    assert data.held_out == ("test",)
    assert np.bincount(data.test.labels.numpy()).tolist() == [1, 2]


def test_stratified_holdout_is_seeded_and_stratified():
    labels = [0] * 10 + [1] * 20 + [2] * 30 + [3]
    keep, held = stratified_holdout(labels, 0.1, seed=5)
    assert sorted(keep + held) == list(range(len(labels)))
    assert np.bincount(np.asarray(labels)[held], minlength=4).tolist() == [1, 2, 3, 0]
    assert stratified_holdout(labels, 0.1, seed=5) == (keep, held)
    assert stratified_holdout(labels, 0.1, seed=6)[1] != held


def test_validation_fraction_is_held_out_too(tmp_path):
    grey_folder(tmp_path / "set", {"a": 20, "b": 20}, size=(4, 4))
    data = load(tmp_path / "set", tmp_path, test_fraction=0.1, val_fraction=0.2)
    assert data.held_out == ("test", "val")
    assert (len(data.train), len(data.val), len(data.test)) == (28, 8, 4)
    assert not set(data.val.files) & (set(data.train.files) | set(data.test.files))


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"b": 2, "a": 2}, size=(4, 4))
    for junk in ("a/.DS_Store", "a/Thumbs.db", "b/notes.txt", "a/.hidden.png", ".git/x.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"not an image")
    (root / ".cache").mkdir()
    data = load(root, tmp_path, test_fraction=0.5)
    assert data.classes == ("a", "b") and data.skipped == ()
    assert len(data.train) + len(data.test) == 4


def test_second_load_is_a_cache_hit_and_a_changed_file_a_miss(tmp_path, monkeypatch):
    root = tmp_path / "set"
    written = grey_folder(root, {"a": 3, "b": 3}, size=(6, 6))
    first = load(root, tmp_path, test_fraction=0.3)
    assert not first.cache_hit and first.cache_paths[0].exists()
    assert first.cache_paths[1].suffix == ".safetensors"

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit decodes nothing")

    monkeypatch.setattr(data_folder, "decode_into", no_decoding)
    second = load(root, tmp_path, test_fraction=0.3)
    assert second.cache_hit and second.assignment() == first.assignment()
    assert torch.equal(second.train.images, first.train.images)
    monkeypatch.undo()

    changed = np.full((6, 6), 7, dtype=np.uint8)
    write_png(root / "a/000.png", changed)
    stat = os.stat(root / "a/000.png")
    os.utime(root / "a/000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = load(root, tmp_path, test_fraction=0.3)
    assert not third.cache_hit
    pixels = {**rows(third.train), **rows(third.test)}
    assert np.array_equal(pixels["a/000.png"][0], changed)
    assert not np.array_equal(written["a/000.png"], changed)


def test_other_settings_are_another_cache_entry(tmp_path):
    grey_folder(tmp_path / "set", {"a": 3, "b": 3}, size=(6, 6))
    small = load(tmp_path / "set", tmp_path, image_size=4)
    assert not load(tmp_path / "set", tmp_path, image_size=5).cache_hit
    assert load(tmp_path / "set", tmp_path, image_size=4).cache_hit and small.shape == (1, 4, 4)


def test_over_budget_is_memory_mapped_with_the_same_pixels(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"a": 6, "b": 6}, size=(5, 7))
    resident = load(root, tmp_path, cache_dir=None)
    mapped = load(root, tmp_path, cache_dir=tmp_path / "mapped", memory_budget_bytes=100)
    assert mapped.mmapped and not resident.mmapped
    assert isinstance(mapped.train.images, np.memmap) and mapped.train.mmapped
    assert all(p.suffix in (".json", ".npy") and p.exists() for p in mapped.cache_paths)
    assert mapped.assignment() == resident.assignment()
    order = torch.tensor([7, 0, 3, 3, 9, 1])
    images, labels = mapped.train.batch(order)
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 5, 7)
    assert torch.equal(images, resident.train.images[order])
    assert torch.equal(labels, resident.train.labels[order])
    assert mapped.mean == pytest.approx(resident.mean) and mapped.std == pytest.approx(resident.std)
    again = load(root, tmp_path, cache_dir=tmp_path / "mapped", memory_budget_bytes=100)
    assert again.cache_hit and again.mmapped
    assert torch.equal(again.test.batch(slice(None))[0], resident.test.images)


def test_over_budget_without_a_cache_folder_is_an_error(tmp_path):
    grey_folder(tmp_path / "set", {"a": 2, "b": 2}, size=(4, 4))
    with pytest.raises(ConfigError, match="memory budget of 10 bytes"):
        load(tmp_path / "set", tmp_path, cache_dir=None, memory_budget_bytes=10)


def test_mean_and_std_are_those_of_the_training_pixels(tmp_path):
    grey_folder(tmp_path / "set", {"a": 4, "b": 4}, size=(6, 6))
    data = load(tmp_path / "set", tmp_path)
    x = data.train.images.double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert data.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_mixed_sizes_and_colour_give_the_stated_defaults(tmp_path):
    root = tmp_path / "set"
    write_png(root / "a/grey.png", np.full((10, 12), 200, np.uint8))
    write_png(root / "a/grey2.png", np.full((10, 12), 100, np.uint8))
    write_png(root / "b/red.png", np.tile(np.array([255, 0, 0], np.uint8), (40, 40, 1)), "RGB")
    write_png(root / "b/red2.png", np.tile(np.array([255, 0, 0], np.uint8), (40, 40, 1)), "RGB")
    data = load(root, tmp_path, test_fraction=0.5)
    assert data.shape == (3, data_folder.DEFAULT_IMAGE_SIZE, data_folder.DEFAULT_IMAGE_SIZE)
    pixels = {**rows(data.train), **rows(data.test)}
    assert (pixels["a/grey.png"] == 200).all() and (pixels["a/grey2.png"] == 100).all()
    assert pixels["b/red.png"][:, 16, 16].tolist() == [255, 0, 0]


def test_grey_palette_images_count_as_greyscale(tmp_path):
    root = tmp_path / "set"
    for name in ("a/0.png", "a/1.png", "b/0.png", "b/1.png"):
        write_png(root / name, np.full((4, 4), 9, np.uint8))
    Image.open(root / "b/1.png").convert("P").save(root / "b/1.png")  # palette of greys
    assert load(root, tmp_path, test_fraction=0.5).shape == (1, 4, 4)


def test_fit_crop_cuts_the_centre_and_pad_adds_black_bars(tmp_path):
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 20:] = 255  # left half black, right half white
    strip = np.full((10, 20), 255, np.uint8)
    for fit, pixels in (("crop", wide), ("pad", strip)):
        root = tmp_path / fit
        for rel in ("a/0.png", "a/1.png", "b/0.png", "b/1.png"):
            write_png(root / rel, pixels)
        data = load(root, tmp_path, image_size=20, fit=fit, test_fraction=0.5)
        image = data.train.images[0, 0]
        expected = torch.zeros(20, 20, dtype=torch.uint8)
        if fit == "crop":  # centre columns 10..29 of the original
            expected[:, 10:] = 255
        else:  # already 20 wide: 5 black rows above and below
            expected[5:15] = 255
        assert torch.equal(image, expected), fit


def test_corrupt_images_are_skipped_and_listed_or_strict_errors(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"a": 3, "b": 3}, size=(4, 4))
    (root / "a/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (root / "b/000.png").read_bytes()
    (root / "b/truncated.png").write_bytes(good[: len(good) // 2])
    data = load(root, tmp_path, test_fraction=0.3)
    assert [path for path, _ in data.skipped] == ["a/broken.png", "b/truncated.png"]
    assert len(data.train) + len(data.test) == 6
    assert data.skipped_text().splitlines()[0].startswith("a/broken.png\t")
    with pytest.raises(DataError, match=r"2 image file\(s\) cannot be used \(strict\): a/broken"):
        load(root, tmp_path, test_fraction=0.3, strict=True)


def test_truncated_images_are_skipped_with_explicit_settings(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"a": 3, "b": 3}, size=(4, 4))
    good = (root / "b/000.png").read_bytes()
    (root / "b/000.png").write_bytes(good[: len(good) // 2])
    for budget in (1 << 20, 10):
        cache = tmp_path / str(budget)
        data = load(
            root, tmp_path, image_size=4, channels=1, memory_budget_bytes=budget, cache_dir=cache
        )
        assert [path for path, _ in data.skipped] == ["b/000.png"], budget
        assert len(data.train) + len(data.test) == 5 and data.mmapped == (budget == 10)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_an_image_is_skipped_without_blocking(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"a": 2, "b": 2}, size=(4, 4))
    os.mkfifo(root / "a/pipe.png")
    data = load(root, tmp_path, test_fraction=0.5)
    assert data.skipped == (("a/pipe.png", "not a regular file"),)


def test_a_class_with_only_broken_images_is_an_error(tmp_path):
    root = tmp_path / "set"
    grey_folder(root, {"a": 2}, size=(4, 4))
    (root / "b").mkdir()
    (root / "b/x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable training images left in class b"):
        load(root, tmp_path)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda root: None, "folder not found"),
        (lambda root: root.write_text("x"), "expected a folder of class folders, found a file"),
        (lambda root: root.mkdir(), "no class folders found"),
        (lambda root: grey_folder(root, {"only": 2}, (4, 4)), "only one class folder \\('only'\\)"),
        (
            lambda root: (grey_folder(root, {"a": 2}, (4, 4)), (root / "b").mkdir()),
            "class folder b holds no images",
        ),
        (
            lambda root: (
                grey_folder(root / "train", {"a": 2, "b": 2}, (4, 4)),
                grey_folder(root / "test", {"a": 1, "c": 1}, (4, 4)),
            ),
            "test: class folders differ from the training set's \\(missing b; extra c\\)",
        ),
    ],
    ids=["missing", "file", "empty", "one-class", "empty-class", "test-classes"],
)
def test_bad_folders_are_one_clear_error(tmp_path, make, match):
    root = tmp_path / "set"
    make(root)
    with pytest.raises(DataError, match=match):
        load(root, tmp_path)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"fit": "stretch"}, "unknown fit 'stretch'; choose one of: crop, pad"),
        ({"channels": 2}, "channels must be 1"),
        ({"test_fraction": 0.0}, "test fraction 0.0"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "validation fraction 0.5"),
        ({"image_size": 0}, "image size 0"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, kw, match):
    grey_folder(tmp_path / "set", {"a": 2, "b": 2}, size=(4, 4))
    with pytest.raises(ConfigError, match=match):
        load(tmp_path / "set", tmp_path, **kw)


def test_a_validation_count_is_shared_out_in_proportion():
    assert share_out(8, [30, 10]) == [6, 2]
    assert share_out(3, [5, 5, 5]) == [1, 1, 1]
    assert share_out(4, [5, 5, 5]) == [2, 1, 1]  # the largest remainder first, ties to the first
    assert share_out(4, [2, 9]) == [1, 3]  # 0.73 of 2 and 3.27 of 9: remainders decide
    labels = [0] * 30 + [1] * 10
    keep, held = stratified_holdout(labels, 0.0, seed=0, count=8)
    assert len(held) == 8 and sorted(keep + held) == list(range(40))
    assert sum(labels[i] for i in held) == 2
    with pytest.raises(DataError, match="cannot hold out 39 of 40 training images"):
        stratified_holdout(labels, 0.0, seed=0, count=39)


def test_val_size_with_a_val_folder_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        grey_folder(tmp_path / "set" / split, {"a": 3, "b": 3}, size=(4, 4))
    with pytest.raises(ConfigError, match="has its own val/ folder"):
        load(tmp_path / "set", tmp_path, val_size=2)


def test_exif_rotated_jpeg_is_decoded_upright(tmp_path):
    from PIL import ImageOps

    from cnnlab.data.folder_images import decode_image, read_header

    path = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 3), dtype=np.uint8)  # H 4, W 8
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    header = read_header(path)
    assert (header.width, header.height, header.grey) == (4, 8, False)
    with Image.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert upright.shape == (8, 4, 3)
    assert np.array_equal(decode_image(path, 3, (8, 4)), upright.transpose(2, 0, 1))
