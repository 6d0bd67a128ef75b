"""Output sizes of a convolution (and a max pool after it), worked out with the numbers in.

`work_out_shapes` returns the formula with your numbers substituted, PyTorch's own answer and the
sizes of nearby settings, as data (`cnnlab shapes` prints it):

    >>> shapes = work_out_shapes(28, 3, padding=1, stride=2, pool=2)
    >>> shapes.conv.substituted
    'floor((28 + 2*1 - 1*(3 - 1) - 1) / 2) + 1 = floor(27 / 2) + 1'
    >>> shapes.conv.output, shapes.pool.output, shapes.torch_pool_shape
    (14, 7, (1, 1, 7, 7))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.teach import layers

FORMULA = "floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1"


@dataclass(frozen=True)
class SizeStep:
    """One layer's output side along one dimension, by `FORMULA`."""

    kind: str  # "conv" or "max pool"
    size: int  # the input side
    kernel: int
    padding: int
    stride: int
    dilation: int
    output: int

    @property
    def substituted(self) -> str:
        """The formula with the numbers in: 'floor((28 + 2*1 - 1*(3 - 1) - 1) / 2) + 1
        = floor(27 / 2) + 1'."""
        top = self.size + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        return (
            f"floor(({self.size} + 2*{self.padding} - {self.dilation}*({self.kernel} - 1) - 1) "
            f"/ {self.stride}) + 1 = floor({top} / {self.stride}) + 1"
        )


@dataclass(frozen=True)
class NearbySetting:
    padding: int
    stride: int
    output: int
    yours: bool  # the setting asked about


@dataclass(frozen=True)
class ShapesReport:
    conv: SizeStep
    pool: SizeStep | None  # a max pool after the convolution, if asked for
    torch_conv_shape: tuple[int, ...]  # F.conv2d's output on a (1, 1, size, size) input
    torch_pool_shape: tuple[int, ...] | None  # then F.max_pool2d's
    nearby: tuple[NearbySetting, ...]  # padding 0, "same" and yours x stride 1, 2 and yours
    formula: str = FORMULA

    @property
    def sizes(self) -> tuple[str, ...]:
        """('28x28', 'conv', '14x14', 'max pool', '7x7'): the image through the layers."""
        steps = [self.conv] + ([self.pool] if self.pool else [])
        path = [f"{self.conv.size}x{self.conv.size}"]
        for step in steps:
            path += [step.kind, f"{step.output}x{step.output}"]
        return tuple(path)


def work_out_shapes(
    size: int,
    kernel: int,
    padding: int = 0,
    stride: int = 1,
    dilation: int = 1,
    pool: int | None = None,
    pool_stride: int | None = None,
) -> ShapesReport:
    """The output side of conv(kernel, padding, stride, dilation), then of a max pool of window
    `pool` (stride: `pool_stride`, else the window), checked against PyTorch's shapes.

    Raises ConfigError when the kernel does not fit the padded input.
    """
    out = layers.conv_output_size(size, kernel, padding, stride, dilation)
    conv = SizeStep("conv", size, kernel, padding, stride, dilation, out)
    x = torch.empty(1, 1, size, size, device="meta")  # shapes only: nothing is computed
    weight = torch.empty(1, 1, kernel, kernel, device="meta")
    y = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)
    pool_step, pool_shape = None, None
    if pool:
        pool_stride = pool_stride or pool
        pooled = layers.pool_output_size(out, pool, pool_stride)
        pool_step = SizeStep("max pool", out, pool, 0, pool_stride, 1, pooled)
        pool_shape = tuple(F.max_pool2d(y, pool, pool_stride).shape)
    return ShapesReport(conv, pool_step, tuple(y.shape), pool_shape, nearby_settings(conv))


def nearby_settings(conv: SizeStep) -> tuple[NearbySetting, ...]:
    """Output sides for padding 0, "same" padding and `conv`'s, by stride 1, 2 and `conv`'s;
    settings whose kernel does not fit are left out."""
    same = conv.dilation * (conv.kernel - 1) // 2
    rows = []
    for pad in sorted({0, same, conv.padding}):
        for step in sorted({1, 2, conv.stride}):
            if conv.dilation * (conv.kernel - 1) + 1 > conv.size + 2 * pad:
                continue
            output = layers.conv_output_size(conv.size, conv.kernel, pad, step, conv.dilation)
            rows.append(
                NearbySetting(pad, step, output, (pad, step) == (conv.padding, conv.stride))
            )
    return tuple(rows)
