"""cnnlab.summary: the layer table against real forward passes, and the parameter arithmetic
against PyTorch's own layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, create_model, list_models
from cnnlab.teach.params import (
    compare_first_layers,
    conv2d_count,
    count_layers,
    linear_count,
    resolution_table,
)
from cnnlab.teach.shapes import work_out_shapes
from cnnlab.teach.summary import human_bytes, parse_shape, summarize

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 5)]


def torch_flops(model: nn.Module, x: torch.Tensor) -> int:
    """PyTorch's own FLOP count (2 per multiply-add of conv and matmul)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if next(m.children(), None) is None]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("input_shape", "classes"), SHAPES)
def test_every_registered_model(name, input_shape, classes):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name, input_shape, classes))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = summarize(model, input_shape, batch_size=2)

    params = list(model.parameters())
    assert report.total_parameters == sum(p.numel() for p in params)
    assert report.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert report.listed_parameters == sum(p.numel() for m in leaves(model) for p in m.parameters())
    assert report.parameter_bytes == sum(p.numel() * p.element_size() for p in params)
    assert report.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())
    assert report.input_bytes == 2 * math.prod(input_shape) * 4

    x = torch.zeros(2, *input_shape)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert report.rows[0].input_shape == tuple(x.shape)
    assert report.rows[-1].output_shapes == (tuple(out.shape),)
    # each leaf, run on its recorded input shape, gives its recorded output shape
    modules = dict(model.named_modules())
    for row in report.rows:
        if row.kind != "flatten":
            with torch.no_grad():
                produced = modules[row.name](torch.zeros(row.input_shape))
            assert row.output_shapes == (tuple(produced.shape),), row.name
    counted = sum(r.mult_adds for r in report.rows if r.kind in ("Conv2d", "Linear"))
    assert 2 * counted == torch_flops(model, x)

    model.train()
    assert all(m.training for m in model.modules())  # modes restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_the_tutorial_cnn_on_mnist():
    model = create_model(ModelConfig("cnn", (1, 28, 28), 10))
    report = summarize(model, (1, 28, 28))
    # the tutorial: 50,378 parameters; 28x28 -> 14x14 -> 7x7; flatten to (B, 3136)
    assert report.total_parameters == 50378
    assert [(r.name, r.output_shapes[0]) for r in report.rows] == [
        ("conv1", (1, 32, 28, 28)),
        ("bn1", (1, 32, 28, 28)),
        ("pool", (1, 32, 14, 14)),
        ("conv2", (1, 64, 14, 14)),
        ("bn2", (1, 64, 14, 14)),
        ("pool", (1, 64, 7, 7)),
        ("(flatten)", (1, 3136)),
        ("fc", (1, 10)),
    ]
    assert report.repeated_layers == ["pool"]
    assert report.non_trainable == 0  # running statistics are buffers, not parameters
    assert report.buffer_values == sum(b.numel() for b in model.buffers())
    assert report.buffer_kinds == ("num_batches_tracked", "running_mean", "running_var")
    by_name = {r.name: r for r in report.rows}
    assert by_name["conv1"].mult_adds == 28 * 28 * 32 * 1 * 3 * 3
    assert by_name["fc"].mult_adds == 3136 * 10
    assert by_name["bn1"].mult_adds == 32 * 28 * 28  # one per value, the stated convention
    assert by_name["pool"].mult_adds == 0


def test_shapes_follow_the_torch_ops_on_a_3x32x32_input():
    """A case the tutorial does not give: colour 32x32 input, 5 classes, batch 3."""
    model = create_model(ModelConfig("cnn", (3, 32, 32), 5)).eval()
    report = summarize(model, (3, 32, 32), batch_size=3)
    x = torch.randn(3, 3, 32, 32)
    expected = []
    with torch.no_grad():
        for name in ("conv1", "bn1", "pool", "conv2", "bn2", "pool"):
            x = getattr(model, name)(x)
            expected.append(tuple(x.shape))
        expected.append(tuple(x.flatten(1).shape))
        expected.append(tuple(model.fc(x.flatten(1)).shape))
    assert [r.output_shapes[0] for r in report.rows] == expected
    assert expected[-2] == (3, model.fc.in_features)
    assert report.activation_bytes == 4 * sum(
        math.prod(s) for s, r in zip(expected, report.rows) if r.kind != "flatten"
    )


class Toy(nn.Module):
    """A shared conv, a frozen grouped conv, a transposed conv and an unused layer."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 6, 3, stride=3, groups=2)
        self.up = nn.ConvTranspose2d(6, 2, 2, stride=2)
        self.unused = nn.Linear(3, 3)
        for p in self.grouped.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        x = self.shared(torch.relu(self.shared(x)))
        return self.up(self.grouped(x))


def test_shared_frozen_grouped_and_transposed_layers():
    model = Toy()
    report = summarize(model, (4, 9, 9))
    grouped = sum(p.numel() for p in model.grouped.parameters())
    assert report.non_trainable == grouped
    assert report.trainable == sum(p.numel() for p in model.parameters()) - grouped
    assert [r.name for r in report.rows] == ["shared", "shared", "grouped", "up"]
    assert report.repeated_layers == ["shared"]
    assert report.rows[1].parameters == 0  # counted on the first call only
    unused = sum(p.numel() for p in model.unused.parameters())
    assert report.total_parameters - report.listed_parameters == unused
    assert 2 * report.mult_adds == torch_flops(model, torch.zeros(1, 4, 9, 9))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # fc of 0 inputs
def test_too_small_an_input_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 4x4"):  # pools 2 -> 1 -> 0
        create_model(ModelConfig("cnn", (1, 2, 2), 10))
    model = create_model(ModelConfig("cnn", (1, 28, 28), 10))
    with pytest.raises(ConfigError, match="1x2x2"):
        summarize(model, (1, 2, 2))


def test_wrong_channels_is_a_config_error():
    model = create_model(ModelConfig("cnn", (1, 28, 28), 10))
    with pytest.raises(ConfigError, match="cannot take a 3x28x28 input"):
        summarize(model, (3, 28, 28))


@pytest.mark.parametrize(("text", "shape"), [("1x28x28", (1, 28, 28)), ("3X32x32", (3, 32, 32))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["28x28", "1x28x28x1", "0x28x28", "ax28x28", "1x-2x28", ""])
def test_parse_shape_rejects(text):
    with pytest.raises(ConfigError, match="CxHxW"):
        parse_shape(text)


def numel(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize(
    ("in_features", "out_features", "bias"),
    [(784, 128, True), (3 * 224 * 224, 128, True), (3072, 5, False), (1, 1, True)],
)
def test_linear_count_matches_nn_linear(in_features, out_features, bias):
    count = linear_count(in_features, out_features, bias)
    layer = nn.Linear(in_features, out_features, bias=bias, device="meta")  # no memory
    assert count.parameters == numel(layer)
    assert count.weights == layer.weight.numel()
    assert count.weights_formula() == f"{in_features:,} x {out_features:,} = {count.weights:,}"


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "bias"),
    [(1, 32, 3, True), (3, 32, 3, True), (32, 64, 3, False), (3, 5, (2, 4), True)],
)
def test_conv2d_count_matches_nn_conv2d(in_channels, out_channels, kernel, bias):
    count = conv2d_count(in_channels, out_channels, kernel, bias)
    layer = nn.Conv2d(in_channels, out_channels, kernel, bias=bias, device="meta")
    assert count.parameters == numel(layer)
    assert count.weights == layer.weight.numel()


def test_the_tutorials_counts():
    assert linear_count(784, 128).parameters == 100480  # the tutorial's 100,480
    assert conv2d_count(1, 32, 3).parameters == 320
    big = linear_count(150528, 128)  # 224x224 colour: "over 19 million"
    assert (big.weights, big.parameters) == (19267584, 19267712)


def test_resolution_table_grows_quadratically_for_linear_only():
    sizes = [28, 56, 112, 224]
    table = resolution_table(sizes, channels=3, hidden=128, filters=32, kernel=3)
    for size, row in zip(sizes, table):
        assert row.image == (3, size, size)
        assert row.linear.parameters == numel(nn.Linear(3 * size * size, 128, device="meta"))
        assert row.conv.parameters == numel(nn.Conv2d(3, 32, 3, device="meta"))
    weights = [row.linear.weights for row in table]
    assert [b / a for a, b in zip(weights, weights[1:])] == [4.0, 4.0, 4.0]
    assert table[-1].linear.parameters == 19267712


def test_summary_stages_and_memory_of_the_tutorial_cnn():
    report = summarize(create_model(ModelConfig("cnn")), (1, 28, 28), batch_size=2)
    assert report.stages == ("28x28", "14x14", "7x7", "flatten to 3136 (input of fc)")
    assert report.calls("pool") == 2 and report.repeated_layers == ["pool"]
    parts = dict(report.memory)
    assert parts["input"] == 2 * 28 * 28 * 4  # fp32 zeros
    assert parts["parameters"] == 50_378 * 4
    assert parts["total"] == sum(n for part, n in report.memory if part != "total")
    assert report.unlisted_parameters == 0


@pytest.mark.parametrize(
    ("n", "text"), [(784, "784 bytes"), (1552, "1.5 KiB"), (3 << 20, "3.0 MiB")]
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_first_layer_comparison_is_the_tutorials_argument():
    comparison = compare_first_layers((1, 28, 28), sizes=(28, 56), channels=3)
    assert comparison.inputs == 784
    assert comparison.linear.parameters == numel(nn.Linear(784, 128, device="meta"))
    assert comparison.conv.parameters == numel(nn.Conv2d(1, 32, 3, device="meta"))
    assert comparison.ratio == 100_480 / 320
    assert comparison.largest.image == (3, 56, 56)
    small, big = (numel(nn.Linear(3 * s * s, 128, device="meta")) for s in (28, 56))
    assert comparison.growth == (None, big / small)


def test_count_layers_keeps_the_order_given():
    counts = count_layers([("conv", (1, 32, 3)), ("linear", (784, 128))])
    assert [c.parameters for c in counts] == [320, 100_480]


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride", "dilation", "pool"),
    [(28, 3, 1, 2, 1, 2), (28, 3, 0, 1, 1, None), (32, 5, 2, 1, 2, 3), (9, 3, 1, 3, 1, 2)],
)
def test_worked_shapes_are_pytorchs(size, kernel, padding, stride, dilation, pool):
    report = work_out_shapes(size, kernel, padding, stride, dilation, pool)
    conv = nn.Conv2d(1, 1, kernel, stride, padding, dilation, device="meta")
    y = conv(torch.empty(1, 1, size, size, device="meta"))
    assert report.conv.output == y.shape[-1] and report.torch_conv_shape == tuple(y.shape)
    path = [f"{size}x{size}", "conv", f"{y.shape[-1]}x{y.shape[-1]}"]
    if pool:
        pooled = nn.MaxPool2d(pool)(y)
        assert report.pool.output == pooled.shape[-1]
        path += ["max pool", f"{pooled.shape[-1]}x{pooled.shape[-1]}"]
    assert report.sizes == tuple(path)
    yours = [n for n in report.nearby if n.yours]
    assert [(n.padding, n.stride) for n in yours] == [(padding, stride)]


def test_substituted_formula_of_the_tutorials_strided_conv():
    """28x28, kernel 3, padding 1, stride 2: (28 + 2 - 2 - 1) / 2 = 13.5, floored, + 1 = 14."""
    step = work_out_shapes(28, 3, padding=1, stride=2).conv
    assert step.substituted == "floor((28 + 2*1 - 1*(3 - 1) - 1) / 2) + 1 = floor(27 / 2) + 1"
    assert step.output == 14
