"""`cnnlab summary`, `params`, `shapes` and `explain`, run in-process.

Every number the tests look for is computed here from PyTorch (parameter counts of real layers,
shapes of real forward passes, outputs of torch.nn.functional), or is the tutorial's own.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.cli import build_parser, main
from cnnlab.models import ModelConfig, create_model, list_models
from cnnlab.teach import explain


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: str, first_column: str) -> list[list[str]]:
    """The rows of the table whose header starts with `first_column`, split into cells."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(first_column))
    rows = []
    for line in lines[start + 2 :]:  # skip the header and the dashes
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < 2:  # a blank line or a sentence: the table has ended
            break
        rows.append(cells)
    return rows


def numel(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


# ---- summary -------------------------------------------------------------------------------


def test_summary_default_is_the_tutorial_cnn(capsys):
    code, out, _ = run(capsys, "summary")
    assert code == 0
    model = create_model(ModelConfig("cnn", (1, 28, 28), 10)).eval()
    assert f"Parameters: {numel(model):,} " in out
    assert f"{numel(model):,}" == "50,378"  # the tutorial's count

    x = torch.zeros(1, 1, 28, 28)
    expected = []
    with torch.no_grad():
        for name in ("conv1", "bn1", "pool", "conv2", "bn2", "pool"):
            layer = getattr(model, name)
            expected.append([name, type(layer).__name__, str(tuple(x.shape))])
            x = layer(x)
            expected[-1] += [str(tuple(x.shape)), f"{numel(layer):,}" if name != "pool" else "0"]
        flat = x.flatten(1)
        expected.append(["(flatten)", "flatten", str(tuple(x.shape)), str(tuple(flat.shape)), "0"])
        y = model.fc(flat)
        expected.append(["fc", "Linear", str(tuple(flat.shape)), str(tuple(y.shape))])
        expected[-1].append(f"{numel(model.fc):,}")
    rows = table(out, "layer")
    assert [row[:5] for row in rows] == expected
    assert "Stages: 28x28 -> 14x14 -> 7x7 -> flatten to 3136 (input of fc)" in out
    buffers = sum(b.numel() for b in model.buffers())
    assert f"Buffers, not parameters: {buffers:,} values" in out
    assert "non-trainable 0" in out


@pytest.mark.parametrize("name", list_models())
def test_summary_of_every_registered_model(capsys, name):
    code, out, _ = run(capsys, "summary", "--model", name, "--input", "3x32x32", "--classes", "5")
    assert code == 0
    model = create_model(ModelConfig(name, (3, 32, 32), 5)).eval()
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 32, 32))
    params = numel(model)
    assert f"Parameters: {params:,} (trainable {params:,}, non-trainable 0)" in out
    rows = table(out, "layer")
    assert rows[-1][3] == str(tuple(y.shape)) == "(1, 5)"
    assert sum(int(row[4].replace(",", "")) for row in rows) == params
    memory = {row[0]: int(row[1].replace(",", "")) for row in table(out, "memory")}
    assert memory["parameters"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory["input"] == 3 * 32 * 32 * 4
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")


def test_summary_batch_size_scales_shapes_and_input_memory(capsys):
    code, out, _ = run(capsys, "summary", "--batch-size", "4")
    assert code == 0
    rows = table(out, "layer")
    assert rows[0][2] == "(4, 1, 28, 28)"
    assert {row[0]: row[1] for row in table(out, "memory")}["input"] == f"{4 * 28 * 28 * 4:,}"


@pytest.mark.parametrize("bad", ["28x28", "1x28", "axbxc", "0x28x28"])
def test_summary_bad_input_is_one_clear_line(capsys, bad):
    code, out, err = run(capsys, "summary", "--input", bad)
    assert code == 1
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1
    assert "CxHxW" in err


def test_summary_unknown_model_lists_the_known_ones(capsys):
    code, _, err = run(capsys, "summary", "--model", "nope")
    assert code == 1
    assert all(name in err for name in list_models())


# ---- params --------------------------------------------------------------------------------


def test_params_makes_the_tutorials_argument(capsys):
    code, out, _ = run(capsys, "params")
    assert code == 0
    mlp_layer = nn.Linear(784, 128)
    cnn_layer = nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3, padding=1)
    first = {row[0]: row for row in table(out, "layer")}
    assert first["nn.Linear(784, 128)"][3] == f"{numel(mlp_layer):,}" == "100,480"
    assert first["nn.Conv2d(1, 32, kernel_size=3)"][3] == f"{numel(cnn_layer):,}" == "320"

    big = nn.Linear(3 * 224 * 224, 128, device="meta")
    weights, total = big.weight.numel(), numel(big)
    assert (weights, total) == (19267584, 19267712)  # the tutorial's "over 19 million"
    assert (
        f"{3 * 224 * 224:,} x 128 = {weights:,} weights + 128 biases = {total:,} parameters" in out
    )

    rows = table(out, "image")
    sizes = [int(row[0].split("x")[-1]) for row in rows]
    assert sizes == [28, 56, 112, 224]
    counts = [int(row[2].replace(",", "")) for row in rows]
    assert counts == [numel(nn.Linear(3 * s * s, 128, device="meta")) for s in sizes]
    assert all(row[-1] == f"{numel(nn.Conv2d(3, 32, 3)):,}" for row in rows)
    assert [row[3] for row in rows[1:]] == [f"x{b / a:.2f}" for a, b in zip(counts, counts[1:])]


def test_params_counts_the_layers_given(capsys):
    argv = ["params", "--linear", "784", "128", "--conv", "1", "32", "3"]
    argv += ["--conv", "3", "16", "5", "--linear", "3072", "5"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    rows = table(out, "layer")
    layers = [nn.Linear(784, 128), nn.Conv2d(1, 32, 3), nn.Conv2d(3, 16, 5), nn.Linear(3072, 5)]
    assert [row[3] for row in rows] == [f"{numel(layer):,}" for layer in layers]
    assert [row[2] for row in rows] == [f"{layer.bias.numel():,}" for layer in layers]
    assert rows[2][1] == f"16 x 3 x 5 x 5 = {layers[2].weight.numel():,}"


def test_params_other_first_layer_and_sizes(capsys):
    argv = ["params", "--input", "3x32x32", "--hidden", "64", "--filters", "8", "--kernel", "5"]
    code, out, _ = run(capsys, *argv, "--sizes", "16", "48", "--channels", "1")
    assert code == 0
    first = table(out, "layer")
    assert first[0][3] == f"{numel(nn.Linear(3 * 32 * 32, 64)):,}"
    assert first[1][3] == f"{numel(nn.Conv2d(3, 8, 5)):,}"
    rows = table(out, "image")
    assert [row[2] for row in rows] == [f"{numel(nn.Linear(s * s, 64)):,}" for s in (16, 48)]
    assert all(row[-1] == f"{numel(nn.Conv2d(1, 8, 5)):,}" for row in rows)


# ---- shapes --------------------------------------------------------------------------------


def torch_sizes(size, kernel, padding, stride, dilation, pool):
    """Side lengths after a real F.conv2d (and F.max_pool2d) on zeros."""
    x = torch.zeros(1, 1, size, size)
    y = F.conv2d(x, torch.zeros(1, 1, kernel, kernel), None, stride, padding, dilation)
    sizes = [y.shape[-1]]
    if pool:
        sizes.append(F.max_pool2d(y, pool).shape[-1])
    return sizes


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride", "dilation", "pool"),
    [
        (28, 3, 1, 1, 1, 2),  # the tutorial: 28
        (28, 3, 0, 1, 1, None),  # 26
        (28, 3, 1, 2, 1, 2),  # 14, then 7
        (32, 3, 0, 3, 1, None),
        (32, 5, 2, 1, 2, 3),
        (7, 7, 0, 1, 1, None),
        (100, 4, 3, 3, 3, 2),
    ],
)
def test_shapes_matches_torch(capsys, size, kernel, padding, stride, dilation, pool):
    argv = ["shapes", "--size", str(size), "--kernel", str(kernel), "--padding", str(padding)]
    argv += ["--stride", str(stride), "--dilation", str(dilation)]
    if pool:
        argv += ["--pool", str(pool)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    sizes = torch_sizes(size, kernel, padding, stride, dilation, pool)
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1
    assert (
        f"floor(({size} + 2*{padding} - {dilation}*({kernel} - 1) - 1) / {stride}) + 1"
        f" = floor({numerator} / {stride}) + 1 = {sizes[0]}"
    ) in out
    chain = f"{size}x{size} -> conv -> {sizes[0]}x{sizes[0]}"
    if pool:
        chain += f" -> max pool -> {sizes[1]}x{sizes[1]}"
    assert chain in out.splitlines()


def test_shapes_nearby_settings_are_torchs(capsys):
    code, out, _ = run(capsys, "shapes", "--size", "28", "--kernel", "3", "--stride", "3")
    assert code == 0
    rows = table(out, "padding")
    assert {(r[0], r[1]) for r in rows} == {(p, s) for p in "01" for s in "123"}
    for row in rows:
        side = torch_sizes(28, 3, int(row[0]), int(row[1]), 1, None)[0]
        assert row[2] == f"{side}x{side}"
    assert [r[3] for r in rows if len(r) > 3] == ["<- yours"]
    assert next(r[:2] for r in rows if len(r) > 3) == ["0", "3"]


def test_shapes_kernel_larger_than_input_is_an_error(capsys):
    code, _, err = run(capsys, "shapes", "--size", "4", "--kernel", "7")
    assert code == 1
    assert err.startswith("cnnlab: error: ") and "spans 7 pixels" in err


# ---- explain -------------------------------------------------------------------------------


def conv_values(out: str) -> dict[tuple[int, int], tuple[list[str], str]]:
    """{(i, j): (the terms of the written-out sum, the stated value)}."""
    values, pending = {}, None
    for line in out.splitlines():
        if pending is not None:
            body, value = line.strip().removeprefix("= ").rsplit(" = ", 1)
            values[pending] = (body.split(" + "), value)
            pending = None
            continue
        match = re.match(r"y\[(\d+),(\d+)\] = (.*)", line)
        if not match or "max(" in line:
            continue
        index = (int(match[1]), int(match[2]))
        if match[3].endswith("+ b"):
            pending = index  # the symbolic line; the numbers follow on the next
        else:
            body, value = match[3].rsplit(" = ", 1)
            values[index] = (body.split(" + "), value)
    return values


def number(text: str) -> float:
    return float(text.strip("()"))


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride", "seed"),
    [(5, 3, 0, 1, 0), (4, 3, 1, 2, 3), (6, 2, 0, 3, 7)],
)
def test_explain_conv_writes_out_each_sum(capsys, size, kernel, padding, stride, seed):
    argv = ["explain", "conv", "--size", str(size), "--kernel", str(kernel)]
    argv += ["--padding", str(padding), "--stride", str(stride), "--seed", str(seed)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    ex = explain.conv_example(size, kernel, padding, stride, seed)
    y = F.conv2d(ex.x, ex.weight, ex.bias, stride=stride, padding=padding)[0, 0]
    values = conv_values(out)
    assert set(values) == {(i, j) for i in range(y.shape[0]) for j in range(y.shape[1])}
    padded = F.pad(ex.x, (padding,) * 4)[0, 0]
    for (i, j), (terms, value) in values.items():
        assert number(value) == y[i, j].item()
        *products, bias = terms
        assert number(bias) == ex.bias.item()
        window = padded[i * stride : i * stride + kernel, j * stride : j * stride + kernel]
        pairs = [tuple(number(f) for f in p.split("*")) for p in products]
        assert pairs == list(zip(window.flatten().tolist(), ex.weight.flatten().tolist()))
    assert "y[i,j] = sum_m sum_n x[" in out
    assert out.rstrip().endswith("gives the same y: yes")


def test_explain_pool_shows_each_window(capsys):
    code, out, _ = run(capsys, "explain", "pool", "--size", "6", "--kernel", "3", "--seed", "2")
    assert code == 0
    x = explain.pool_example(6, seed=2)
    y = F.max_pool2d(x, 3)[0, 0]
    lines = [line for line in out.splitlines() if line.startswith("y[")]
    assert len(lines) == y.numel() == 4
    for line in lines:
        i, j = map(int, re.match(r"y\[(\d+),(\d+)\]", line).groups())
        window = x[0, 0, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3].flatten().tolist()
        listed = re.search(r"= max\(([-\d., ]+)\) = (\S+)$", line)
        assert [number(v) for v in listed[1].split(", ")] == window
        assert number(listed[2]) == y[i, j].item() == max(window)


def test_explain_batchnorm_train_against_eval(capsys):
    code, out, _ = run(capsys, "explain", "batchnorm", "--batch-size", "5", "--channels", "3")
    assert code == 0
    ex = explain.batchnorm_example(5, 3, seed=0)
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    train = F.batch_norm(ex.x, mean, var, ex.gamma, ex.beta, training=True)  # updates mean, var
    evaluation = F.batch_norm(ex.x, mean, var, ex.gamma, ex.beta, training=False)

    def vectors(pattern: str) -> list[list[float]]:
        found = re.findall(pattern + r".*= \[([^\]]*)\]$", out, flags=re.MULTILINE)
        return [[float(v) for v in text.split(", ")] for text in found]

    printed_train = torch.tensor(vectors(r"^  y = "), dtype=torch.float64)
    printed_eval = torch.tensor(vectors(r"^channel \d: y = "), dtype=torch.float64)
    torch.testing.assert_close(printed_train, train[:, :, 0, 0].T, atol=1e-4, rtol=0)
    torch.testing.assert_close(printed_eval, evaluation[:, :, 0, 0].T, atol=1e-4, rtol=0)
    assert not torch.allclose(train, evaluation, atol=1e-3)

    running = re.findall(r"^  running_(mean|var) = .* = (\S+)", out, flags=re.MULTILINE)
    assert [float(v) for k, v in running if k == "mean"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert [float(v) for k, v in running if k == "var"] == pytest.approx(var.tolist(), abs=1e-4)
    assert out.rstrip().endswith("running estimates: yes")


def test_explain_batchnorm_needs_a_batch(capsys):
    code, _, err = run(capsys, "explain", "batchnorm", "--batch-size", "1")
    assert code == 1
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1


def test_explain_needs_a_topic(capsys):
    with pytest.raises(SystemExit):
        main(["explain"])
    assert "conv" in capsys.readouterr().err


# ---- help ----------------------------------------------------------------------------------


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize(
    "path",
    [("summary",), ("params",), ("shapes",), ("explain", "conv"), ("explain", "pool")]
    + [("explain", "batchnorm")],
)
def test_every_flag_states_its_default(path):
    parser = build_parser()
    for name in path:
        parser = subparser(parser, name)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        assert "default" in action.help, action.option_strings
        assert all(s == s.lower() and "_" not in s for s in action.option_strings)
