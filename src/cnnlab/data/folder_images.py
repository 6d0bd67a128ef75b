"""Decoding image files into uint8 arrays once: headers, conversion, resizing, statistics.

PIL does the work and releases the GIL while it decodes, so a thread pool decodes many files at
once, each straight into its row of a preallocated `(N, C, H, W)` array (in memory, or a
memory-mapped `.npy` file for datasets bigger than memory). A file that cannot be decoded is
reported with its reason, never raised: the caller decides whether that is fatal.

    >>> out = np.empty((len(paths), 3, 32, 32), np.uint8)
    >>> failures = decode_into(paths, out, fit="crop")   # [(row, reason), ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

FITS = ("crop", "pad")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
CHUNK = 64  # files per pool task
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself without decoding its pixels."""

    width: int
    height: int
    grey: bool


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Size (after EXIF rotation) and whether the image is greyscale, from the file's header.

    Palette images are grey when every palette entry is; an RGB file counts as colour even when
    its three channels happen to be equal (finding that out would mean decoding it).
    """
    with Image.open(path) as im:
        width, height = im.size
        exif = im.getexif() if "exif" in im.info else {}  # PNG would decode to look further
        if exif.get(0x0112) in ROTATING_ORIENTATIONS:
            width, height = height, width
        grey = im.mode in GREY_MODES
        if im.mode in ("P", "PA"):
            palette = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
            grey = bool((palette == palette[:, :1]).all())
        return ImageHeader(width, height, grey)


def decode_image(path, channels: int, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """One file as uint8 `(channels, H, W)`: EXIF-rotated, converted, then fitted to `size`.

    `fit="crop"` scales the image to cover `size` and cuts the centre; `fit="pad"` scales it to
    fit inside and pads the rest with black. An image already of `size` keeps its exact pixels.
    """
    height, width = size
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as im:
        im.draft(mode, (width, height))  # JPEG: decode at reduced scale
        if "exif" in im.info:  # as `read_header`: EXIF stated before the pixels
            im = ImageOps.exif_transpose(im)
        if im.mode != mode:
            im = im.convert(mode)
        else:
            im.load()  # no copy: most files already have the mode asked for
    if im.size != (width, height):
        if fit == "crop":
            im = ImageOps.fit(im, (width, height), method=RESAMPLE)
        else:
            im = ImageOps.pad(im, (width, height), method=RESAMPLE, color=0)
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, H, W)


def progress_bar(total: int, desc: str, show: bool | None):
    """A tqdm bar on stderr, shown when `show` is True or (None) when stderr is a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not show, leave=False)


def run_chunked(work: Callable[[int], object], n: int, workers: int, desc: str, show) -> list:
    """`[work(i) for i in range(n)]`, computed by a thread pool in chunks, with a progress bar."""
    results: list = [None] * n

    def chunk(start: int) -> int:
        stop = min(start + CHUNK, n)
        for i in range(start, stop):
            results[i] = work(i)
        return stop - start

    with progress_bar(n, desc, show) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for done in pool.map(chunk, range(0, n, CHUNK)):
            bar.update(done)
    return results


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def read_headers(paths: Sequence, workers: int | None = None, show=None) -> list:
    """`ImageHeader` per file, or the reason (a string) it could not be read."""

    def work(i: int):
        try:
            return read_header(paths[i])
        except Exception as err:  # PIL raises many kinds for a broken file; each is a skip
            return describe(err)

    return run_chunked(work, len(paths), workers or default_workers(), "reading headers", show)


def decode_into(
    paths: Sequence,
    out: np.ndarray,
    fit: str = "crop",
    workers: int | None = None,
    show=None,
) -> list[tuple[int, str]]:
    """Decode `paths[i]` into `out[i]` (uint8 `(N, C, H, W)`); returns `(row, reason)` failures."""
    channels, height, width = out.shape[1:]

    def work(i: int):
        try:
            out[i] = decode_image(paths[i], channels, (height, width), fit)
        except Exception as err:  # a corrupt file is reported and skipped, never raised
            return describe(err)
        return None

    reasons = run_chunked(work, len(paths), workers or default_workers(), "decoding images", show)
    return [(i, reason) for i, reason in enumerate(reasons) if reason is not None]


def describe(err: Exception) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def channel_stats(images, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of `images / 255` (uint8 `(N, C, H, W)`).

    Exact: a histogram of the 256 byte values per channel, gathered chunk by chunk, so a
    memory-mapped array is read once and never held whole.
    """
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, images.shape[0], chunk):
        block = np.asarray(images[start : start + chunk])
        for c in range(channels):
            counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / total
    var = np.maximum((counts * values**2).sum(axis=1) / total - mean**2, 0.0)
    return tuple(mean.tolist()), tuple(np.sqrt(var).tolist())


def gather_batch(images, index) -> torch.Tensor:
    """Rows `index` of uint8 images (a tensor, or a memory-mapped numpy array) as a tensor.

    A memory-mapped array is read in ascending row order, so the disk sees near-sequential reads,
    and the rows come back in the order asked for.
    """
    if isinstance(images, torch.Tensor):
        return images[index]
    if isinstance(index, slice):
        return torch.from_numpy(np.array(images[index]))  # a resident copy of the rows
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    order = np.argsort(index, kind="stable")
    rows = images[index[order]]  # (B, C, H, W), read in ascending order
    batch = np.empty_like(rows)
    batch[order] = rows
    return torch.from_numpy(batch)
