"""Finding the classes and image files of a folder dataset, and the seeded stratified hold-out.

Two layouts are understood, both with class names taken from sorted folder names:

    PATH/<class>/<image>                          torchvision's ImageFolder
    PATH/train/<class>/<image>, PATH/test/...     optional PATH/val/ beside them

Images are found by extension (torchvision's list), in class folders and below; hidden files and
folders (`.DS_Store`, `.git`, `__MACOSX`) and other files (`Thumbs.db`, `notes.txt`) are ignored.
Every structural problem is one `DataError` raised here, before any image is decoded.

    >>> scan = scan_folder(Path("photos"))
    >>> scan.classes, len(scan.files["train"])
    (('cat', 'dog'), 412)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
LAYOUT_HELP = "expected PATH/<class>/<image>, or PATH/train/<class>/<image> with PATH/test/"


@dataclass(frozen=True)
class FileEntry:
    """One image file: its path relative to the dataset root ('/'-separated) and its class."""

    path: str
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds, before decoding: layout, classes, image files per split."""

    root: Path
    layout: str  # "classes" (PATH/<class>/...) or "splits" (PATH/train/<class>/...)
    classes: tuple[str, ...]
    files: dict[str, tuple[FileEntry, ...]]  # "train", and "val" / "test" when the folder has them
    unreadable: tuple[tuple[str, str], ...]  # (path, reason): image names that cannot be opened


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def subfolders(folder: Path) -> list[str]:
    """Sorted names of the visible folders in `folder` (symbolic links to folders included)."""
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise DataError(f"{folder}: cannot list: {err.strerror or err}") from None
    return sorted(n for n in names if not is_hidden(n) and (folder / n).is_dir())


def find_images(class_dir: Path, root: Path, label: int):
    """Image files under `class_dir`, sorted, as `FileEntry`s, plus (path, reason) of bad ones."""
    entries, unreadable = [], []
    for here, dirs, names in os.walk(class_dir):  # symbolic links to folders are not followed
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        folder = os.path.relpath(here, root).replace(os.sep, "/")
        for name in sorted(n for n in names if is_image_name(n)):
            path = os.path.join(here, name)  # strings, not pathlib: this runs for every file
            rel = f"{folder}/{name}"
            try:
                info = os.stat(path)
            except OSError as err:
                unreadable.append((rel, f"cannot open: {err.strerror or err}"))
                continue
            if not stat.S_ISREG(info.st_mode):
                unreadable.append((rel, "not a regular file"))
                continue
            entries.append(FileEntry(rel, label, info.st_size, info.st_mtime_ns))
    return entries, unreadable


def scan_classes(folder: Path, root: Path, classes: tuple[str, ...] | None = None):
    """Class names and files of one class-per-folder tree; `classes` are the ones it must have."""
    found = tuple(subfolders(folder))
    if classes is None:
        if not found:
            raise DataError(f"{folder}: no class folders found; {LAYOUT_HELP}")
        if len(found) == 1:
            raise DataError(
                f"{folder}: only one class folder ({found[0]!r}); a classifier needs at least two"
            )
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"extra {', '.join(extra)}"] if extra else []
        raise DataError(
            f"{folder}: class folders differ from the training set's ({'; '.join(parts)}); "
            f"both must hold the same classes"
        )
    entries, unreadable, empty = [], [], []
    for label, name in enumerate(found):
        files, bad = find_images(folder / name, root, label)
        entries += files
        unreadable += bad
        if not files:
            empty.append(name)
    if empty:
        raise DataError(
            f"{folder}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
            f"hold{'' if len(empty) > 1 else 's'} no images "
            f"(looked for {' '.join(IMAGE_EXTENSIONS)})"
        )
    return found, tuple(entries), unreadable


def detect_layout(root: Path) -> str:
    """Which layout `root` has: "splits" (train/, maybe val/ and test/, no others) or "classes"."""
    folders = subfolders(root)
    if "train" in folders and set(folders) <= set(SPLIT_FOLDERS):
        return "splits"
    return "classes"


def scan_folder(path: str | os.PathLike) -> FolderScan:
    """Find the layout, classes and image files of a folder dataset; structural errors raise."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of class folders, found a file; {LAYOUT_HELP}")
    layout = detect_layout(root)
    if layout == "classes":
        classes, entries, unreadable = scan_classes(root, root)
        return FolderScan(root, layout, classes, {"train": entries}, tuple(unreadable))
    classes, entries, unreadable = scan_classes(root / "train", root)
    files = {"train": entries}
    for split in ("val", "test"):
        if (root / split).is_dir():
            _, files[split], bad = scan_classes(root / split, root, classes)
            unreadable += bad
    return FolderScan(root, layout, classes, files, tuple(unreadable))


def share_out(count: int, sizes) -> list[int]:
    """`count` split over classes of `sizes` in proportion (largest remainders, ties to the first
    class), each class giving at most all but one of its images."""
    sizes = [int(n) for n in sizes]
    quotas = [count * n / sum(sizes) for n in sizes]
    counts = [min(int(q), n - 1) for q, n in zip(quotas, sizes)]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (-(quotas[c] - int(quotas[c])), c))
    while sum(counts) < count:
        room = [c for c in by_remainder if counts[c] < sizes[c] - 1]
        if not room:
            break
        counts[room[0]] += 1
        by_remainder.remove(room[0])
        by_remainder.append(room[0])
    return counts


def stratified_holdout(
    labels, fraction: float, seed: int, count: int | None = None
) -> tuple[list[int], list[int]]:
    """Positions to keep and to hold out: `fraction` of each class, chosen by a seeded shuffle.

    A class of n images gives round(fraction * n) of them, at least one and at most n - 1 (so
    training keeps every class); a class of one image stays whole. With `count`, exactly that many
    are held out instead, shared over the classes in proportion to their sizes (`share_out`); a
    count that would empty a class is a `DataError`. Both lists come back sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == label) for label in classes]
    if count is None:
        counts = [
            min(max(round(fraction * len(m)), 1), len(m) - 1) if fraction > 0 else 0
            for m in members
        ]
    else:
        most = len(labels) - len(classes)
        if count > most:
            raise DataError(
                f"cannot hold out {count} of {len(labels)} training images: every one of the "
                f"{len(classes)} classes must keep one (at most {most})"
            )
        counts = share_out(count, [len(m) for m in members])
    held = []
    for m, k in zip(members, counts):
        held += rng.permutation(m)[:k].tolist()
    held_set = set(held)
    keep = [i for i in range(len(labels)) if i not in held_set]
    return keep, sorted(held)
