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
import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import NoReturn

from cnnlab import __version__, phases  # noqa: F401  (phases: the fallback start time)
from cnnlab.cli import bench, catalog, compare, figures, predict, runs, serve, teach, training
from cnnlab.cli.common import Terminated
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
    with sigterm_as_interrupt():
        try:
            code = args.handler(args) or 0
            sys.stdout.flush()  # a full device (> /dev/full) fails here, not at exit
            return code
        except CnnlabError as err:
            print(f"cnnlab: error: {err}", file=sys.stderr)
            return 1
        except Terminated:
            print("cnnlab: terminated", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("cnnlab: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `cnnlab eval RUN | head`: the reader left; nothing to say
            silence_stdout()
            return 141
        except OSError as err:  # what no typed error caught: still one line, never a traceback
            if err.filename is None:  # writing the output itself failed
                silence_stdout()
                print(
                    f"cnnlab: error: cannot write the output: {err.strerror or err}",
                    file=sys.stderr,
                )
            else:
                print(f"cnnlab: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
            return 1


def run() -> NoReturn:
    """The `cnnlab` command: `main`, then exit without tearing the interpreter down.

    Freeing every module of a process that imported PyTorch takes about a second at exit; the
    exit handlers still run, output is flushed, and a process with other (non-daemon) threads
    still running exits the usual way, which waits for them.
    """
    code = main()
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # what C libraries buffered
        ctypes.CDLL(None).fflush(None)
    os._exit(code)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's last flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While a command runs, SIGTERM raises `Terminated` (a KeyboardInterrupt), so training
    keeps its last epoch and says how to resume, as for Ctrl-C; exit status 143."""

    def terminate(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
