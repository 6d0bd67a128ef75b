"""`cnnlab summary`, `params`, `shapes` and `explain`: the tutorial's arithmetic, computed.

cnnlab summary --model cnn --input 1x28x28
cnnlab params --linear 784 128 --conv 1 32 3
cnnlab shapes --size 28 --kernel 3 --padding 1 --stride 2 --pool 2
cnnlab explain conv
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cnnlab.choices import MAX_CLASSES, MODEL_NAMES
from cnnlab.cli.common import int_in, positive_int, print_table, seed_int
from cnnlab.errors import ConfigError

if TYPE_CHECKING:
    from cnnlab.teach.shapes import ShapesReport
    from cnnlab.teach.summary import ModelSummary

from cnnlab.teach.params import (
    RESOLUTIONS,
    FirstLayerComparison,
    LayerCount,
    compare_first_layers,
    count_layers,
)

EXAMPLE_SIDE = int_in(1, 16)  # a worked example is read line by line: a few hundred at most
EXAMPLE_KERNEL = int_in(1, 7)
EXAMPLE_PADDING = int_in(0, 3)
SUMMARY_VALUES = 1 << 24  # summary runs a real forward pass: batch x C x H x W input values


def register(subparsers) -> None:
    register_summary(subparsers)
    register_params(subparsers)
    register_shapes(subparsers)
    register_explain(subparsers)


def register_summary(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="a model's layers: output shapes, parameters, multiply-adds, memory",
        description="Run one forward pass of zeros through the model and list every layer it "
        "calls, like torchinfo or Keras's summary().",
    )
    p.add_argument("--model", default="cnn", help=f"one of {', '.join(MODEL_NAMES)} (default: cnn)")
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


def register_params(subparsers) -> None:
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


def register_shapes(subparsers) -> None:
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


def register_explain(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="a small worked example of conv, pool or batchnorm, step by step",
        description="Work a tiny example by hand with cnnlab.teach.layers, and check it against "
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
    from cnnlab.models import ModelConfig, create_model
    from cnnlab.teach.summary import format_shape, parse_shape, summarize

    input_shape = parse_shape(args.input)
    values = args.batch_size * input_shape[0] * input_shape[1] * input_shape[2]
    if values > SUMMARY_VALUES:
        raise ConfigError(
            f"--batch-size {args.batch_size} x --input {format_shape(input_shape)} is {values:,} "
            f"input values; summary runs a real forward pass, so at most {SUMMARY_VALUES:,}"
        )
    model = create_model(ModelConfig(args.model, input_shape, args.classes))
    report = summarize(model, input_shape, args.batch_size)
    print(
        f"Model {args.model}, input {format_shape(input_shape)}, {args.classes} classes: "
        f"one forward pass of zeros at batch {args.batch_size}, in evaluation mode."
    )
    print_summary(report, args.batch_size)
    return 0


def print_summary(report: ModelSummary, batch: int) -> None:
    from cnnlab.teach.summary import human_bytes

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
    if report.stages:
        print(f"Stages: {' -> '.join(report.stages)}")
    print(
        f"Parameters: {report.total_parameters:,} (trainable {report.trainable:,}, "
        f"non-trainable {report.non_trainable:,})"
    )
    if report.buffer_values:
        print(
            f"Buffers, not parameters: {report.buffer_values:,} values "
            f"({', '.join(report.buffer_kinds)})"
        )
    if report.unlisted_parameters:
        print(f"Parameters outside the listed layers: {report.unlisted_parameters:,}")
    for name in report.repeated_layers:
        calls = report.calls(name)
        print(f"{name} is called {calls} times; its parameters are counted on its first row.")
    print(
        f"Multiply-adds per forward pass at batch {batch}: {report.mult_adds:,}\n"
        "  (conv and linear without biases; batch norm 1 per value; pooling 0)"
    )
    print()
    print(f"Estimated memory at batch {batch}:")
    print_table(
        [[part, f"{n:,}", human_bytes(n)] for part, n in report.memory],
        ["memory", "bytes", "size"],
    )
    print(
        "Layer outputs: those of the rows above, for one forward pass. Functional steps such as\n"
        "relu are not included, and training keeps about as much again for the gradients."
    )


def run_params(args: argparse.Namespace) -> int:
    from cnnlab.teach.summary import parse_shape

    if args.layers:
        print_table([_count_row(c) for c in count_layers(args.layers)], COUNT_HEADER)
        return 0
    comparison = compare_first_layers(
        parse_shape(args.input), args.hidden, args.filters, args.kernel, args.sizes, args.channels
    )
    print_params(comparison)
    return 0


def print_params(c: FirstLayerComparison) -> None:
    from cnnlab.teach.summary import format_shape

    channels, height, width = c.image
    print(
        f"The first layer on a {channels}x{height}x{width} image "
        f"({c.inputs:,} values once flattened for the linear layer):"
    )
    print_table([_count_row(c.linear), _count_row(c.conv)], COUNT_HEADER)
    print(
        f"The linear layer has {c.ratio:,.1f} times as many parameters; each conv filter is "
        "reused at every position of the image."
    )
    print()
    big = c.largest.linear
    print(
        f"The same linear layer on a {format_shape(c.largest.image)} image: "
        f"{big.weights_formula()} weights + {big.biases:,} biases = {big.parameters:,} parameters."
    )
    print()
    print(
        f"As the image grows ({c.channels} channels; a linear layer to {c.hidden} units "
        f"against {c.filters} conv filters of {c.kernel}x{c.kernel}):"
    )
    rows = [
        [
            format_shape(row.image),
            f"{row.linear.weight_factors[0]:,}",
            f"{row.linear.parameters:,}",
            "" if growth is None else f"x{growth:.2f}",
            f"{row.conv.parameters:,}",
        ]
        for row, growth in zip(c.table, c.growth)
    ]
    print_table(rows, ["image", "inputs", "linear parameters", "growth", "conv parameters"])
    print(
        "The linear count grows with the number of pixels (the side squared); the conv count "
        "depends only on the channels and the kernel."
    )


COUNT_HEADER = ["layer", "weights", "biases", "parameters"]


def _count_row(count: LayerCount) -> list[str]:
    return [count.layer, count.weights_formula(), f"{count.biases:,}", f"{count.parameters:,}"]


def run_shapes(args: argparse.Namespace) -> int:
    from cnnlab.teach.shapes import work_out_shapes

    report = work_out_shapes(
        args.size,
        args.kernel,
        args.padding,
        args.stride,
        args.dilation,
        args.pool,
        args.pool_stride,
    )
    print_shapes(report)
    return 0


def print_shapes(r: ShapesReport) -> None:
    conv = r.conv
    print(f"Output size = {r.formula}")
    print(
        f"conv, kernel {conv.kernel}, padding {conv.padding}, stride {conv.stride}, "
        f"dilation {conv.dilation}:"
    )
    print(f"  {conv.substituted} = {conv.output}")
    check = f"F.conv2d gives {r.torch_conv_shape}"
    if r.pool is not None:
        print(f"max pool, window {r.pool.kernel}, stride {r.pool.stride}:")
        print(f"  {r.pool.substituted} = {r.pool.output}")
        check += f", then F.max_pool2d gives {r.torch_pool_shape}"
    print(" -> ".join(r.sizes))
    print(f"PyTorch, on a (1, 1, {conv.size}, {conv.size}) input: {check}")
    print()
    rows = [
        [n.padding, n.stride, f"{n.output}x{n.output}", "<- yours" if n.yours else ""]
        for n in r.nearby
    ]
    side, k = conv.size, conv.kernel
    print(f"Nearby settings for a {side}x{side} input and a {k}x{k} kernel:")
    print_table(rows, ["padding", "stride", "output", "note"])


def run_explain(args: argparse.Namespace) -> int:
    from cnnlab.teach import explain

    if args.topic == "conv":
        lines = explain.explain_conv(args.size, args.kernel, args.padding, args.stride, args.seed)
    elif args.topic == "pool":
        lines = explain.explain_pool(args.size, args.kernel, args.stride, args.seed)
    else:
        lines = explain.explain_batchnorm(args.batch_size, args.channels, args.seed)
    print("\n".join(lines))
    return 0
