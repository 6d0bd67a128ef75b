"""Small worked examples of convolution, max pooling and batch norm, written out step by step.

Each `explain_*` function returns the lines that `cnnlab explain conv|pool|batchnorm` prints.
The numbers come from the reference layers in `cnnlab.teach.layers`, run on a small seeded input of
whole numbers so the sums can be checked by hand; the last line says whether
`torch.nn.functional` gives the same result.

    cnnlab explain conv --size 4 --kernel 2
    >>> lines = explain_conv(size=4, kernel=2)  # the same, as a list of strings
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.teach import layers


def format_number(value: float) -> str:
    """Whole numbers without a decimal point, others to at most 4 decimals: 3.0 -> '3',
    0.5 -> '0.5', 2/3 -> '0.6667'."""
    value = float(value)
    if abs(value - round(value)) < 1e-9:
        return str(round(value))
    return f"{value:.4f}".rstrip("0")


def _factor(value: float) -> str:
    """A number inside a product, negatives in brackets: -1.0 -> '(-1)'."""
    text = format_number(value)
    return f"({text})" if text.startswith("-") else text


def format_matrix(matrix: torch.Tensor, indent: str = "  ") -> list[str]:
    """A 2-D tensor as right-aligned rows of numbers."""
    cells = [[format_number(v) for v in row] for row in matrix.tolist()]
    width = max(len(c) for row in cells for c in row)
    return [indent + " ".join(c.rjust(width) for c in row) for row in cells]


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> str:
    return "yes" if torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9) else "NO"


@dataclass(frozen=True)
class ConvExample:
    x: torch.Tensor  # (1, 1, size, size), whole numbers 0..9
    weight: torch.Tensor  # (1, 1, kernel, kernel), whole numbers -1..1
    bias: torch.Tensor  # (1,), a whole number -2..2
    padding: int
    stride: int


def conv_example(
    size: int = 5, kernel: int = 3, padding: int = 0, stride: int = 1, seed: int = 0
) -> ConvExample:
    """The seeded input, filter and bias that `explain_conv` works through (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 10, (1, 1, size, size), generator=gen).double()
    weight = torch.randint(-1, 2, (1, 1, kernel, kernel), generator=gen).double()
    bias = torch.randint(-2, 3, (1,), generator=gen).double()
    return ConvExample(x, weight, bias, padding, stride)


def explain_conv(
    size: int = 5, kernel: int = 3, padding: int = 0, stride: int = 1, seed: int = 0
) -> list[str]:
    """One input channel, one filter: every output value written out as the tutorial's sum."""
    ex = conv_example(size, kernel, padding, stride, seed)
    y = layers.conv2d(ex.x, ex.weight, ex.bias, stride=stride, padding=padding)  # (1, 1, H', W')
    out = layers.conv_output_size(size, kernel, padding, stride)
    x = layers.pad2d(ex.x, padding)[0, 0]  # (size + 2*padding, size + 2*padding)
    w, b = ex.weight[0, 0], ex.bias[0]
    last = kernel - 1
    row = "i+m" if stride == 1 else f"{stride}i+m"
    col = "j+n" if stride == 1 else f"{stride}j+n"

    lines = [
        f"Convolution by hand: a {size}x{size} input, one {kernel}x{kernel} filter, "
        f"padding {padding}, stride {stride}.",
        "Each output value is the weighted sum of the window the filter covers, plus the bias:",
        f"  y[i,j] = sum_m sum_n x[{row}, {col}] * w[m,n] + b    (m, n = 0..{last})",
        "",
        f"Input x ({size}x{size}):",
        *format_matrix(ex.x[0, 0]),
    ]
    if padding:
        lines += [
            f"Zero padding of {padding} on every side makes x {size + 2 * padding}x"
            f"{size + 2 * padding}; the indices below are into this padded x:",
            *format_matrix(x),
        ]
    lines += [
        f"Filter w ({kernel}x{kernel}):",
        *format_matrix(w),
        f"Bias b = {format_number(b)}",
        "",
        f"Output size: floor(({size} + 2*{padding} - {kernel}) / {stride}) + 1 = {out}, "
        f"so y is {out}x{out}.",
        "",
    ]
    for i in range(out):
        for j in range(out):
            cells = [
                (i * stride + m, j * stride + n, m, n) for m in range(kernel) for n in range(kernel)
            ]
            terms = " + ".join(f"{_factor(x[r, c])}*{_factor(w[m, n])}" for r, c, m, n in cells)
            value = f"y[{i},{j}] = {terms} + {_factor(b)} = {format_number(y[0, 0, i, j])}"
            if i == j == 0:
                symbols = [f"x[{r},{c}]*w[{m},{n}]" for r, c, m, n in cells]
                if len(symbols) > 4:  # the pattern is clear from the first two and the last
                    symbols = [*symbols[:2], "...", symbols[-1]]
                symbols = " + ".join(symbols)
                lines.append(f"y[0,0] = {symbols} + b")
                value = "       = " + value.split(" = ", 1)[1]
            lines.append(value)
    reference = F.conv2d(ex.x, ex.weight, ex.bias, stride=stride, padding=padding)
    lines += [
        "",
        f"Output y ({out}x{out}):",
        *format_matrix(y[0, 0]),
        "torch.nn.functional.conv2d on the same x, w and b gives the same y: "
        + _same(y, reference),
    ]
    return lines


def pool_example(size: int = 4, seed: int = 0) -> torch.Tensor:
    """The seeded input `explain_pool` works through: (1, 1, size, size), distinct whole numbers."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(size * size, generator=gen).double().reshape(1, 1, size, size)


def explain_pool(
    size: int = 4, kernel: int = 2, stride: int | None = None, seed: int = 0
) -> list[str]:
    """Max pooling: each output value is the largest number in its window."""
    stride = kernel if stride is None else stride
    x = pool_example(size, seed)
    y = layers.max_pool2d(x, kernel, stride)  # (1, 1, H', W')
    out = layers.pool_output_size(size, kernel, stride)
    overlap = "windows overlap" if stride < kernel else "windows do not overlap"
    lines = [
        f"Max pooling by hand: a {size}x{size} input, {kernel}x{kernel} windows, "
        f"stride {stride} ({overlap}).",
        f"Output size: floor(({size} - {kernel}) / {stride}) + 1 = {out}, so y is {out}x{out}.",
        "",
        f"Input x ({size}x{size}):",
        *format_matrix(x[0, 0]),
        "",
    ]
    for i in range(out):
        for j in range(out):
            top, left = i * stride, j * stride
            window = x[0, 0, top : top + kernel, left : left + kernel]
            values = ", ".join(format_number(v) for v in window.flatten().tolist())
            lines.append(
                f"y[{i},{j}] = max(x[{top}:{top + kernel}, {left}:{left + kernel}]) "
                f"= max({values}) = {format_number(y[0, 0, i, j])}"
            )
    reference = F.max_pool2d(x, kernel, stride)
    lines += [
        "",
        f"Output y ({out}x{out}):",
        *format_matrix(y[0, 0]),
        f"torch.nn.functional.max_pool2d gives the same y: {_same(y, reference)}",
    ]
    return lines


@dataclass(frozen=True)
class BatchNormExample:
    x: torch.Tensor  # (batch, channels, 1, 1), whole numbers 0..9
    gamma: torch.Tensor  # (channels,), multiples of 0.5 in 0.5..2
    beta: torch.Tensor  # (channels,), whole numbers -1..1


def batchnorm_example(batch: int = 4, channels: int = 2, seed: int = 0) -> BatchNormExample:
    """The seeded batch and affine parameters that `explain_batchnorm` works through."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 10, (batch, channels, 1, 1), generator=gen).double()
    gamma = torch.randint(1, 5, (channels,), generator=gen).double() / 2
    beta = torch.randint(-1, 2, (channels,), generator=gen).double()
    return BatchNormExample(x, gamma, beta)


def explain_batchnorm(
    batch: int = 4, channels: int = 2, seed: int = 0, momentum: float = 0.1, eps: float = 1e-5
) -> list[str]:
    """One training step (batch statistics, running estimates updated) against evaluation
    mode (running estimates), on the same input."""
    if batch < 2:
        raise ConfigError(f"batch norm in training mode needs a batch of 2 or more, got {batch}")
    ex = batchnorm_example(batch, channels, seed)
    x, gamma, beta = ex.x, ex.gamma, ex.beta
    running_mean = torch.zeros(channels, dtype=x.dtype)  # PyTorch's starting estimates
    running_var = torch.ones(channels, dtype=x.dtype)
    start_mean, start_var = running_mean.clone(), running_var.clone()
    y_train = layers.batch_norm(
        x, running_mean, running_var, gamma, beta, training=True, momentum=momentum, eps=eps
    )  # updates running_mean and running_var in place
    y_eval = layers.batch_norm(x, running_mean, running_var, gamma, beta, eps=eps)

    def vector(values: torch.Tensor) -> str:
        return "[" + ", ".join(format_number(v) for v in values.flatten().tolist()) + "]"

    keep = 1 - momentum
    lines = [
        f"Batch norm by hand: a batch of {batch} images with {channels} channels of 1x1, so "
        f"each channel has {batch} values.",
        f"gamma = {vector(gamma)}, beta = {vector(beta)}, eps = {eps:g}, momentum = {momentum:g}; "
        f"the running estimates start at mean {vector(start_mean)} and var {vector(start_var)}.",
        "",
        "Training mode: each channel is normalised with the batch's own mean and variance,",
        "and the running estimates move a step towards them.",
    ]
    for c in range(channels):
        values = x[:, c].flatten()
        n = values.numel()
        mean = values.mean()
        var = values.var(unbiased=False)
        unbiased = values.var(unbiased=True)
        x_hat = (values - mean) / torch.sqrt(var + eps)
        squares = " + ".join(f"({format_number(v)}-{_factor(mean)})^2" for v in values.tolist())
        lines += [
            f"channel {c}: x = {vector(values)}",
            f"  mean = ({' + '.join(format_number(v) for v in values.tolist())}) / {n} "
            f"= {format_number(mean)}",
            f"  var = ({squares}) / {n} = {format_number(var)}    (divide by n)",
            f"  x_hat = (x - {format_number(mean)}) / sqrt({format_number(var)} + {eps:g}) "
            f"= {vector(x_hat)}",
            f"  y = {format_number(gamma[c])} * x_hat + {_factor(beta[c])} "
            f"= {vector(y_train[:, c])}",
            f"  running_mean = {keep:g} * {format_number(start_mean[c])} + {momentum:g} * "
            f"{format_number(mean)} = {format_number(running_mean[c])}",
            f"  running_var = {keep:g} * {format_number(start_var[c])} + {momentum:g} * "
            f"{format_number(unbiased)} = {format_number(running_var[c])}    "
            f"(the unbiased variance, {format_number(var)} * {n}/{n - 1})",
        ]
    lines += [
        "",
        "Evaluation mode: the same x, normalised with the running estimates instead.",
    ]
    for c in range(channels):
        lines.append(
            f"channel {c}: y = {format_number(gamma[c])} * (x - {format_number(running_mean[c])}) "
            f"/ sqrt({format_number(running_var[c])} + {eps:g}) + {_factor(beta[c])} "
            f"= {vector(y_eval[:, c])}"
        )
    ref_mean, ref_var = start_mean.clone(), start_var.clone()
    ref_train = F.batch_norm(x, ref_mean, ref_var, gamma, beta, True, momentum, eps)
    ref_eval = F.batch_norm(x, ref_mean, ref_var, gamma, beta, False, momentum, eps)
    same = all(
        _same(ours, theirs) == "yes"
        for ours, theirs in [
            (y_train, ref_train),
            (y_eval, ref_eval),
            (running_mean, ref_mean),
            (running_var, ref_var),
        ]
    )
    difference = (y_train - y_eval).abs().max()
    lines += [
        "",
        f"Same input, different outputs: the modes differ by up to {format_number(difference)}.",
        "torch.nn.functional.batch_norm gives the same outputs and running estimates: "
        + ("yes" if same else "NO"),
    ]
    return lines
