"""From-scratch reference versions of the tutorial's layers, for reading rather than for speed.

Each function does what its `torch.nn.functional` namesake does, written as the tutorial's
formulas with plain loops, so the arithmetic can be followed line by line. The tests compare them
with PyTorch on random inputs of many shapes. They are slow: train with `torch.nn`, read these.

    >>> x = torch.randn(1, 1, 28, 28)
    >>> w = torch.randn(32, 1, 3, 3)
    >>> conv2d(x, w, padding=1).shape
    torch.Size([1, 32, 28, 28])
    >>> conv_output_size(28, kernel=3, padding=1, stride=2)
    14
"""

from __future__ import annotations

import math

import torch

from cnnlab.errors import ConfigError


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """`3` -> (3, 3); `(3, 5)` -> (3, 5): one value for height and width, or one each."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def conv_output_size(
    size: int, kernel: int, padding: int = 0, stride: int = 1, dilation: int = 1
) -> int:
    """Output length of a convolution along one spatial dimension.

    The filter spans `dilation * (kernel - 1) + 1` pixels; it fits at
    `floor((size + 2*padding - span) / stride) + 1` positions of the padded input:

        >>> conv_output_size(28, 3, padding=1)  # padding 1 keeps the size
        28
        >>> conv_output_size(28, 3)  # no padding: one pixel lost on each side
        26

    Raises ConfigError when the filter does not fit the padded input at all.
    """
    _check_arguments(size=size, kernel=kernel, stride=stride, dilation=dilation)
    if padding < 0:
        raise ConfigError(f"padding must be 0 or more, got {padding}")
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        raise ConfigError(
            f"a kernel of {kernel} with dilation {dilation} spans {span} pixels, more than the "
            f"padded input ({size} + 2*{padding} = {size + 2 * padding})"
        )
    return (size + 2 * padding - span) // stride + 1


def pool_output_size(
    size: int,
    kernel: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a max pool along one spatial dimension, as `nn.MaxPool2d` computes it.

    The same formula as `conv_output_size`, except that the stride defaults to the kernel size
    (non-overlapping windows), so a 2x2 pool halves the size:

        >>> pool_output_size(28, 2)
        14

    With `ceil_mode` the division rounds up, but a window must still start inside the input or
    its left padding. PyTorch allows at most half the kernel size as padding; so does this.
    """
    stride = kernel if stride is None else stride
    _check_arguments(size=size, kernel=kernel, stride=stride, dilation=dilation)
    span = dilation * (kernel - 1) + 1
    if not 0 <= padding <= kernel // 2:
        raise ConfigError(
            f"pool padding must be between 0 and half the window ({kernel} // 2 = "
            f"{kernel // 2}), got {padding}"
        )
    if span > size + 2 * padding:
        raise ConfigError(
            f"a pool window of {kernel} with dilation {dilation} spans {span} pixels, more than "
            f"the padded input ({size} + 2*{padding} = {size + 2 * padding})"
        )
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * padding - span) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding: PyTorch drops it
    return out


def _check_arguments(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value}")


def pad2d(x: torch.Tensor, padding: int | tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """Surround the last two dimensions with a border of `value` (zeros by default)."""
    pad_h, pad_w = _pair(padding)
    *lead, height, width = x.shape
    out = x.new_full((*lead, height + 2 * pad_h, width + 2 * pad_w), value)
    out[..., pad_h : pad_h + height, pad_w : pad_w + width] = x
    return out


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """2-D convolution (strictly, cross-correlation, as in PyTorch), one output value at a time.

    x: (B, C_in, H, W); weight: (C_out, C_in, kH, kW); bias: (C_out,) or None. Each output value
    is the tutorial's sum, extended over the input channels c, the stride s and the dilation d:

        y[b, o, i, j] = sum_c sum_m sum_n x[b, c, i*s + m*d, j*s + n*d] * w[o, c, m, n] + bias[o]

    where x is the zero-padded input. Matches `torch.nn.functional.conv2d(x, weight, bias,
    stride=stride, padding=padding, dilation=dilation)`; slow, for teaching only.
    """
    stride_h, stride_w = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    batch, in_channels, height, width = x.shape
    out_channels, weight_channels, k_h, k_w = weight.shape
    if weight_channels != in_channels:
        raise ValueError(f"weight expects {weight_channels} input channels, x has {in_channels}")
    pad_h, pad_w = _pair(padding)
    out_h = conv_output_size(height, k_h, pad_h, stride_h, dil_h)
    out_w = conv_output_size(width, k_w, pad_w, stride_w, dil_w)

    padded = pad2d(x, (pad_h, pad_w))  # (B, C_in, H + 2*pad_h, W + 2*pad_w)
    span_h, span_w = dil_h * (k_h - 1) + 1, dil_w * (k_w - 1) + 1
    y = x.new_zeros(batch, out_channels, out_h, out_w)
    for b in range(batch):
        for o in range(out_channels):
            for i in range(out_h):
                for j in range(out_w):
                    top, left = i * stride_h, j * stride_w
                    # x[b, c, i*s + m*d, j*s + n*d] for every c, m, n: (C_in, kH, kW)
                    patch = padded[b, :, top : top + span_h : dil_h, left : left + span_w : dil_w]
                    y[b, o, i, j] = (patch * weight[o]).sum()  # sum over c, m and n
                    if bias is not None:
                        y[b, o, i, j] += bias[o]
    return y


def max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """Max pooling: the largest value in each window, for every channel separately.

    x: (B, C, H, W) -> (B, C, H_out, W_out). The stride defaults to the window size, so windows
    do not overlap; padding counts as minus infinity, so it is never the maximum. Matches
    `torch.nn.functional.max_pool2d`; slow, for teaching only.
    """
    k_h, k_w = _pair(kernel_size)
    stride_h, stride_w = _pair(kernel_size if stride is None else stride)
    pad_h, pad_w = _pair(padding)
    dil_h, dil_w = _pair(dilation)
    batch, channels, height, width = x.shape
    out_h = pool_output_size(height, k_h, stride_h, pad_h, dil_h, ceil_mode)
    out_w = pool_output_size(width, k_w, stride_w, pad_w, dil_w, ceil_mode)

    span_h, span_w = dil_h * (k_h - 1) + 1, dil_w * (k_w - 1) + 1
    # pad with -inf: pad_h rows on top, and at the bottom as many as the last window needs
    # (ceil_mode can let it run past the usual padding); the same for columns
    bottom = max(pad_h, (out_h - 1) * stride_h + span_h - height - pad_h)
    right = max(pad_w, (out_w - 1) * stride_w + span_w - width - pad_w)
    padded = x.new_full(
        (batch, channels, pad_h + height + bottom, pad_w + width + right), -math.inf
    )
    padded[:, :, pad_h : pad_h + height, pad_w : pad_w + width] = x

    y = x.new_empty(batch, channels, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride_h, j * stride_w
            window = padded[:, :, top : top + span_h : dil_h, left : left + span_w : dil_w]
            y[:, :, i, j] = window.amax(dim=(2, 3))  # (B, C): the largest value per channel
    return y


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalisation per channel: the tutorial's x_hat = (x - mean) / sqrt(var + eps),
    then y = gamma * x_hat + beta (gamma is `weight`, beta is `bias`).

    x: (B, C) or (B, C, H, W); each channel c is normalised over every value it has in the
    batch (all of B, H and W). In training the mean and variance are the batch's own, and the
    running estimates are updated in place, as `torch.nn.functional.batch_norm` does:

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)

    The batch is normalised with its biased variance (divide by n), but the running estimate
    stores the unbiased one (divide by n - 1). In evaluation the running estimates are used
    instead, so the output no longer depends on the rest of the batch. Slow, for teaching only.
    """
    channels = x.shape[1]
    y = torch.empty_like(x)
    for c in range(channels):
        values = x[:, c]  # (B,) or (B, H, W): every value of channel c in the batch
        n = values.numel()
        if training:
            if n < 2:
                raise ValueError(f"batch norm needs more than 1 value per channel, got {n}")
            mean = values.sum() / n
            var = ((values - mean) ** 2).sum() / n  # biased: used to normalise
            if running_mean is not None:
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
            if running_var is not None:
                unbiased = var * n / (n - 1)
                running_var[c] = (1 - momentum) * running_var[c] + momentum * unbiased
        else:
            if running_mean is None or running_var is None:
                raise ValueError("evaluation mode needs the running mean and variance")
            mean, var = running_mean[c], running_var[c]
        x_hat = (values - mean) / torch.sqrt(var + eps)
        gamma = weight[c] if weight is not None else 1.0
        beta = bias[c] if bias is not None else 0.0
        y[:, c] = gamma * x_hat + beta
    return y
