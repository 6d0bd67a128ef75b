"""Argument types and options shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    """--out if given, else `default_name` in the run folder, else in the current folder."""
    if out is not None:
        return out
    return (run_dir or Path(".")) / default_name
