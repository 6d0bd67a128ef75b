"""`cnnlab train` as a torchrun job: `--nproc N` launches one, and each of its processes trains.

    cnnlab train --nproc 2 --out runs/ddp          # = torchrun --standalone --nproc-per-node 2 \
                                                   #     -m cnnlab train --out runs/ddp
    torchrun --nproc-per-node 2 -m cnnlab train    # each process finds its place in RANK, ...

`--nproc` goes through torchrun's own launcher (`torch.distributed.run`), so both commands
start the same processes. Not a command group: `cnnlab.cli.training` adds these flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from cnnlab import distributed as ddp
from cnnlab.cli.common import Terminated, non_negative_int, positive_float, positive_int
from cnnlab.config import TrainConfig
from cnnlab.data.sources import DataLocation
from cnnlab.distributed_run import (
    check_parallel_recipe,
    find_job_run,
    job_id,
    resume_job,
    train_job,
)
from cnnlab.errors import CnnlabError, ConfigError, TrainingError, shell_command
from cnnlab.run import default_run_dir
from cnnlab.runtime import Runtime

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
        f"(default: {ddp.DEFAULT_TIMEOUT:g})",
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


def job_run_dir(world: ddp.World, config: TrainConfig, out: Path | None) -> Path:
    """--out, else after a restart the folder this job created, else a new default name."""
    if out is not None:
        return Path(out)
    if world.restart > 0:
        mine = find_job_run(default_run_dir(config).parent, job_id(world))
        if mine is not None:
            return mine
    return default_run_dir(config)


def run_worker(
    args: argparse.Namespace,
    config: TrainConfig,
    world: ddp.World,
    runtime: Runtime,
    data: DataLocation | None,
    progress: bool,
) -> int:
    """One process of a torchrun job: join it, train or resume, leave it; rank 0 prints."""
    runtime = replace(runtime, device=ddp.process_device(world, runtime.device))
    job = WorkerJob(args, config, world, runtime, data, progress)
    try:
        ddp.init_process_group(world, runtime.device, getattr(args, "peer_timeout", None))
        try:
            result = job.train_or_resume()
        finally:
            ddp.close_process_group()
    except CnnlabError as err:
        report_error(world, err)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM from torchrun when another failed
        if world.is_main:
            stopped = "Terminated." if isinstance(err, Terminated) else "Interrupted."
            print(f"{stopped} {job.saved_note()}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    if world.is_main:
        print_outcome(result.test_accuracy, job.run_dir, config.epochs, world)
    return 0


class WorkerJob:
    """What one process trains, and what it saved (rank 0) for the messages."""

    def __init__(self, args, config, world, runtime, data, progress):
        self.args, self.config, self.world = args, config, world
        self.runtime, self.data, self.progress = runtime, data, progress
        self.resuming = "resume" in args
        self.run_dir = args.resume if self.resuming else None  # chosen by rank 0 otherwise
        self.saved = 0

    def on_saved(self, epoch: int) -> None:
        self.saved = epoch

    def saved_note(self) -> str:
        from cnnlab.cli.training import saved_epochs

        if self.run_dir is None:  # no folder was chosen yet
            return "No epoch was completed, so nothing was saved."
        nproc = self.world.size if self.world.size == self.world.local_size else None
        return saved_epochs(self.run_dir, self.saved, self.resuming, nproc=nproc)

    def train_or_resume(self):
        """The result; a failed collective becomes one line, on rank 0 with what is saved
        (another process, maybe on another machine, cannot see the run folder)."""
        world, args = self.world, self.args

        def with_saved(err) -> TrainingError:
            return TrainingError(f"{err} {self.saved_note()}" if world.is_main else str(err))

        try:
            if self.resuming:
                return resume_job(
                    self.run_dir,
                    self.runtime,
                    world,
                    self.data,
                    self.config.epochs,
                    progress=self.progress,
                    on_saved=self.on_saved,
                )
            out = getattr(args, "out", None)
            chosen = ddp.on_main(world, lambda: str(job_run_dir(world, self.config, out)))
            self.run_dir = Path(chosen)
            result, _ = train_job(
                self.config,
                self.runtime,
                world,
                self.data,
                self.run_dir,
                "overwrite" in args,
                progress=self.progress,
                on_saved=self.on_saved,
            )
            return result
        except TrainingError as err:
            raise with_saved(err) from None
        except (dist.DistError, RuntimeError) as err:
            lost = ddp.lost_peer(err, world)
            if lost is None:
                raise
            raise with_saved(lost) from None


def print_outcome(test_accuracy: float, run_dir: Path, epochs: int, world: ddp.World) -> None:
    where = os.path.abspath(run_dir)
    print(f"Test accuracy: {test_accuracy:.3f}")
    print(f"Evaluate: {shell_command('cnnlab', 'eval', where)}")
    further = ["train", "--resume", where, "--epochs", str(epochs + 5)]
    if world.size == world.local_size:
        print(f"Train further: {shell_command('cnnlab', *further, '--nproc', str(world.size))}")
    else:
        print(f"Train further: torchrun ... -m {shell_command('cnnlab', *further)}")


def report_error(world: ddp.World, err: CnnlabError) -> None:
    """Rank 0 prints its error as every cnnlab command does; another process says which it is,
    and says nothing when it stopped only because another one failed."""
    if isinstance(err, ddp.PeerFailed):
        return
    prefix = "" if world.is_main else f"(rank {world.rank}) "
    print(f"cnnlab: error: {prefix}{err}", file=sys.stderr)


def check_flags(args: argparse.Namespace, world: ddp.World | None) -> None:
    if "max_restarts" in args and "nproc" not in args:
        raise ConfigError("--max-restarts goes with --nproc (under torchrun: its --max-restarts)")
    if "nproc" in args and world is not None:
        raise ConfigError("--nproc starts torchrun, and this process already runs under it")
