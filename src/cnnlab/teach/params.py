"""Parameter counts as arithmetic: the tutorial's case against linear layers for images.

A linear layer's weights grow with the pixel count; a convolution's depend only on its channels
and kernel. `compare_first_layers` returns the whole argument as data (`cnnlab params` prints it):

    >>> linear_count(784, 128).parameters, conv2d_count(1, 32, 3).parameters
    (100480, 320)
    >>> comparison = compare_first_layers((1, 28, 28))
    >>> round(comparison.ratio, 1), comparison.largest.linear.parameters
    (314.0, 19267712)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RESOLUTIONS = (28, 56, 112, 224)


@dataclass(frozen=True)
class LayerCount:
    """A layer's parameters as arithmetic: weights = product of `weight_factors`, plus biases."""

    layer: str  # how PyTorch spells it, e.g. 'nn.Linear(784, 128)'
    weight_factors: tuple[int, ...]
    biases: int

    @property
    def weights(self) -> int:
        return math.prod(self.weight_factors)

    @property
    def parameters(self) -> int:
        return self.weights + self.biases

    def weights_formula(self) -> str:
        """'784 x 128 = 100,352'."""
        factors = " x ".join(f"{f:,}" for f in self.weight_factors)
        return f"{factors} = {self.weights:,}"


def linear_count(in_features: int, out_features: int, bias: bool = True) -> LayerCount:
    """nn.Linear: one weight per (input, output) pair, one bias per output."""
    return LayerCount(
        f"nn.Linear({in_features}, {out_features})",
        (in_features, out_features),
        out_features if bias else 0,
    )


def conv2d_count(
    in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], bias: bool = True
) -> LayerCount:
    """nn.Conv2d: each of the out_channels filters has in_channels x kH x kW weights and a
    bias, whatever the size of the image it slides over."""
    k_h, k_w = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    kernel = k_h if k_h == k_w else (k_h, k_w)
    return LayerCount(
        f"nn.Conv2d({in_channels}, {out_channels}, kernel_size={kernel})",
        (out_channels, in_channels, k_h, k_w),
        out_channels if bias else 0,
    )


@dataclass(frozen=True)
class ResolutionRow:
    """The same first layer, fully connected and convolutional, on one image size."""

    image: tuple[int, int, int]  # (C, H, W)
    linear: LayerCount
    conv: LayerCount


def resolution_table(
    sizes: Sequence[int], channels: int = 3, hidden: int = 128, filters: int = 32, kernel: int = 3
) -> list[ResolutionRow]:
    """A linear layer to `hidden` units and a conv layer of `filters` filters, per image side.

    The linear layer's weights grow with the pixel count (the side squared); the conv layer's
    count depends only on the channels and the kernel.
    """
    return [
        ResolutionRow(
            (channels, size, size),
            linear_count(channels * size * size, hidden),
            conv2d_count(channels, filters, kernel),
        )
        for size in sizes
    ]


def count_layers(layers: Sequence[tuple[str, Sequence[int]]]) -> tuple[LayerCount, ...]:
    """('linear', (IN, OUT)) and ('conv', (IN, OUT, K)) specs -> their counts, in order."""
    builders = {"linear": linear_count, "conv": conv2d_count}
    return tuple(builders[kind](*values) for kind, values in layers)


@dataclass(frozen=True)
class FirstLayerComparison:
    """A first layer on one image, fully connected and convolutional, then over image sizes."""

    image: tuple[int, int, int]  # (C, H, W)
    linear: LayerCount
    conv: LayerCount
    table: tuple[ResolutionRow, ...]  # the same two layers on growing images
    hidden: int
    filters: int
    kernel: int
    channels: int  # of the images in `table`

    @property
    def inputs(self) -> int:
        """The image's values once flattened: the linear layer's inputs."""
        return math.prod(self.image)

    @property
    def ratio(self) -> float:
        """How many times the conv layer's parameters the linear layer has."""
        return self.linear.parameters / self.conv.parameters

    @property
    def largest(self) -> ResolutionRow:
        return max(self.table, key=lambda row: row.image[1])

    @property
    def growth(self) -> tuple[float | None, ...]:
        """Each table row's linear parameters over the previous row's (None for the first)."""
        linear = [row.linear.parameters for row in self.table]
        return (None, *(b / a for a, b in zip(linear, linear[1:])))


def compare_first_layers(
    image: tuple[int, int, int],
    hidden: int = 128,
    filters: int = 32,
    kernel: int = 3,
    sizes: Sequence[int] = RESOLUTIONS,
    channels: int = 3,
) -> FirstLayerComparison:
    """nn.Linear(C*H*W, hidden) against nn.Conv2d(C, filters, kernel) on `image`, then on square
    images of `channels` channels and each side in `sizes`."""
    return FirstLayerComparison(
        image=image,
        linear=linear_count(math.prod(image), hidden),
        conv=conv2d_count(image[0], filters, kernel),
        table=tuple(resolution_table(sizes, channels, hidden, filters, kernel)),
        hidden=hidden,
        filters=filters,
        kernel=kernel,
        channels=channels,
    )
