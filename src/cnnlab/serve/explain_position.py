"""One value of one feature map, written out as the tutorial's sum with its numbers.

For a conv layer's output channel o at position (i, j) the tutorial's formula

    y[i, j] = sum_m sum_n x[i + m, j + n] * w[m, n] + b

(x is the input with its border of zeros) is computed by the from-scratch reference layer
`cnnlab.layers.conv2d` on the window under the filter, one input channel at a time, and checked
against the model's own conv output at that position, captured by a forward hook before batch
norm. The model is run on a private copy, so the hook sees this request's input only.

    >>> e = explain_position(model, x, "conv1", channel=3, row=10, col=12)
    >>> e.reference, e.model_value, e.matches
    (0.4127, 0.4127, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import conv_layer_names
from cnnlab.teach.layers import conv2d, pad2d

TOLERANCE = 1e-4

Grid = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class ChannelTerm:
    """One input channel's share of the sum: its window, its 3x3 (kH x kW) weights, their sum."""

    channel: int  # input channel c
    window: Grid  # x[c, i*s + m*d - p, j*s + n*d - p] for each (m, n); 0 in the padding
    weights: Grid  # w[o, c, m, n]
    partial_sum: float  # sum_m sum_n window * weights


@dataclass(frozen=True)
class ConvExplanation:
    layer: str
    channel: int  # output channel o: which filter, which feature map
    row: int
    col: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    input_shape: tuple[int, int, int]  # (C, H, W) that the layer received
    input_rows: tuple[int, ...]  # the input rows under the filter (-1 or H: padding)
    input_cols: tuple[int, ...]
    terms: tuple[ChannelTerm, ...]
    bias: float
    reference: float  # cnnlab.layers.conv2d at (row, col)
    model_value: float  # the model's conv output at (row, col), before batch norm

    @property
    def difference(self) -> float:
        return abs(self.reference - self.model_value)

    @property
    def matches(self) -> bool:
        return self.difference <= TOLERANCE

    @property
    def in_padding(self) -> tuple[tuple[bool, ...], ...]:
        """True where the filter lies on the border of zeros rather than on the input."""
        _, height, width = self.input_shape
        return tuple(
            tuple(not (0 <= r < height and 0 <= c < width) for c in self.input_cols)
            for r in self.input_rows
        )

    def formula(self) -> list[str]:
        """The sum as lines of text: the general form, then with this position's numbers."""
        i, j = self.row, self.col
        lead = f"y[{i},{j}] = "
        indent = " " * (len(lead) - 2)
        general = "y[i,j] = sum_m sum_n x[i+m, j+n] * w[m,n] + b"
        if any(self.padding):
            rows, cols = self.padding
            wide = f"{rows}" if rows == cols else f"{rows} (rows) and {cols} (columns)"
            lines = [general, f"(x: the input padded with zeros, {wide} wide)"]
        else:
            lines = [general]
        if len(self.terms) == 1:
            term = self.terms[0]  # one line per filter row m
            for m, (xs, ws) in enumerate(zip(term.window, term.weights)):
                products = " + ".join(f"{x:.3f}\u00d7{w:.3f}" for x, w in zip(xs, ws))
                products = products.replace("-", "\u2212")  # a minus sign, not a hyphen
                lines.append((lead if m == 0 else f"{indent}+ ") + products)
            lines.append(f"{indent}+ {_num(self.bias)}")
            lines.append(f"{indent}= {_num(term.partial_sum)} + {_num(self.bias)}")
        else:
            lines.append(f"{lead}sum_c sum_m sum_n x_c[{i}+m, {j}+n] * w_c[m,n] + b")
            lines.append(f"(c: the {len(self.terms)} input channels; one share per channel)")
            sums = [_num(t.partial_sum) for t in self.terms] + [_num(self.bias)]
            for start in range(0, len(sums), 6):  # six shares a line
                lines.append(
                    f"{indent}{'=' if start == 0 else '+'} " + " + ".join(sums[start : start + 6])
                )
        model = f"(the model computed {self.model_value:.4f})"
        lines.append(f"{indent}= {self.reference:.4f}   {model}")
        return lines


def _num(value: float) -> str:
    """3 decimals, negative numbers in brackets so that '+ (-0.081)' reads as a sum."""
    text = f"{value:.3f}"
    return f"({text})" if text.startswith("-") else text


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The layer's zero padding as (rows, columns); ConfigError where it is not plain zeros."""
    if conv.padding_mode != "zeros":
        raise ConfigError(f"explain needs zero padding; this layer pads with {conv.padding_mode}")
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in totals):
            raise ConfigError("explain needs the same padding on both sides of the input")
        return totals[0] // 2, totals[1] // 2
    return _pair(conv.padding)


def find_conv(model: nn.Module, layer: str) -> nn.Conv2d:
    names = conv_layer_names(model)
    if layer not in names:
        raise ConfigError(
            f"unknown conv layer {layer!r}; this model's conv layers: {', '.join(names) or 'none'}"
        )
    return model.get_submodule(layer)


@torch.no_grad()
def layer_input_output(
    model: nn.Module, conv: nn.Conv2d, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on x and return what `conv` received and produced (first call), as float."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, args, output):
        if "input" not in seen:
            seen["input"] = args[0].detach().float().cpu().clone()
            seen["output"] = output.detach().float().cpu().clone()

    handle = conv.register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return seen["input"], seen["output"]


def _grid(values: torch.Tensor) -> Grid:
    return tuple(tuple(float(v) for v in row) for row in values)


def explain_position(
    model: nn.Module, x: torch.Tensor, layer: str, channel: int, row: int, col: int
) -> ConvExplanation:
    """Explain output (channel, row, col) of conv `layer` for the input x (1, C, H, W).

    `model` must be in eval mode and used by this caller alone (a hook is added for one pass).
    Raises ConfigError for an unknown layer or a position outside the feature map.
    """
    conv = find_conv(model, layer)
    padding = conv_padding(conv)
    layer_in, layer_out = layer_input_output(model, conv, x)  # (1, C_in, H, W), (1, O, H', W')
    out_channels, out_h, out_w = layer_out.shape[1:]
    for name, value, limit in (
        ("channel", channel, out_channels),
        ("row", row, out_h),
        ("col", col, out_w),
    ):
        if not 0 <= value < limit:
            raise ConfigError(f"{name} {value} is outside {layer}'s output (0..{limit - 1})")

    weight = conv.weight.detach().double().cpu()  # (O, C_in / groups, kH, kW)
    bias = conv.bias.detach().double().cpu() if conv.bias is not None else None
    k_h, k_w = conv.kernel_size
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    group_size = weight.shape[1]
    first = (channel // (out_channels // conv.groups)) * group_size  # the group's input channels
    inputs = layer_in[0, first : first + group_size].double()  # (C_g, H, W)

    top, left = row * s_h, col * s_w  # in padded coordinates
    span_h, span_w = d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1
    window = pad2d(inputs, padding)[:, top : top + span_h, left : left + span_w]  # (C_g, span)
    filt = weight[channel : channel + 1]  # (1, C_g, kH, kW)
    b = bias[channel : channel + 1] if bias is not None else None
    dil = (d_h, d_w)
    reference = conv2d(window[None], filt, b, dilation=dil)  # (1, 1, 1, 1)
    terms = tuple(
        ChannelTerm(
            channel=first + c,
            window=_grid(window[c, ::d_h, ::d_w]),
            weights=_grid(filt[0, c]),
            partial_sum=float(conv2d(window[None, c : c + 1], filt[:, c : c + 1], dilation=dil)),
        )
        for c in range(group_size)
    )
    return ConvExplanation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        kernel=(k_h, k_w),
        stride=(s_h, s_w),
        padding=padding,
        dilation=(d_h, d_w),
        input_shape=tuple(layer_in.shape[1:]),
        input_rows=tuple(top - padding[0] + m * d_h for m in range(k_h)),
        input_cols=tuple(left - padding[1] + n * d_w for n in range(k_w)),
        terms=terms,
        bias=float(b[0]) if b is not None else 0.0,
        reference=float(reference),
        model_value=float(layer_out[0, channel, row, col]),
    )
