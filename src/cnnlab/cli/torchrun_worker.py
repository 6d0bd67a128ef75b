"""One process of a `cnnlab train` torchrun job: join the group, train or resume, leave it;
rank 0 writes the run folder and prints."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from cnnlab import distributed as ddp
from cnnlab.cli.common import Terminated
from cnnlab.config import TrainConfig
from cnnlab.data.sources import DataLocation
from cnnlab.distributed_run import (
    find_job_run,
    job_id,
    resume_job,
    train_job,
)
from cnnlab.errors import CnnlabError, TrainingError, shell_command
from cnnlab.run import default_run_dir
from cnnlab.runtime import Runtime


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
