"""People's own images: safe decoding, and the one preprocessing every prediction path uses.

`open_image` reads an untrusted file (or bytes) into a loaded PIL image; `prepare` turns it into
the uint8 `(C, H, W)` array a model takes, the way the model's training data was made:

    >>> image = open_image("my-digit.jpg")
    >>> x = prepare(image, "mnist", (1, 28, 28))   # uint8 (1, 28, 28), white ink on black

Two styles exist. "mnist" redoes what made MNIST (LeCun et al.): the digit's bounding box is
scaled to fit 20x20 pixels with anti-aliasing, keeping its aspect ratio, and put in a 28x28 field
so that its centre of mass is at the centre. "resize" only converts the colours and resizes, for
datasets not made that way (Fashion-MNIST, image folders).
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

from cnnlab.errors import ConfigError, ImageError, NoInkError

MAX_PIXELS = 40_000_000  # width x height; larger images are refused before decoding
MIN_SIDE = 8  # pixels; smaller images hold too little to classify
STYLES = ("mnist", "resize")

MNIST_FIELD = 28  # the 28x28 image
MNIST_BOX = 20  # the longer side of the digit's bounding box
MNIST_CENTRE = 14.0  # where MNIST's centres of mass sit (row, column; measured: 13.99, 14.01)
INK_FRACTION = 0.1  # pixels above this fraction of the brightest one define the bounding box
MIN_INK = 24  # grey levels above the background below which an image counts as blank
BORDER_FRACTION = 0.02  # the border ring is this fraction of the shorter side (at least 1 px)


def open_image(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode an image file or its bytes into a loaded image of mode L, RGB or RGBA.

    Reads PNG, JPEG, BMP, GIF (first frame), TIFF, WebP, in any mode PIL opens: 1-bit, grey,
    16-bit grey (scaled to 8 bits), palette (with transparency), LA, RGB, RGBA, CMYK. The EXIF
    orientation is applied. The size in the header is checked before any pixel is decoded, so a
    decompression bomb costs nothing. Only regular files are read (a FIFO or device never
    blocks). Every problem is an `ImageError` whose message names the file (`name`, else the
    path, else "image").
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image"
        return _decode(io.BytesIO(bytes(source)), label, max_pixels)
    label = name or os.fspath(source)
    with _open_regular_file(source, label) as file:
        return _decode(file, label, max_pixels)


def _open_regular_file(path: str | os.PathLike, label: str):
    """Open `path` for reading if it is a regular file; checked on the open descriptor, so a
    FIFO swapped in after a check cannot make the read hang (O_NONBLOCK)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(f"{label}: not found") from None
    except OSError as err:
        raise ImageError(f"{label}: cannot read: {err.strerror or err}") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(kind) else "not a regular file"
        raise ImageError(f"{label}: {what}, not an image file")
    return os.fdopen(fd, "rb")


def _decode(file, label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit (89M pixels); the check below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageError(f"{label}: empty image ({width}x{height} pixels)")
        if width * height > max_pixels:
            raise ImageError(
                f"{label}: {width}x{height} pixels is more than the {max_pixels:,} allowed; "
                f"refusing to decode it (a decompression bomb?)"
            )
        if width < MIN_SIDE or height < MIN_SIDE:
            raise ImageError(
                f"{label}: {width}x{height} pixels is too small; at least "
                f"{MIN_SIDE}x{MIN_SIDE} is needed"
            )
        image.load()
        image = ImageOps.exif_transpose(image)
        return _normalise_mode(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{label}: refusing to decode it: {err}") from None
    except Image.UnidentifiedImageError:
        empty = file.seek(0, io.SEEK_END) == 0
        raise ImageError(f"{label}: {'empty file' if empty else 'not an image'}") from None
    except Exception as err:  # PIL's decoders raise many kinds on truncated or corrupt data
        raise ImageError(f"{label}: cannot decode the image ({err})") from None


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Any PIL mode -> L, RGB or RGBA (a new, fully loaded image)."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return image.copy()
    if mode.startswith("I"):  # 16-bit grey (I;16, I;16B, or I as 16-bit PNGs open)
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    if mode == "F":  # float TIFF: 0..1 when it fits, else grey levels
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max() <= 1.0 else values
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    has_alpha = mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info
    if mode == "P" and not has_alpha:
        return image.convert("RGB")
    return image.convert("RGBA" if has_alpha else "RGB")


def mnist_style(image: Image.Image) -> np.ndarray:
    """An image of one digit -> uint8 (28, 28), white ink on black, made the way MNIST was.

    1. transparency is composited onto the background the border suggests (an opaque border:
       its own grey; a transparent one, as drawing apps save: the opposite of the ink's grey);
    2. grey (PIL's ITU-R 601-2 luma);
    3. polarity from the border: the ink is what differs from the border's level, and where
       it is darker (ink on paper) the image is inverted, so ink is always bright;
    4. the border's level is subtracted, and the noise the border shows (`_noise_allowance`;
       0 for a clean image), clipped at 0; the result is stretched so the brightest ink is
       255; less than `MIN_INK` levels of contrast left -> `NoInkError`;
    5. crop to the ink's bounding box (pixels above 10% of the brightest);
    6. scale the longer side to 20 px, keeping the aspect ratio (PIL BOX, area averaging, when
       shrinking, which is the anti-aliasing MNIST used; LANCZOS when enlarging);
    7. paste in a 28x28 field and shift by whole pixels, as MNIST did, so that the centre of mass
       lands within half a pixel of (row 14, column 14).
    """
    grey = _grey_without_alpha(image)
    border = _border(grey)
    level = float(np.median(border))
    difference = grey - level
    noise = _noise_allowance(border, level, grey.size)
    if _ink_is_darker(difference, noise):
        difference = -difference
    ink = np.clip(difference - noise, 0.0, None)
    if ink.max() < MIN_INK:
        raise NoInkError(
            f"no ink found: the image is blank (less than {MIN_INK} grey levels differ from "
            "its background)"
        )
    ink *= 255.0 / ink.max()
    rows = np.flatnonzero((ink > INK_FRACTION * 255.0).any(axis=1))
    cols = np.flatnonzero((ink > INK_FRACTION * 255.0).any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _scale_longer_side(ink, MNIST_BOX)
    return _centre_of_mass_field(digit, MNIST_FIELD)


def _grey_without_alpha(image: Image.Image) -> np.ndarray:
    """float64 (H, W) grey levels 0..255 with any transparency flattened."""
    if image.mode not in ("LA", "RGBA", "PA", "La", "RGBa"):
        return np.asarray(image.convert("L"), dtype=np.float64)
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
    border_alpha = _border(alpha)
    if border_alpha.mean() > 0.5:  # an opaque frame: its own grey is the background
        weights = _border(alpha)
        background = float((_border(grey) * weights).sum() / weights.sum())
    else:  # transparent around the drawing: the background is what the ink stands out from
        ink_grey = float((grey * alpha).sum() / max(alpha.sum(), 1e-9))
        background = 255.0 if ink_grey < 127.5 else 0.0
    return grey * alpha + background * (1.0 - alpha)


def _noise_allowance(border: np.ndarray, level: float, pixels: int) -> float:
    """How far paper may differ from its level by noise alone: the border's spread (median
    absolute deviation, as a Gaussian sigma) times sqrt(2 ln N), the level that N noise pixels
    exceed with small probability (Donoho's universal threshold). 0 for a clean background."""
    sigma = 1.4826 * float(np.median(np.abs(border - level)))
    return sigma * float(np.sqrt(2.0 * np.log(max(pixels, 2))))


def _ink_is_darker(difference: np.ndarray, noise: float) -> bool:
    """Polarity: the ink is the side of the border's level with more mass beyond the noise
    and `MIN_INK` levels; dark ink on lighter paper -> True."""
    margin = noise + MIN_INK
    brighter = np.clip(difference - margin, 0.0, None).sum()
    darker = np.clip(-difference - margin, 0.0, None).sum()
    return bool(darker > brighter)


def _border(array: np.ndarray) -> np.ndarray:
    """The pixels of the outer ring (about 2% of the shorter side wide), flattened."""
    width = max(1, int(BORDER_FRACTION * min(array.shape)))
    mask = np.ones(array.shape, dtype=bool)
    mask[width:-width, width:-width] = False
    return array[mask]


def _scale_longer_side(ink: np.ndarray, side: int) -> np.ndarray:
    """float (h, w) -> float (h', w') with max(h', w') == side, the aspect ratio kept."""
    h, w = ink.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    method = Image.Resampling.BOX if scale <= 1 else Image.Resampling.LANCZOS
    scaled = Image.fromarray(ink.astype(np.float32), "F").resize(size, method)
    return np.clip(np.asarray(scaled, dtype=np.float64), 0.0, 255.0)


def _centre_of_mass_field(digit: np.ndarray, field: int) -> np.ndarray:
    """Place `digit` in a `field` x `field` canvas, its centre of mass at (14, 14) to the pixel."""
    h, w = digit.shape
    canvas = np.zeros((field, field), dtype=np.float64)
    top, left = (field - h) // 2, (field - w) // 2
    canvas[top : top + h, left : left + w] = digit
    index = np.arange(field)
    mass = canvas.sum()
    dy = int(round(MNIST_CENTRE - (canvas.sum(axis=1) * index).sum() / mass))
    dx = int(round(MNIST_CENTRE - (canvas.sum(axis=0) * index).sum() / mass))
    shifted = np.zeros_like(canvas)  # a shift, not a roll: ink never wraps around
    src_rows = slice(max(0, -dy), min(field, field - dy))
    src_cols = slice(max(0, -dx), min(field, field - dx))
    dst_rows = slice(max(0, dy), min(field, field + dy))
    dst_cols = slice(max(0, dx), min(field, field + dx))
    shifted[dst_rows, dst_cols] = canvas[src_rows, src_cols]
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def plain_resize(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """Convert to `channels` (1: grey, 3: RGB; transparency over white) and resize to `size`
    (H, W) with PIL's LANCZOS -> uint8 (C, H, W). For datasets not made MNIST-style."""
    if channels not in (1, 3):
        raise ConfigError(f"images can be prepared with 1 or 3 channels, not {channels}")
    if image.mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    resized = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
    return resized[None] if channels == 1 else resized.transpose(2, 0, 1).copy()


def prepare(image: Image.Image, style: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The model input for `image`: uint8 (C, H, W) of `shape`, made in `style` ("mnist" or
    "resize"; see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if style == "mnist":
        if shape != (1, MNIST_FIELD, MNIST_FIELD):
            raise ConfigError(
                f"the mnist preprocessing makes (1, 28, 28) images; the model takes {shape}"
            )
        return mnist_style(image)[None]
    if style == "resize":
        return plain_resize(image, shape[1:], shape[0])
    raise ConfigError(f"unknown preprocessing {style!r}; choose from {', '.join(STYLES)}")
