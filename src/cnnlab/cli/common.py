"""Argument types and options shared by several subcommands.

Every integer flag has a range (`int_in`; at most `MAX_INT` where no tighter one applies), and
every path flag is checked as a path (`path_arg`), so a value the parser accepts is one the
command can use.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from cnnlab.choices import DEVICES, PRECISIONS
from cnnlab.config import INT_LIMITS, MAX_SEED
from cnnlab.errors import ConfigError
from cnnlab.files import expand_path

MAX_INT = 2**31 - 1  # no count or size cnnlab takes comes near this; bigger ones overflow C ints
NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, a job scheduler), raised where the program is, like Ctrl-C."""


def int_in(low: int, high: int = MAX_INT):
    """An argparse type: an integer from `low` to `high` (ASCII digits; `1e3` is not one)."""

    def parse(text: str) -> int:
        shown = text if len(text) <= 30 else text[:27] + "..."
        try:
            if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
                raise ValueError
            value = int(text)
        except ValueError:  # also a number of more than Python's 4,300 digits
            raise argparse.ArgumentTypeError(f"not an integer: {shown!r}") from None
        if value < low:
            bound = "a positive integer" if low == 1 else "0 or more" if low == 0 else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {shown}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {shown}")
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
seed_int = int_in(0, MAX_SEED)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text}")
    return value


def setting_int(name: str):
    """The argparse type of a `TrainConfig` integer: the same range config.json is held to."""
    return int_in(*INT_LIMITS[name])


def path_arg(text: str) -> Path:
    """An argparse type for paths: `~` and `~user` expanded, no component longer than a file
    system allows, not empty."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    try:
        path = expand_path(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise argparse.ArgumentTypeError(
                f"a path component is {len(os.fsencode(part))} bytes long; file systems allow "
                f"at most {NAME_MAX} ({part[:40]}...)"
            )
    return path


def add_data_dir(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument(
        "--data-dir",
        type=path_arg,
        metavar="DIR",
        **kwargs,
        help="dataset root (default: $CNNLAB_DATA, else ~/.cache/cnnlab); missing files are "
        "downloaded there",
    )


def add_device(parser: argparse.ArgumentParser, precision: bool = False, **kwargs) -> None:
    """--device (and --precision), with the same choices and help everywhere."""
    parser.add_argument(
        "--device",
        **({"default": "auto"} | kwargs),
        help=f"{', '.join(DEVICES)}; auto picks cuda, then mps, then cpu (default: auto)",
    )
    if precision:
        parser.add_argument(
            "--precision",
            **({"default": "auto"} | kwargs),
            help=f"{', '.join(PRECISIONS)}; auto: bf16 where the hardware supports it "
            "(default: auto)",
        )


def add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", type=path_arg, help="a run folder, or a .safetensors file inside one"
    )


def add_subset_flags(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument(
        "--train-subset",
        type=setting_int("train_subset"),
        **kwargs,
        help="train on the first N images (default: all)",
    )
    add_test_subset(parser, "all", **kwargs)


def add_test_subset(parser: argparse.ArgumentParser, default: str, **kwargs) -> None:
    """--test-subset N; `default` says what is evaluated without it."""
    parser.add_argument(
        "--test-subset",
        type=setting_int("test_subset"),
        **kwargs,
        help=f"evaluate on the first N test images (default: {default})",
    )


def add_figure_out(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument(
        "--out",
        type=path_arg,
        metavar="FILE",
        help=f"PNG to write (default: {default_name} in the run folder, or in the current folder "
        "when there is no run)",
    )


def print_table(rows: list[list], header: list[str]) -> None:
    """Plain aligned columns; numbers right-aligned."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(header))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def figure_path(out: Path | None, run_dir: Path | None, default_name: str) -> Path:
    """--out FILE.png; `default_name` inside --out when it is a folder (an existing one, or a
    name without a suffix); else `default_name` in the run folder, or the current folder."""
    path = (run_dir or Path(".")) / default_name if out is None else out
    if path.is_dir() or not path.suffix:
        path = path / default_name
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {path}: figures are written as PNG; give a name ending in .png")
    return path


def save_figure_to(fig, out: Path | None, run_dir: Path | None, default_name: str) -> Path:
    """Write a figure where `figure_path` says, creating the folder; errors are one line."""
    from cnnlab.viz import save_figure

    path = figure_path(out, run_dir, default_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_figure(fig, path)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None


def runtime_for(device: str, precision: str, threads: int | None = None, follow_load: bool = False):
    """The command's `Runtime`, after the process-wide settings are applied (once, here). With
    `follow_load` (training), a thread count neither given nor set by OMP_NUM_THREADS follows
    the machine's load, up to PyTorch's own count."""
    import torch

    from cnnlab.runtime import configure_process, resolve_runtime

    ceiling = torch.get_num_threads()  # before configure_process takes busy CPUs away
    chosen_here = threads is None and "OMP_NUM_THREADS" not in os.environ
    threads = configure_process(threads, log=lambda line: print(line, file=sys.stderr))
    follow = ceiling if follow_load and chosen_here else 0
    return resolve_runtime(device, precision, threads, follow_load=follow)
