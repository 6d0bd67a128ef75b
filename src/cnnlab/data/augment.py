"""Batched, seeded data augmentation as tensor operations on the batch's device.

A batch `(B, C, H, W)`, uint8 or float, goes in and the same shape and dtype come out. Every
random number comes from one `torch.Generator`, so the same seed gives the same batches and a
resumed run continues exactly. Drawing and applying are separate steps (`sample_params`,
`apply_params`), so each operation can be checked against a reference:

- random crop of the padded image (reflect or zero padding), as a per-image shift, as airbench does;
- horizontal flip of a random half (off for digits, where a mirrored 2 is not a 2);
- a small random affine map (rotation, scale, translation) through `affine_grid` / `grid_sample`;
- stroke thickness jitter for digits: a blend towards a 3x3 dilation (`max_pool2d`) or erosion
  (`-max_pool2d(-x)`) for a random subset of images (bright strokes on a dark background).

    >>> config = get_augment_preset("natural")
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = augment_batch(images, config, gen)          # (B, 3, 32, 32) uint8 -> same
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

PAD_MODES = ("reflect", "zeros")


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a batch gets, and how strong they are (zero: off)."""

    crop_padding: int = 0  # shift by up to this many pixels: a random crop of the padded image
    pad_mode: str = "reflect"  # what the shift brings in at the border: "reflect" or "zeros"
    flip: bool = False  # mirror a random half of the batch left to right
    rotate_degrees: float = 0.0  # rotation uniform in [-d, d]
    scale: tuple[float, float] = (1.0, 1.0)  # zoom factor uniform in [lo, hi]
    translate: float = 0.0  # shift uniform in [-t, t] times the width / height (sub-pixel)
    thickness: float = 0.0  # share of images whose strokes are made thicker or thinner

    def __post_init__(self):
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"unknown pad mode {self.pad_mode!r}; choose: {', '.join(PAD_MODES)}")
        if self.crop_padding < 0 or self.rotate_degrees < 0 or self.translate < 0:
            raise ConfigError("crop padding, rotation and translation must not be negative")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range {self.scale} must be 0 < low <= high")
        if not 0 <= self.thickness <= 1:
            raise ConfigError(f"thickness {self.thickness} is a share of images, 0..1")

    @property
    def uses_affine(self) -> bool:
        return self.rotate_degrees > 0 or self.scale != (1.0, 1.0) or self.translate > 0

    def to_json(self) -> dict:
        return asdict(self) | {"scale": list(self.scale)}

    @classmethod
    def from_json(cls, data: dict) -> AugmentConfig:
        return cls(**(data | {"scale": tuple(data.get("scale", (1.0, 1.0)))}))


PRESETS = {
    "none": AugmentConfig(),
    "natural": AugmentConfig(crop_padding=4, pad_mode="reflect", flip=True),
    "digits": AugmentConfig(rotate_degrees=12.0, scale=(0.85, 1.15), translate=0.1, thickness=0.3),
}


def list_augment_presets() -> list[str]:
    return sorted(PRESETS)


def get_augment_preset(name: str) -> AugmentConfig:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(list_augment_presets())
        raise ConfigError(f"unknown augmentation {name!r}; known: {known}") from None


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for one batch of B images."""

    shifts: torch.Tensor  # (B, 2) int64: rows, columns
    flip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) degrees
    scale: torch.Tensor  # (B,)
    translate: torch.Tensor  # (B, 2) fractions of height, width
    thickness: torch.Tensor  # (B,) in [-1, 1]: > 0 thicker, < 0 thinner, 0 unchanged

    def to(self, device) -> AugmentParams:
        return AugmentParams(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def rows(self, lo: int, hi: int) -> AugmentParams:
        """The draws of images `lo` to `hi` (a data-parallel process's part of the batch)."""
        return AugmentParams(*(getattr(self, f)[lo:hi] for f in self.__dataclass_fields__))


def sample_params(config: AugmentConfig, batch_size: int, generator: torch.Generator):
    """Draw every parameter for a batch, always in the same order, on the generator's device."""
    b, dev, g = batch_size, generator.device, generator

    def uniform(*shape):  # in [-1, 1)
        return torch.rand(*shape, generator=g, device=dev) * 2 - 1

    p = config.crop_padding
    shifts = torch.randint(-p, p + 1, (b, 2), generator=g, device=dev)
    flip = (torch.rand(b, generator=g, device=dev) < 0.5) & config.flip
    angle = uniform(b) * config.rotate_degrees
    lo, hi = config.scale
    scale = lo + (uniform(b) + 1) / 2 * (hi - lo)
    translate = uniform(b, 2) * config.translate
    chosen = torch.rand(b, generator=g, device=dev) < config.thickness
    thickness = uniform(b) * chosen
    return AugmentParams(shifts, flip, angle, scale, translate, thickness)


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside as F.pad's "reflect" does (edge not repeated)."""
    period = 2 * (size - 1) if size > 1 else 1
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def shift_images(images: torch.Tensor, shifts: torch.Tensor, pad_mode: str = "reflect"):
    """out[b, :, i, j] = images[b, :, i + dy_b, j + dx_b], filled by reflection or zeros outside.

    The same as padding every image and cropping it at a random offset, without the padded copy.
    """
    b, c, h, w = images.shape
    rows = torch.arange(h, device=images.device) + shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device) + shifts[:, 1:]  # (B, W)
    if pad_mode == "reflect":
        rows_in, cols_in = reflect(rows, h), reflect(cols, w)
    else:
        rows_in, cols_in = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = images.gather(2, rows_in[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols_in[:, None, None, :].expand(b, c, h, w))
    if pad_mode == "zeros":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out = torch.where(inside[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def affine_images(images, angle, scale, translate) -> torch.Tensor:
    """Rotate by `angle` degrees, zoom by `scale` about the centre, shift by `translate` (B, 2).

    Float `(B, C, H, W)` in and out; what comes in from outside the image is zero.
    """
    b, c, h, w = images.shape
    rad = angle.to(images.dtype) * (math.pi / 180)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    # output -> input map in [-1, 1] coordinates, corrected for the aspect ratio: (B, 2, 2)
    a = torch.stack([torch.stack([cos, sin * h / w], -1), torch.stack([-sin * w / h, cos], -1)], 1)
    shift = torch.stack([translate[:, 1], translate[:, 0]], -1).to(images.dtype) * 2  # (x, y)
    theta = torch.cat([a, -(a @ shift[:, :, None])], dim=2)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def change_thickness(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Blend each float image towards its 3x3 dilation (amount > 0) or erosion (amount < 0)."""
    grown = F.max_pool2d(images, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-images, 3, stride=1, padding=1)
    a = amount.to(images.dtype)[:, None, None, None]
    return images + a.clamp(min=0) * (grown - images) + (-a).clamp(min=0) * (shrunk - images)


def apply_params(images: torch.Tensor, params: AugmentParams, config: AugmentConfig):
    """Thickness, affine map, shift, flip, in that order; same shape and dtype out."""
    params = params.to(images.device)
    x = images
    resample = config.thickness > 0 or config.uses_affine
    if resample and not x.is_floating_point():
        x = x.to(torch.float32)
    if resample:
        if config.thickness > 0:
            x = change_thickness(x, params.thickness)
        if config.uses_affine:
            x = affine_images(x, params.angle, params.scale, params.translate)
    if config.crop_padding:
        x = shift_images(x, params.shifts, config.pad_mode)
    if config.flip:
        x = torch.where(params.flip[:, None, None, None], x.flip(-1), x)
    if resample and not images.is_floating_point():
        x = x.round_().clamp_(0, 255)
    return x.to(images.dtype)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator):
    """A randomly augmented copy of a uint8 or float `(B, C, H, W)` batch, seeded by `generator`."""
    return apply_params(images, sample_params(config, images.shape[0], generator), config)
