"""Flags and paths: every value the parser accepts works, every other one is one line, and a
refused command writes nothing.

The parser is walked, so a flag added later is held to the same rules: integers through
`int_in` (a range), paths through `path_arg`. `--config` values meet the rules of the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import build_parser, main
from cnnlab.cli.common import path_arg
from cnnlab.config import MAX_SEED
from cnnlab.runtime import available_cpus
from tests.conftest import one_error_line


def typed_actions(parser=None, command=()):
    """(command words, option, action) for every argument with a type, in every subcommand."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from typed_actions(sub, (*command, name))
        elif action.type is not None:
            yield command, (action.option_strings or [action.dest])[-1], action


INTEGER_FLAGS = [
    (command, option, action)
    for command, option, action in typed_actions()
    if getattr(action.type, "__qualname__", "").startswith("int_in")
]


def test_every_integer_and_path_argument_has_a_checked_type():
    kinds = {}
    for command, option, action in typed_actions():
        kinds[(*command, option)] = getattr(action.type, "__qualname__", action.type.__name__)
    loose = {k: v for k, v in kinds.items() if v not in ("int_in.<locals>.parse", "path_arg")}
    floats = {k for k, v in loose.items() if v in ("float", "positive_float")}  # finite, checked
    assert floats <= {("train", f) for f in ("--lr", "--momentum", "--weight-decay")} | {
        ("train", "--label-smoothing"),
        ("train", "--test-fraction"),
        ("compare", "--lr"),
        ("serve", "--max-upload-mb"),
        ("train", "--peer-timeout"),
    }
    assert set(loose) - floats <= {("bench", "--json")}, loose


@pytest.mark.parametrize(
    ("command", "option", "nargs"),
    [(c, o, a.nargs) for c, o, a in INTEGER_FLAGS if o.startswith("-")],
    ids=[" ".join((*c, o)) for c, o, _ in INTEGER_FLAGS if o.startswith("-")],
)
@pytest.mark.parametrize("value", [str(10**20), str(-(10**20)), "1e3", "٣", "9" * 5000])
def test_integer_flags_refuse_out_of_range_values_in_one_line(
    command, option, nargs, value, capsys
):
    values = [value] * (nargs if isinstance(nargs, int) else 1)
    with pytest.raises(SystemExit) as info:
        main([*command, option, *values])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"cnnlab {' '.join(command)}: error: argument {option}")
    assert "must be" in last or "not an integer" in last
    assert len(last) < 300


# --- refused before anything is written ---------------------------------------------------------


REFUSED = [
    (["--seed", str(MAX_SEED + 1)], 2, "--seed: must be at most 4294967295"),
    (["--seed", "18000000000000"], 2, "must be at most 4294967295"),
    (["--threads", str(available_cpus() + 1)], 1, "CPUs available here; use at most"),
    (["--threads", "10000"], 1, "--threads 10000 is more than the"),
    (["--lr", "inf"], 1, "--lr must be finite, got inf"),
    (["--lr", "1e400"], 1, "--lr must be finite, got inf"),
    (["--weight-decay", "nan"], 1, "--weight-decay must be >= 0, got nan"),
    (["--model", "mlp", "--hidden", "70000"], 2, "--hidden: must be at most 65536"),
    (["--epochs", "2000000"], 2, "--epochs: must be at most 1000000"),
]


@pytest.mark.parametrize(("flags", "status", "message"), REFUSED, ids=lambda v: str(v))
def test_bad_flags_are_refused_before_the_run_folder(
    fake_root, tmp_path, capsys, flags, status, message
):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(out), "--quiet", *flags]
    if status == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err.splitlines()[-1]
    else:
        assert main(argv) == 1
        assert message in one_error_line(capsys)
    assert not out.exists()


CONFIG_VALUES = [
    ({"seed": MAX_SEED + 1}, "--seed must be at most 4,294,967,295"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"batch_size": 2**40}, "--batch-size must be at most"),
    ({"lr": float("inf")}, "--lr must be finite"),
    ({"model": "mlp", "model_options": {"hidden": 10**9}}, "option hidden must be an integer"),
    ({"model": "mlp", "model_options": {"hidden": True}}, "option hidden must be an integer"),
    ({"val_size": -5}, "--val-size must be at least 0"),
]


@pytest.mark.parametrize(("values", "message"), CONFIG_VALUES, ids=lambda v: str(v))
def test_config_values_meet_the_rules_of_the_flags(fake_root, tmp_path, capsys, values, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": values}))
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--config", str(config), "--out", str(out)]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert str(config) in line and message in line
    assert not out.exists()


# --- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "runs/" + "x" * 256],
        ["eval", "runs/" + "y" * 300],
        ["train", "--data-dir", "~no-such-user-here/data"],
        ["train", "--resume", "~no-such-user-here/run"],
        ["eval", "--out", ""],
    ],
    ids=["out-too-long", "run-too-long", "data-dir-unknown-user", "resume-unknown-user", "empty"],
)
def test_bad_paths_are_one_usage_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: argument" in err.splitlines()[-1]


def test_unknown_user_in_the_data_root_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", "~no-such-user-here/data")
    assert main(["datasets"]) == 1
    assert "no user 'no-such-user-here'" in one_error_line(capsys)


def test_path_arg_expands_the_home_folder():
    assert path_arg("~/runs") == Path.home() / "runs"


def test_output_to_a_full_device_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "cnnlab", "models"], stdout=full, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "cnnlab: error: cannot write the output: No space left on device"
    ]


# --- teaching and figure commands ---------------------------------------------------------------


BOUNDED = [
    (["explain", "conv", "--size", "3000"], "--size: must be at most 16"),
    (["explain", "conv", "--seed", str(10**20)], "--seed: must be at most 4294967295"),
    (["explain", "pool", "--kernel", "100"], "--kernel: must be at most 7"),
    (["explain", "batchnorm", "--channels", "1000"], "--channels: must be at most 8"),
    (["samples", "--count", "1000000000"], "--count: must be at most 256"),
    (["shapes", "--size", str(10**20)], "--size: must be at most 1048576"),
]


@pytest.mark.parametrize(("argv", "message"), BOUNDED, ids=lambda v: str(v))
def test_teaching_and_figure_commands_are_bounded(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("1x100000x100000", "at most 256 channels and 4096x4096 pixels"),
        ("1x²8x28", "three positive integers"),
        ("1x٢٨x28", "three positive integers"),
        ("3x4096x4096", "summary runs a real forward pass"),
        ("1x" + "9" * 5000 + "x1", "three positive integers"),
    ],
)
def test_summary_input_shapes_are_bounded(shape, message, capsys):
    assert main(["summary", "--model", "mlp", "--input", shape]) == 1
    assert message in one_error_line(capsys)


def test_a_model_too_big_to_build_is_refused_before_allocating(capsys):
    assert main(["summary", "--model", "mlp", "--input", "3x2048x2048"]) == 1
    assert "parameters, more than the 268,435,456 cnnlab builds" in one_error_line(capsys)


def test_compare_seeds_past_the_largest_seed_are_refused_before_its_folder(tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["compare", "--seed", str(MAX_SEED), "--seeds", "2", "--out", str(out)]
    assert main(argv) == 1
    assert "goes past the largest seed" in one_error_line(capsys)
    assert not out.exists()
