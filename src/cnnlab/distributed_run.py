"""A run folder trained by a torchrun job: every process trains, rank 0 alone writes and prints.

The library entry points match `cnnlab.run.train_run` and `cnnlab.resume.resume_run`, with the
process's `World` (`cnnlab.distributed`) and an open process group:

    >>> result, run_dir = train_job(config, runtime, world, data, Path("runs/ddp"))
    >>> result = resume_job(Path("runs/ddp"), runtime, world)

Rank 0 writes the run folder exactly as one process does: a new run trains in the staging folder
of `cnnlab.runfolder.new_run` and is swapped in with its first epoch; a resumed run holds the
folder's lock throughout. The data is read by one process at a time (rank 0 first: it may
download and cache), so no two processes write the same file. Rank 0 records torchrun's job id in
config.json; when torchrun restarts the job after a failure (`--max-restarts`), rank 0 recognises
the run folder the job created and every process resumes it from its last completed epoch.
Resuming, every process reads the run folder's recipe and checkpoint (on several machines, the
folder must be on a file system they share).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from cnnlab import checkpoint, runfolder
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE
from cnnlab.config import TrainConfig
from cnnlab.data.sources import DataLocation
from cnnlab.data.splits import DataSplits
from cnnlab.distributed import (
    DataParallel,
    PeerFailed,
    World,
    any_failed,
    broadcast_json,
    check_batch_size,
    in_turn,
    on_main,
)
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.files import read_json
from cnnlab.resume import (
    restore_from_checkpoint,
    result_from_checkpoint,
    resume_plan,
    resume_saver,
    resumed_splits,
    start_resume,
)
from cnnlab.run import (
    as_location,
    begin_stage,
    epoch_bytes,
    load_splits,
    run_config_json,
    run_data_location,
    write_run_figures,
)
from cnnlab.runtime import Runtime
from cnnlab.train import EpochEnd, FitResult, fit

Saved = Callable[[int], None] | None


def job_id(world: World, env: Mapping[str, str] | None = None) -> str:
    """What identifies this torchrun job across its restarts: torchrun's run id, or where it
    has none (a static rendezvous without --rdzv-id) the launching agent on rank 0's machine."""
    if world.run_id and world.run_id != "none":
        return world.run_id
    env = os.environ if env is None else env
    return f"{socket.gethostname()}:{os.getppid()}:{env.get('MASTER_PORT', '')}"


def recorded_job(run_dir: Path) -> str | None:
    """The job id in `run_dir`'s config.json, None if there is none."""
    try:
        runtime = read_json(Path(run_dir) / CONFIG_FILE).get("runtime")
    except CheckpointError:
        return None
    return runtime.get("run_id") if isinstance(runtime, dict) else None


def find_job_run(root: Path, job: str) -> Path | None:
    """The run folder under `root` that job `job` created (a default --out), if any."""
    if not root.is_dir():
        return None
    return next((p for p in sorted(root.iterdir()) if recorded_job(p) == job), None)


def check_parallel_recipe(config: TrainConfig, world: World) -> None:
    check_batch_size(config.batch_size, world.size)
    if config.compile:
        raise ConfigError("--compile is not supported with several processes; leave it out")


def world_size_note(recorded: dict, world_size: int, sync_bn: bool) -> str | None:
    """What a user resuming a run on another number of processes should know."""
    runtime = recorded.get("runtime") if isinstance(recorded.get("runtime"), dict) else {}
    was = runtime.get("world_size", 1)
    if was == world_size:
        return None
    note = (
        f"Note: this run was trained on {was} process(es) and resumes on {world_size}: the "
        f"result will differ from an uninterrupted run in the last bits (the gradient is "
        f"summed in another order)"
    )
    if not sync_bn:
        note += ", and batch norm, without --sync-bn, sees each process's part of a batch"
    return note + "."


def data_identity(splits: DataSplits) -> dict[str, str]:
    """What must be the same on every process: the files' SHA-256 (as config.json records
    them), and where there are none (CIFAR-10, an image folder) the labels and the assignment
    of files to splits."""
    if splits.files:
        return {f.name: f.sha256 for f in splits.files}
    parts = {"shape": list(splits.train.images.shape[1:])}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        parts[f"{name} labels"] = None if split is None else split.labels.tolist()
    if splits.folder is not None:
        parts["files"] = {k: list(v) for k, v in splits.folder.assignment().items()}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"images and labels": digest}


def check_same_data(world: World, splits: DataSplits) -> None:
    """Every process must hold rank 0's data: on another machine, an identical copy."""
    mine = data_identity(splits)
    theirs = broadcast_json(mine if world.is_main else None)
    differ = sorted(name for name in set(mine) | set(theirs) if mine.get(name) != theirs.get(name))
    error = None
    if differ:
        error = DataError(
            f"this machine's data differs from rank 0's ({', '.join(differ)}); every machine "
            f"needs the same files"
        )
    if any_failed(error is not None):
        raise error or PeerFailed("another process holds other data")


def restarted_run(world: World, run_dir: Path) -> bool:
    """Rank 0's decision: True when torchrun restarted this job and `run_dir` is the folder the
    job created, with a completed epoch (what a killed attempt left is first finished or
    removed under the folder's lock); else a new run starts there."""
    if world.restart == 0 or not run_dir.is_dir():
        return False
    with runfolder.locked_run(run_dir):
        pass
    return recorded_job(run_dir) == job_id(world) and (run_dir / CHECKPOINT_FILE).exists()


def quiet(_: str) -> None:
    pass


def train_job(
    config: TrainConfig,
    runtime: Runtime,
    world: World,
    data: DataLocation | Path,
    run_dir: Path,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_saved: Saved = None,
) -> tuple[FitResult, Path]:
    """Train a new run into `run_dir` as one process of `world` (every process names the same
    folder). After a restart of the job, the folder it created is resumed instead
    (`resume_job`). Returns the result and the run folder.
    """
    log = log if world.is_main else quiet
    location, run_dir = as_location(data), Path(run_dir)
    on_main(world, lambda: check_parallel_recipe(config, world))
    show = progress and world.is_main
    splits = in_turn(world, lambda: load_splits(config, location, log=log, progress=show))
    check_same_data(world, splits)
    if on_main(world, lambda: restarted_run(world, run_dir)):
        log(f"torchrun restarted the job (restart {world.restart}); it resumes its own run")
        result = resume_job(run_dir, runtime, world, location, None, log, progress, on_saved)
        return result, run_dir
    runtime = replace(runtime, world_size=world.size)
    with contextlib.ExitStack() as stack:
        save = None

        def open_run() -> None:  # rank 0: the checks, the lock, the staging folder
            nonlocal save
            recorded = run_config_json(config, runtime, location, splits)
            recorded["runtime"]["run_id"] = job_id(world)
            size = epoch_bytes(config, splits)
            stage = stack.enter_context(runfolder.new_run(run_dir, recorded, overwrite, size))
            save = begin_stage(stage, splits, location, log, on_saved)
            each = config.batch_size // world.size
            log(f"Processes: {world.size}, each {each} images of a batch")

        on_main(world, open_run)
        result = run_fit(config, splits, runtime, world, run_dir, None, save, log, progress)
    return result, run_dir


def resume_job(
    run_dir: Path,
    runtime: Runtime,
    world: World,
    data: DataLocation | Path | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_saved: Saved = None,
) -> FitResult:
    """Continue `run_dir` from its last completed epoch as one process of `world`; rank 0 holds
    the folder's lock throughout."""
    log = log if world.is_main else quiet
    run_dir = Path(run_dir)
    runtime = replace(runtime, world_size=world.size)
    with contextlib.ExitStack() as stack:

        def lock_and_check() -> None:  # rank 0: what resume_run refuses, refused once
            stack.enter_context(runfolder.locked_run(run_dir))
            _, config, _ = resume_plan(run_dir, epochs)
            check_parallel_recipe(config, world)

        on_main(world, lock_and_check)
        recorded = checkpoint.read_run_config(run_dir)
        _, config, state = resume_plan(run_dir, epochs)
        if config.epochs == state.epochs_done:  # finished: only its last files are missing
            if world.is_main:
                return restore_from_checkpoint(run_dir, recorded, state, log)
            return result_from_checkpoint(run_dir, recorded, state)
        if data is None:
            data = run_data_location(recorded, log=log)
        location = as_location(data)
        show = progress and world.is_main
        splits = in_turn(
            world,
            lambda: resumed_splits(run_dir, config, state, recorded, location, log, show),
        )
        check_same_data(world, splits)
        note = world_size_note(recorded, world.size, config.sync_bn)
        job = {"run_id": job_id(world)}
        on_main(
            world,
            lambda: start_resume(
                run_dir, recorded, config, state, runtime, location, splits, log, job
            ),
        )
        if note:
            log(note)
        save = resume_saver(run_dir, on_saved)
        return run_fit(config, splits, runtime, world, run_dir, state, save, log, progress)


def run_fit(
    config: TrainConfig,
    splits: DataSplits,
    runtime: Runtime,
    world: World,
    run_dir: Path,
    state,
    save: Callable[[EpochEnd], None] | None,
    log: Callable[[str], None],
    progress: bool,
) -> FitResult:
    """`fit` with DistributedDataParallel; rank 0 saves each epoch (`save`) and the figures."""
    result = fit(
        config,
        splits,
        runtime,
        resume=state,
        on_epoch=save if world.is_main else None,
        log=log,
        progress=progress and world.is_main,
        parallel=DataParallel(world, runtime.device, config.sync_bn),
    )
    if world.is_main:
        write_run_figures(run_dir, result)
    return result
