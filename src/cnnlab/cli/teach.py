"""`cnnlab summary`, `params`, `shapes` and `explain`: the tutorial's arithmetic, computed.

cnnlab summary --model cnn --input 1x28x28
cnnlab params --linear 784 128 --conv 1 32 3
cnnlab shapes --size 28 --kernel 3 --padding 1 --stride 2 --pool 2
cnnlab explain conv
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cnnlab.cli.common import int_in, positive_int, print_table, seed_int
from cnnlab.errors import ConfigError
from cnnlab.models import MAX_CLASSES, ModelConfig, create_model, list_models
from cnnlab.teach import explain, layers
from cnnlab.teach.summary import (
    LayerCount,
    ModelSummary,
    conv2d_count,
    format_shape,
    linear_count,
    parse_shape,
    resolution_table,
    summarize,
)

RESOLUTIONS = (28, 56, 112, 224)
EXAMPLE_SIDE = int_in(1, 16)  # a worked example is read line by line: a few hundred at most
EXAMPLE_KERNEL = int_in(1, 7)
EXAMPLE_PADDING = int_in(0, 3)
SUMMARY_VALUES = 1 << 24  # summary runs a real forward pass: batch x C x H x W input values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="a model's layers: output shapes, parameters, multiply-adds, memory",
        description="Run one forward pass of zeros through the model and list every layer it "
        "calls, like torchinfo or Keras's summary().",
    )
    p.add_argument(
        "--model", default="cnn", help=f"one of {', '.join(list_models())} (default: cnn)"
    )
    p.add_argument(
        "--input", default="1x28x28", metavar="CxHxW", help="input shape (default: 1x28x28)"
    )
    p.add_argument(
        "--classes", type=int_in(1, MAX_CLASSES), default=10, help="output classes (default: 10)"
    )
    p.add_argument(
        "--batch-size",
        type=int_in(1, 4096),
        default=1,
        help="batch of the forward pass (default: 1)",
    )
    p.set_defaults(handler=run_summary)

    p = subparsers.add_parser(
        "params",
        help="parameter counts of fully-connected against convolutional layers",
        description="The tutorial's argument against MLPs for images, as arithmetic. With "
        "--linear or --conv, count just the layers given.",
    )
    p.add_argument(
        "--input",
        default="1x28x28",
        metavar="CxHxW",
        help="image for the first comparison (default: 1x28x28)",
    )
    p.add_argument(
        "--hidden", type=positive_int, default=128, help="units of the linear layer (default: 128)"
    )
    p.add_argument(
        "--filters", type=positive_int, default=32, help="filters of the conv layer (default: 32)"
    )
    p.add_argument("--kernel", type=positive_int, default=3, help="conv kernel size (default: 3)")
    p.add_argument(
        "--channels",
        type=positive_int,
        default=3,
        help="image channels in the table over sizes (default: 3)",
    )
    p.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=list(RESOLUTIONS),
        metavar="N",
        help=f"image sides in the table (default: {' '.join(map(str, RESOLUTIONS))})",
    )
    p.add_argument(
        "--linear",
        nargs=2,
        type=positive_int,
        action=_AppendLayer,
        dest="layers",
        metavar=("IN", "OUT"),
        help="count nn.Linear(IN, OUT); repeatable (default: none)",
    )
    p.add_argument(
        "--conv",
        nargs=3,
        type=positive_int,
        action=_AppendLayer,
        dest="layers",
        metavar=("IN", "OUT", "K"),
        help="count nn.Conv2d(IN, OUT, kernel_size=K); repeatable (default: none)",
    )
    p.set_defaults(handler=run_params, layers=None)

    p = subparsers.add_parser(
        "shapes",
        help="the output-size formula with your numbers substituted",
        description="Output size of a convolution (and optionally a max pool after it), with "
        "PyTorch's answer alongside.",
    )
    side = int_in(1, 1 << 20)  # shapes only: any size an image could have
    p.add_argument("--size", type=side, default=28, help="input side (default: 28)")
    p.add_argument("--kernel", type=side, default=3, help="kernel size (default: 3)")
    p.add_argument("--padding", type=int_in(0, 1 << 20), default=0, help="(default: 0)")
    p.add_argument("--stride", type=side, default=1, help="(default: 1)")
    p.add_argument("--dilation", type=side, default=1, help="(default: 1)")
    p.add_argument("--pool", type=side, help="then a max pool with this window (default: none)")
    p.add_argument("--pool-stride", type=side, help="stride of the pool (default: its window)")
    p.set_defaults(handler=run_shapes)

    p = subparsers.add_parser(
        "explain",
        help="a small worked example of conv, pool or batchnorm, step by step",
        description="Work a tiny example by hand with cnnlab.layers, and check it against "
        "torch.nn.functional.",
    )
    topics = p.add_subparsers(dest="topic", required=True)
    t = topics.add_parser("conv", help="each output value as the tutorial's sum")
    t.add_argument("--size", type=EXAMPLE_SIDE, default=5, help="input side, 1-16 (default: 5)")
    t.add_argument("--kernel", type=EXAMPLE_KERNEL, default=3, help="filter side, 1-7 (default: 3)")
    t.add_argument("--padding", type=EXAMPLE_PADDING, default=0, help="0-3 (default: 0)")
    t.add_argument("--stride", type=EXAMPLE_SIDE, default=1, help="1-16 (default: 1)")
    t.add_argument("--seed", type=seed_int, default=0, help="(default: 0)")
    t.set_defaults(handler=run_explain)
    t = topics.add_parser("pool", help="the max-pool windows")
    t.add_argument("--size", type=EXAMPLE_SIDE, default=4, help="input side, 1-16 (default: 4)")
    t.add_argument("--kernel", type=EXAMPLE_KERNEL, default=2, help="window side, 1-7 (default: 2)")
    t.add_argument("--stride", type=EXAMPLE_SIDE, help="1-16 (default: the window side)")
    t.add_argument("--seed", type=seed_int, default=0, help="(default: 0)")
    t.set_defaults(handler=run_explain)
    t = topics.add_parser("batchnorm", help="training mode against evaluation mode")
    t.add_argument("--batch-size", type=EXAMPLE_SIDE, default=4, help="1-16 (default: 4)")
    t.add_argument("--channels", type=int_in(1, 8), default=2, help="1-8 (default: 2)")
    t.add_argument("--seed", type=seed_int, default=0, help="(default: 0)")
    t.set_defaults(handler=run_explain)


class _AppendLayer(argparse.Action):
    """--linear and --conv append ('linear', [IN, OUT]) or ('conv', [IN, OUT, K]), in order."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = list(getattr(namespace, self.dest) or [])
        given.append((option_string.lstrip("-"), values))
        setattr(namespace, self.dest, given)


def run_summary(args: argparse.Namespace) -> int:
    input_shape = parse_shape(args.input)
    values = args.batch_size * input_shape[0] * input_shape[1] * input_shape[2]
    if values > SUMMARY_VALUES:
        raise ConfigError(
            f"--batch-size {args.batch_size} x --input {format_shape(input_shape)} is {values:,} "
            f"input values; summary runs a real forward pass, so at most {SUMMARY_VALUES:,}"
        )
    model = create_model(ModelConfig(args.model, input_shape, args.classes))
    report = summarize(model, input_shape, args.batch_size)
    batch = args.batch_size
    print(
        f"Model {args.model}, input {format_shape(input_shape)}, {args.classes} classes: "
        f"one forward pass of zeros at batch {batch}, in evaluation mode."
    )
    rows = [
        [
            row.name,
            row.kind,
            str(row.input_shape) if row.input_shape is not None else "-",
            ", ".join(str(s) for s in row.output_shapes) or "-",
            f"{row.parameters:,}",
            f"{row.mult_adds:,}",
        ]
        for row in report.rows
    ]
    print_table(rows, ["layer", "type", "input shape", "output shape", "parameters", "mult-adds"])
    print()
    stages = _stages(report)
    if stages:
        print(f"Stages: {stages}")
    print(
        f"Parameters: {report.total_parameters:,} (trainable {report.trainable:,}, "
        f"non-trainable {report.non_trainable:,})"
    )
    if report.buffer_values:
        print(
            f"Buffers, not parameters: {report.buffer_values:,} values "
            f"({', '.join(report.buffer_kinds)})"
        )
    unlisted = report.total_parameters - report.listed_parameters
    if unlisted:
        print(f"Parameters outside the listed layers: {unlisted:,}")
    for name in report.repeated_layers:
        calls = sum(row.name == name for row in report.rows)
        print(f"{name} is called {calls} times; its parameters are counted on its first row.")
    print(
        f"Multiply-adds per forward pass at batch {batch}: {report.mult_adds:,}\n"
        "  (conv and linear without biases; batch norm 1 per value; pooling 0)"
    )
    print()
    print(f"Estimated memory at batch {batch}:")
    memory = [
        ["input", report.input_bytes],
        ["layer outputs", report.activation_bytes],
        ["parameters", report.parameter_bytes],
        ["buffers", report.buffer_bytes],
        ["total", report.total_bytes],
    ]
    print_table(
        [[part, f"{n:,}", _human_bytes(n)] for part, n in memory], ["memory", "bytes", "size"]
    )
    print(
        "Layer outputs: those of the rows above, for one forward pass. Functional steps such as\n"
        "relu are not included, and training keeps about as much again for the gradients."
    )
    return 0


def _stages(report: ModelSummary) -> str:
    """'28x28 -> 14x14 -> 7x7 -> flatten to 3136 (input of fc)': the spatial sizes in order."""
    stages = []
    if len(report.input_shape) == 4:
        stages.append(format_shape(report.input_shape[2:]))
    for n, row in enumerate(report.rows):
        if row.kind == "flatten":
            following = report.rows[n + 1].name if n + 1 < len(report.rows) else "the next step"
            stages.append(f"flatten to {row.output_shapes[0][1]} (input of {following})")
            continue
        for shape in row.output_shapes:
            size = format_shape(shape[2:])
            if len(shape) == 4 and (not stages or stages[-1] != size):
                stages.append(size)
    return " -> ".join(stages)


def _human_bytes(n: int) -> str:
    """1552 -> '1.5 KiB'; below 1 KiB, whole bytes."""
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def run_params(args: argparse.Namespace) -> int:
    header = ["layer", "weights", "biases", "parameters"]
    if args.layers:
        counts = [
            linear_count(*values) if kind == "linear" else conv2d_count(*values)
            for kind, values in args.layers
        ]
        print_table([_count_row(c) for c in counts], header)
        return 0

    channels, height, width = parse_shape(args.input)
    inputs = channels * height * width
    linear = linear_count(inputs, args.hidden)
    conv = conv2d_count(channels, args.filters, args.kernel)
    print(
        f"The first layer on a {channels}x{height}x{width} image "
        f"({inputs:,} values once flattened for the linear layer):"
    )
    print_table([_count_row(linear), _count_row(conv)], header)
    print(
        f"The linear layer has {linear.parameters / conv.parameters:,.1f} times as many "
        "parameters; each conv filter is reused at every position of the image."
    )
    print()

    table = resolution_table(args.sizes, args.channels, args.hidden, args.filters, args.kernel)
    largest = max(table, key=lambda row: row.image[1])
    big = largest.linear
    print(
        f"The same linear layer on a {format_shape(largest.image)} image: "
        f"{big.weights_formula()} weights + {big.biases:,} biases = {big.parameters:,} parameters."
    )
    print()
    print(
        f"As the image grows ({args.channels} channels; a linear layer to {args.hidden} units "
        f"against {args.filters} conv filters of {args.kernel}x{args.kernel}):"
    )
    rows, previous = [], None
    for row in table:
        growth = ""
        if previous is not None:
            growth = f"x{row.linear.parameters / previous.linear.parameters:.2f}"
        rows.append(
            [
                format_shape(row.image),
                f"{row.linear.weight_factors[0]:,}",
                f"{row.linear.parameters:,}",
                growth,
                f"{row.conv.parameters:,}",
            ]
        )
        previous = row
    print_table(rows, ["image", "inputs", "linear parameters", "growth", "conv parameters"])
    print(
        "The linear count grows with the number of pixels (the side squared); the conv count "
        "depends only on the channels and the kernel."
    )
    return 0


def _count_row(count: LayerCount) -> list[str]:
    return [count.layer, count.weights_formula(), f"{count.biases:,}", f"{count.parameters:,}"]


def run_shapes(args: argparse.Namespace) -> int:
    size, kernel, padding, stride, dilation = (
        args.size,
        args.kernel,
        args.padding,
        args.stride,
        args.dilation,
    )
    out = layers.conv_output_size(size, kernel, padding, stride, dilation)
    pool_stride = args.pool_stride or args.pool
    pooled = layers.pool_output_size(out, args.pool, pool_stride) if args.pool else None

    print("Output size = floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1")
    print(f"conv, kernel {kernel}, padding {padding}, stride {stride}, dilation {dilation}:")
    print(f"  {_substituted(size, kernel, padding, stride, dilation)} = {out}")
    sizes = [f"{size}x{size}", "conv", f"{out}x{out}"]
    x = torch.empty(1, 1, size, size, device="meta")  # shapes only: nothing is computed
    weight = torch.empty(1, 1, kernel, kernel, device="meta")
    y = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)
    check = f"F.conv2d gives {tuple(y.shape)}"
    if pooled is not None:
        print(f"max pool, window {args.pool}, stride {pool_stride}:")
        print(f"  {_substituted(out, args.pool, 0, pool_stride, 1)} = {pooled}")
        sizes += ["max pool", f"{pooled}x{pooled}"]
        check += f", then F.max_pool2d gives {tuple(F.max_pool2d(y, args.pool, pool_stride).shape)}"
    print(" -> ".join(sizes))
    print(f"PyTorch, on a (1, 1, {size}, {size}) input: {check}")
    print()

    same = dilation * (kernel - 1) // 2
    rows = []
    for pad in sorted({0, same, padding}):
        for step in sorted({1, 2, stride}):
            if dilation * (kernel - 1) + 1 > size + 2 * pad:
                continue
            result = layers.conv_output_size(size, kernel, pad, step, dilation)
            mark = "<- yours" if (pad, step) == (padding, stride) else ""
            rows.append([pad, step, f"{result}x{result}", mark])
    print(f"Nearby settings for a {size}x{size} input and a {kernel}x{kernel} kernel:")
    print_table(rows, ["padding", "stride", "output", "note"])
    return 0


def _substituted(size: int, kernel: int, padding: int, stride: int, dilation: int) -> str:
    """The formula with the numbers in: 'floor((28 + 2*1 - 1*(3 - 1) - 1) / 2) + 1
    = floor(27 / 2) + 1'."""
    top = size + 2 * padding - dilation * (kernel - 1) - 1
    return (
        f"floor(({size} + 2*{padding} - {dilation}*({kernel} - 1) - 1) / {stride}) + 1"
        f" = floor({top} / {stride}) + 1"
    )


def run_explain(args: argparse.Namespace) -> int:
    if args.topic == "conv":
        lines = explain.explain_conv(args.size, args.kernel, args.padding, args.stride, args.seed)
    elif args.topic == "pool":
        lines = explain.explain_pool(args.size, args.kernel, args.stride, args.seed)
    else:
        lines = explain.explain_batchnorm(args.batch_size, args.channels, args.seed)
    print("\n".join(lines))
    return 0
