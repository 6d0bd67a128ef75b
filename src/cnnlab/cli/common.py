"""What the subcommands share: argument types, common options, plain tables, figure paths."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.runtime import DEVICES, PRECISIONS
from cnnlab.viz import save_figure


def positive_int(text: str) -> int:
    value = int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_data_dir(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
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
    parser.add_argument("run", type=Path, help="a run folder, or a .safetensors file inside one")


def add_subset_flags(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument(
        "--train-subset",
        type=positive_int,
        **kwargs,
        help="train on the first N images (default: all)",
    )
    add_test_subset(parser, "all", **kwargs)


def add_test_subset(parser: argparse.ArgumentParser, default: str, **kwargs) -> None:
    """--test-subset N; `default` says what is evaluated without it."""
    parser.add_argument(
        "--test-subset",
        type=positive_int,
        **kwargs,
        help=f"evaluate on the first N test images (default: {default})",
    )


def add_figure_out(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
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
    path = figure_path(out, run_dir, default_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_figure(fig, path)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None


def runtime_for(device: str, precision: str, threads: int | None = None):
    """The command's `Runtime`, after the process-wide settings are applied (once, here)."""
    from cnnlab.runtime import configure_process, resolve_runtime

    configure_process(threads)
    return resolve_runtime(device, precision, threads)
