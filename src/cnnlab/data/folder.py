"""Image-folder datasets: a folder of class folders becomes uint8 splits, decoded once and cached.

    >>> data = load_image_folder("photos", cache_dir=folder_cache_dir())
    >>> data.classes, data.shape, len(data.train), len(data.test)
    (('cat', 'dog'), (3, 32, 32), 371, 41)

Layouts and ignored files: see `cnnlab.data.folder_scan`. Without a `test/` folder a seeded,
stratified `test_fraction` of each class is held out as the test split (likewise `val_fraction`
for a validation split when there is no `val/`); `FolderDataset.assignment()` says which file went
where. Settings left as None follow the images: one shared size is kept (else
`DEFAULT_IMAGE_SIZE`), and all-greyscale folders give one channel (else three). Images of another
size are fitted with `fit="crop"` (the default: scale to cover, cut the centre, as torchvision's
Resize + CenterCrop; every pixel is image content) or `fit="pad"` (scale to fit, pad with black;
nothing is cut off). Files that cannot be decoded are skipped and listed in `skipped`, or with
`strict=True` are an error. Datasets over `memory_budget_bytes` are cached as .npy files and
returned memory-mapped; `FolderSplit.batch` reads batches from either kind.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.folder_cache import (
    CacheEntry,
    allocate,
    cache_key,
    discard,
    keep_rows,
    load_entry,
    publish,
    save_meta,
    save_resident,
)
from cnnlab.data.folder_images import (
    FITS,
    channel_stats,
    decode_into,
    default_workers,
    gather_batch,
    read_headers,
)
from cnnlab.data.folder_scan import FileEntry, FolderScan, scan_folder, stratified_holdout
from cnnlab.errors import ConfigError, DataError

DEFAULT_IMAGE_SIZE = 32
DEFAULT_FIT = "crop"
DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of decoded pixels kept in memory; above: memory-mapped
LARGE_FILE_BYTES = 32 << 10  # mean file size from which decoding uses a thread pool


@dataclass(frozen=True)
class FolderSplit:
    """Images as uint8 `(N, C, H, W)` (a tensor, or a read-only memory-mapped numpy array),
    labels as int64 `(N,)`, and the file (relative to the dataset root) of each row."""

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor
    files: tuple[str, ...]

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def mmapped(self) -> bool:
        return not isinstance(self.images, torch.Tensor)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int64 labels of rows `index` (a slice, or indices in any order)."""
        if isinstance(index, slice):
            return gather_batch(self.images, index), self.labels[index]
        index = torch.as_tensor(index, dtype=torch.int64)
        return gather_batch(self.images, index), self.labels[index]


@dataclass(frozen=True)
class FolderDataset:
    """A decoded folder dataset: its splits, classes, statistics and where it came from."""

    root: Path
    layout: str  # "classes" (PATH/<class>/...) or "splits" (PATH/train/<class>/...)
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)
    train: FolderSplit
    val: FolderSplit | None
    test: FolderSplit
    mean: tuple[float, ...]  # per channel, of the training images after x / 255
    std: tuple[float, ...]
    skipped: tuple[tuple[str, str], ...]  # (file, reason) of every image that could not be used
    held_out: tuple[str, ...]  # splits drawn from the training images: "test", "val"
    cache_paths: tuple[Path, ...]  # the cache entry's files; () without a cache folder
    cache_hit: bool
    mmapped: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def assignment(self) -> dict[str, tuple[str, ...]]:
        """The files of each split, e.g. {"train": ("cat/1.png", ...), "test": (...)}."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return {name: split.files for name, split in splits.items() if split is not None}

    def skipped_text(self) -> str:
        """One `file<TAB>reason` line per skipped image (the contents of a skipped.txt)."""
        return "".join(f"{path}\t{reason}\n" for path, reason in self.skipped)


def check_settings(image_size, channels, fit, test_fraction, val_fraction):
    """The image size as (H, W) or None; bad values are a `ConfigError`."""
    if fit not in FITS:
        raise ConfigError(f"unknown fit {fit!r}; choose one of: {', '.join(FITS)}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 (greyscale) or 3 (colour), not {channels}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction {test_fraction} must be between 0 and 1 (exclusive)")
    if not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ConfigError(
            f"validation fraction {val_fraction} must be at least 0 and, with the test fraction "
            f"{test_fraction}, below 1"
        )
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= 4096 for s in size):
        raise ConfigError(f"image size {image_size!r} must be one or two whole numbers 1..4096")
    return size


def too_many_skipped(root: Path, skipped) -> DataError:
    shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return DataError(f"{root}: {len(skipped)} image file(s) cannot be used (strict): {shown}{more}")


def check_every_class(root: Path, classes, files: dict[str, list[FileEntry]]) -> None:
    """Each class keeps a training image after unreadable files are dropped; no split is empty."""
    present = {f.label for f in files["train"]}
    lost = [name for label, name in enumerate(classes) if label not in present]
    if lost:
        raise DataError(f"{root}: no readable training images left in class {', '.join(lost)}")
    for split, entries in files.items():
        if not entries:
            raise DataError(f"{root}: the {split} split has no readable images")


def file_paths(scan: FolderScan, entries) -> list[str]:
    root = str(scan.root)
    return [os.path.join(root, f.path) for f in entries]  # strings: no pathlib per file


def pick_workers(scan: FolderScan, workers: int | None) -> int:
    """`workers`, else one thread for small files and a pool for large ones.

    Decoding a small image (an MNIST-sized PNG) is mostly Python work under the GIL, so threads
    only contend (measured: 2 threads decode 28x28 PNGs 1.7x slower than 1); large images spend
    their time in PIL's decoders, which release the GIL, and gain from the pool.
    """
    if workers:
        return workers
    files = [f for entries in scan.files.values() for f in entries]
    mean_size = sum(f.size for f in files) / max(len(files), 1)
    return default_workers() if mean_size >= LARGE_FILE_BYTES else 1


def follow_images(scan: FolderScan, size, channels, workers, progress):
    """Shape `(C, H, W)` from the headers where not given, and files whose headers fail."""
    everything = [f for files in scan.files.values() for f in files]
    headers = read_headers(file_paths(scan, everything), workers, progress)
    failed = [(f.path, h) for f, h in zip(everything, headers) if isinstance(h, str)]
    good = [h for h in headers if not isinstance(h, str)]
    if size is None:
        sizes = {(h.height, h.width) for h in good}
        size = sizes.pop() if len(sizes) == 1 else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    if channels is None:
        channels = 1 if good and all(h.grey for h in good) else 3
    return (channels, *size), failed


def assign_splits(scan: FolderScan, files, test_fraction, val_fraction, seed, val_size=0):
    """Hold out stratified test and validation files from training where the folder has none.

    `val_size` > 0 holds out exactly that many validation files instead of `val_fraction`.
    """
    files, held_out = dict(files), []
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        count = val_size if split == "val" and val_size else None
        if split in scan.files or (fraction == 0 and count is None):
            continue
        train = files["train"]
        left = 1 - test_fraction if held_out else 1.0  # val comes after a test hold-out, if any
        keep, held = stratified_holdout(
            [f.label for f in train], fraction / left, seed + len(held_out), count
        )
        files["train"], files[split] = [train[i] for i in keep], [train[i] for i in held]
        held_out.append(split)
    return files, tuple(held_out)


def decode_split(scan, entries, shape, path, fit, workers, progress):
    """Decode one split's files into an array (in memory, or at `path` as .npy); drop failures.

    Returns the array, the files it holds, and `(file, reason)` of each file that failed.
    """
    images = allocate(len(entries), shape, path)
    try:
        failures = decode_into(file_paths(scan, entries), images, fit, workers, progress)
        failed = [(entries[row].path, reason) for row, reason in failures]
        if failures:
            bad = {row for row, _ in failures}
            keep = [row for row in range(len(entries)) if row not in bad]
            images = keep_rows(images, keep, path)
            entries = [entries[row] for row in keep]
        if path is not None:
            images = publish(images, path)
    except BaseException:
        discard(images)
        raise
    return images, entries, failed


def make_split(images, labels, files) -> FolderSplit:
    images = images if isinstance(images, np.memmap) else torch.from_numpy(np.asarray(images))
    return FolderSplit(images, torch.tensor(labels, dtype=torch.int64), tuple(files))


def from_meta(scan: FolderScan, meta, arrays, mmapped, cache_paths, hit) -> FolderDataset:
    splits = {
        name: make_split(arrays[name], info["labels"], info["files"])
        for name, info in meta["splits"].items()
    }
    return FolderDataset(
        root=scan.root,
        layout=scan.layout,
        classes=scan.classes,
        shape=tuple(meta["shape"]),
        train=splits["train"],
        val=splits.get("val"),
        test=splits["test"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        skipped=tuple((path, reason) for path, reason in meta["skipped"]),
        held_out=tuple(meta["held_out"]),
        cache_paths=cache_paths,
        cache_hit=hit,
        mmapped=mmapped,
    )


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    fit: str = DEFAULT_FIT,
    test_fraction: float = 0.1,
    val_fraction: float = 0.0,
    val_size: int = 0,
    seed: int = 0,
    strict: bool = False,
    cache_dir: str | os.PathLike | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    workers: int | None = None,
    progress: bool | None = None,
) -> FolderDataset:
    """Scan, decode (or find in the cache) and split a folder dataset; see the module docstring.

    `val_size` > 0 holds out exactly that many training images for validation (stratified)
    instead of `val_fraction`; `cache_dir` None decodes without caching (then the dataset must fit
    `memory_budget_bytes`); `progress` None shows a bar when stderr is a terminal.
    """
    size = check_settings(image_size, channels, fit, test_fraction, val_fraction)
    if val_size < 0 or (val_size and val_fraction):
        raise ConfigError("give a validation size >= 0 or a validation fraction, not both")
    scan = scan_folder(path)
    workers = pick_workers(scan, workers)
    if val_size and "val" in scan.files:
        raise ConfigError(
            f"{scan.root} has its own val/ folder for validation; holding out --val-size "
            f"{val_size} training images as well is not supported: drop --val-size"
        )
    validates = val_fraction > 0 or val_size > 0
    holds_out = "test" not in scan.files or (validates and "val" not in scan.files)
    settings = {
        "image_size": size,
        "channels": channels,
        "fit": fit,
        "test_fraction": None if "test" in scan.files else test_fraction,
        "val_fraction": None if "val" in scan.files else val_fraction,
        "val_size": None if "val" in scan.files else val_size,
        "seed": seed if holds_out else None,
        "unreadable": [p for p, _ in scan.unreadable],  # they have no size or time to hash
    }
    everything = [f for files in scan.files.values() for f in files]
    entry = CacheEntry(Path(cache_dir), cache_key(everything, settings)) if cache_dir else None
    if entry is not None and (loaded := load_entry(entry, memory_budget_bytes)) is not None:
        meta, arrays, mmapped = loaded
        if strict and meta["skipped"]:
            raise too_many_skipped(scan.root, meta["skipped"])
        cache_paths = entry.paths(meta["storage"], meta["splits"])
        return from_meta(scan, meta, arrays, mmapped, cache_paths, hit=True)

    skipped = list(scan.unreadable)
    files = {split: list(entries) for split, entries in scan.files.items()}
    if size is not None and channels is not None:
        shape = (channels, *size)
    else:
        shape, failed = follow_images(scan, size, channels, workers, progress)
        skipped += failed
        bad = {p for p, _ in failed}
        files = {
            split: [f for f in entries if f.path not in bad] for split, entries in files.items()
        }
    if strict and skipped:
        raise too_many_skipped(scan.root, skipped)
    files, held_out = assign_splits(scan, files, test_fraction, val_fraction, seed, val_size)
    check_every_class(scan.root, scan.classes, files)

    mmapped = sum(map(len, files.values())) * math.prod(shape) > memory_budget_bytes
    if mmapped and entry is None:
        raise ConfigError(
            f"{scan.root}: the decoded images need more than the memory budget of "
            f"{memory_budget_bytes:,} bytes and no cache folder was given to map them from"
        )
    if entry is not None:
        entry.make_folder()
    arrays = {}
    for split, entries in files.items():
        npy = entry.npy_path(split) if mmapped else None
        arrays[split], files[split], failed = decode_split(
            scan, entries, shape, npy, fit, workers, progress
        )
        skipped += failed
    if strict and skipped:
        raise too_many_skipped(scan.root, skipped)
    check_every_class(scan.root, scan.classes, files)

    mean, std = channel_stats(arrays["train"])
    storage = "npy" if mmapped else "safetensors"
    meta = {
        "root": str(scan.root),
        "layout": scan.layout,
        "classes": list(scan.classes),
        "shape": list(shape),
        "mean": list(mean),
        "std": list(std),
        "skipped": [list(s) for s in sorted(skipped)],
        "held_out": list(held_out),
        "storage": storage,
        "splits": {
            split: {"files": [f.path for f in entries], "labels": [f.label for f in entries]}
            for split, entries in files.items()
        },
    }
    cache_paths = ()
    if entry is not None:
        if not mmapped:
            save_resident(entry, arrays)
        save_meta(entry, meta)
        cache_paths = entry.paths(storage, files)
    return from_meta(scan, meta, arrays, mmapped, cache_paths, hit=False)
