"""The decoded-image cache of folder datasets: its key, its files, and reading them back.

A folder is decoded once; the pixels are kept under the user's cache folder
(`$XDG_CACHE_HOME/cnnlab/folders/`) as one entry per key. The key hashes the sorted list of
(relative path, size, mtime_ns) of every image plus the settings, so any changed, added or removed
file, or another image size, is a new key. An entry is

    <key>.safetensors             the images of every split (datasets that fit the memory budget)
    <key>.<split>.npy             or one .npy per split, opened memory-mapped (bigger datasets)
    <key>.json                    classes, files, labels, statistics; written last, so its presence
                                  marks a complete entry

An entry that is missing, partial or unreadable is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from cnnlab.errors import OutputError
from cnnlab.files import atomic_write_bytes

CACHE_VERSION = 1
COPY_ROWS = 4096  # rows per step when compacting a memory-mapped array


def folder_cache_dir(env=None) -> Path:
    """`$XDG_CACHE_HOME/cnnlab/folders` (`~/.cache/cnnlab/folders` when the variable is unset)."""
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cnnlab" / "folders"


def cache_key(files, settings: dict) -> str:
    """Hash of the sorted (path, size, mtime_ns) of `files` (`FileEntry`s) and the settings."""
    listing = sorted((f.path, f.size, f.mtime_ns) for f in files)
    text = json.dumps({"version": CACHE_VERSION, "files": listing, "settings": settings})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    """The file names of one cache entry."""

    folder: Path
    key: str

    @property
    def meta_path(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def safetensors_path(self) -> Path:
        return self.folder / f"{self.key}.safetensors"

    def npy_path(self, split: str) -> Path:
        return self.folder / f"{self.key}.{split}.npy"

    def make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {self.folder}: {err.strerror or err}") from None

    def paths(self, storage: str, splits) -> tuple[Path, ...]:
        data = [self.safetensors_path] if storage == "safetensors" else map(self.npy_path, splits)
        return (self.meta_path, *data)


def entry_bytes(meta: dict) -> int:
    return sum(len(s["labels"]) for s in meta["splits"].values()) * math.prod(meta["shape"])


def load_entry(entry: CacheEntry, memory_budget_bytes: int):
    """`(meta, {split: uint8 array}, mmapped)` of a complete entry, or None (a miss).

    An entry over the budget comes back memory-mapped; one stored as safetensors but now over the
    budget is a miss, so that it is rebuilt as .npy files.
    """
    try:
        meta = json.loads(entry.meta_path.read_bytes())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != entry.key:
            return None
        mmapped = entry_bytes(meta) > memory_budget_bytes
        if meta["storage"] == "safetensors":
            if mmapped:
                return None
            arrays = safetensors.numpy.load_file(entry.safetensors_path)
        else:
            mode = "r" if mmapped else None
            arrays = {s: np.load(entry.npy_path(s), mmap_mode=mode) for s in meta["splits"]}
        for split, info in meta["splits"].items():
            images = arrays[split]
            if images.dtype != np.uint8 or images.shape != (len(info["labels"]), *meta["shape"]):
                return None
    except Exception:  # missing, partial or foreign files are all a cache miss
        return None
    return meta, arrays, mmapped


def allocate(count: int, shape, path: Path | None) -> np.ndarray:
    """An uninitialised uint8 `(count, *shape)` array: in memory, or a new .npy beside `path`.

    The .npy file has a temporary name until `publish` moves it to `path`.
    """
    if path is None:
        return np.empty((count, *shape), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, *shape))
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def discard(images: np.ndarray) -> None:
    """Remove the temporary file behind a memory-mapped array from `allocate` (if any)."""
    filename = getattr(images, "filename", None)
    if filename:
        with contextlib.suppress(OSError):
            os.unlink(filename)


def keep_rows(images: np.ndarray, rows, path: Path | None) -> np.ndarray:
    """`images[rows]`, copied step by step into a new array like `allocate`'s; the old one goes."""
    rows = np.asarray(rows, dtype=np.int64)
    kept = allocate(len(rows), images.shape[1:], path)
    for start in range(0, len(rows), COPY_ROWS):
        kept[start : start + COPY_ROWS] = images[rows[start : start + COPY_ROWS]]
    discard(images)
    return kept


def publish(images: np.ndarray, path: Path) -> np.ndarray:
    """Flush a memory-mapped array from `allocate`, move it to `path`, reopen it read-only."""
    images.flush()
    filename = images.filename
    del images
    try:
        os.replace(filename, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    return np.load(path, mmap_mode="r")


def save_resident(entry: CacheEntry, arrays: dict[str, np.ndarray]) -> None:
    """Write in-memory images of every split as one safetensors file (atomically)."""
    atomic_write_bytes(entry.safetensors_path, safetensors.numpy.save(arrays))


def save_meta(entry: CacheEntry, meta: dict) -> None:
    """Write the entry's description last; stale files of the other storage kind are removed."""
    meta = {"version": CACHE_VERSION, "key": entry.key, **meta}
    stale = ("npy", "safetensors")[meta["storage"] == "npy"]
    for path in entry.paths(stale, ("train", "val", "test"))[1:]:
        with contextlib.suppress(OSError):
            path.unlink()
    atomic_write_bytes(entry.meta_path, json.dumps(meta).encode("utf-8"))
