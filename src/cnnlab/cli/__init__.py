"""The `cnnlab` command: argparse subcommands that parse, call the library and print.

    cnnlab train --data-dir ../shared/data
    cnnlab eval runs/<run>
    cnnlab predict my-digit.png --run runs/<run>
    cnnlab serve --run runs/<run>
    cnnlab --help

Every subcommand lives in one module of this package that exposes `register(subparsers)`.
Errors a user can cause end here as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys

from cnnlab import __version__
from cnnlab.cli import bench, catalog, compare, figures, predict, runs, serve, teach, training
from cnnlab.errors import CnnlabError

COMMAND_MODULES = (training, runs, predict, figures, compare, teach, serve, bench, catalog)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Convolutional neural networks on small image datasets: train, evaluate, "
        "inspect and learn.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cnnlab eval RUN | head`: the reader left; nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
