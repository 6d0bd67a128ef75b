"""The one place where stored images become model input.

Images are kept as uint8 `(N, C, H, W)`; a batch is scaled here, on its device, exactly like the
tutorial's `transforms.ToTensor()` (x / 255), optionally followed by the dataset's mean/std.
Training, evaluation and every figure call `to_model_input`, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Normalization:
    """How uint8 pixels become floats: x / 255, then (x - mean) / std when `mean`/`std` are set.

    `mean` and `std` are one number for every channel, or a tuple with one number per channel.
    """

    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None

    @property
    def enabled(self) -> bool:
        return self.mean is not None and self.std is not None

    def to_json(self) -> dict:
        mean, std = (list(v) if isinstance(v, tuple) else v for v in (self.mean, self.std))
        return {"scale": "x/255", "mean": mean, "std": std}

    @classmethod
    def from_json(cls, data: dict | None) -> Normalization:
        data = data or {}
        mean, std = (
            tuple(v) if isinstance(v, list) else v for v in (data.get("mean"), data.get("std"))
        )
        return cls(mean=mean, std=std)


def to_model_input(
    images: torch.Tensor,
    norm: Normalization = Normalization(),
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 `(B, C, H, W)` -> float32 `(B, C, H, W)` in the model's input scale."""
    import torch  # here, so that the registry imports without PyTorch

    x = images.to(torch.float32).div_(255.0)
    if norm.enabled and isinstance(norm.mean, tuple):  # per channel: (1, C, 1, 1) tensors
        mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
    elif norm.enabled:
        x = x.sub_(norm.mean).div_(norm.std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
