"""`cnnlab train` as a torchrun job: the flags, and `--nproc N`, which launches one.

    cnnlab train --nproc 2 --out runs/ddp          # = torchrun --standalone --nproc-per-node 2 \
                                                   #     -m cnnlab train --out runs/ddp
    torchrun --nproc-per-node 2 -m cnnlab train    # each process finds its place in RANK, ...

`--nproc` goes through torchrun's own launcher (`torch.distributed.run`), so both commands
start the same processes; each process runs `cnnlab.cli.torchrun_worker`. Not a command group:
`cnnlab.cli.training` adds these flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.choices import PEER_TIMEOUT
from cnnlab.cli.common import non_negative_int, positive_float, positive_int
from cnnlab.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from cnnlab import distributed as ddp
    from cnnlab.config import TrainConfig

LAUNCHER_FLAGS = ("nproc", "max_restarts")  # read by the launcher, not passed to the processes
FLAGS = {*LAUNCHER_FLAGS, "peer_timeout"}  # may change when resuming


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train as N data-parallel processes on this machine, launched by torchrun "
        "(--standalone); --batch-size stays the global batch (default: one process)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="with several processes, batch norm over the whole batch instead of each "
        "process's part (default: off)",
    )
    p.add_argument(
        "--peer-timeout",
        type=positive_float,
        metavar="SECONDS",
        help=f"with several processes, give up when another stops answering for this long "
        f"(default: {PEER_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-restarts",
        type=non_negative_int,
        metavar="N",
        help="with --nproc: restart the processes up to N times after a failure; they resume "
        "from the last completed epoch (default: 0)",
    )


def train_parser() -> argparse.ArgumentParser:
    from cnnlab.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def worker_flags(args: argparse.Namespace, out: Path | None) -> list[str]:
    """The command-line flags the user gave, less the launcher's, with --out made explicit
    (every process, and every restart, must name the same folder)."""
    flags = []
    given = vars(args)
    for action in train_parser()._actions:
        dest = action.dest
        if dest not in given or dest in (*LAUNCHER_FLAGS, "out") or not action.option_strings:
            continue
        option = next(o for o in action.option_strings if o.startswith("--"))
        flags += [option] if action.nargs == 0 else [option, str(given[dest])]
    return flags + (["--out", str(out)] if out is not None else [])


def torchrun_argv(args: argparse.Namespace, out: Path | None) -> list[str]:
    """torchrun's own command line for the job `--nproc` starts."""
    return [
        "--standalone",
        "--nproc-per-node",
        str(args.nproc),
        "--max-restarts",
        str(getattr(args, "max_restarts", 0)),
        "-m",
        "cnnlab",
        "train",
        *worker_flags(args, out),
    ]


def launch(args: argparse.Namespace, config: TrainConfig, run_dir: Path) -> int:
    """Run the job through torchrun's launcher and wait for it; one line if it failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cnnlab import distributed as ddp
    from cnnlab.distributed_run import check_parallel_recipe

    world = ddp.World(rank=0, size=args.nproc, local_rank=0, local_size=args.nproc)
    check_parallel_recipe(config, world)
    argv = torchrun_argv(args, None if "resume" in args else run_dir)
    print("torchrun " + shlex.join(argv), flush=True)
    # a fresh rendezvous store for each restart (PyTorch issue 135712)
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        message = failure_message(err.failures, run_dir, args.nproc)
        if message is None:  # the processes exited with cnnlab's error line, already printed
            return 1
        raise TrainingError(message) from None
    return 0


def failure_message(failures: dict, run_dir: Path, nproc: int) -> str | None:
    """Which process died and how, what is saved and how to resume; None when the failure was
    a process's own error exit (code 1), whose error line is already printed.

    torchrun stops the other processes with SIGTERM once one has failed (they exit with 143,
    `cnnlab.cli.common.Terminated`), so the cause is a failure other than that: a signal such
    as SIGKILL or SIGSEGV, another exit code.
    """
    from cnnlab.cli.training import saved_epochs

    def blame(item):
        rank, failure = item
        stopped = failure.signal_name() == "SIGTERM" or failure.exitcode == 143
        return (stopped, failure.exitcode == 1, failure.timestamp, rank)

    rank, failure = min(failures.items(), key=blame)
    if failure.exitcode == 1:
        return None
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    saved = saved_epochs(run_dir, 0, True, nproc=nproc)
    return f"training process rank {rank} {how}, so the job stopped. {saved}"


def check_flags(args: argparse.Namespace, world: ddp.World | None) -> None:
    if "max_restarts" in args and "nproc" not in args:
        raise ConfigError("--max-restarts goes with --nproc (under torchrun: its --max-restarts)")
    if "nproc" in args and world is not None:
        raise ConfigError("--nproc starts torchrun, and this process already runs under it")
