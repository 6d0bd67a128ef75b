"""`cnnlab train`: train a model into a run folder (or resume one)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab import files
from cnnlab.choices import MAX_OPTION_INT, MODEL_NAMES
from cnnlab.cli import torchrun
from cnnlab.cli.common import (
    Terminated,
    add_data_dir,
    add_device,
    add_subset_flags,
    int_in,
    path_arg,
    positive_int,
    runtime_for,
    seed_int,
    setting_int,
)
from cnnlab.config import (
    AUGMENTS,
    DEFAULTS,
    FITS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    preset_config,
)
from cnnlab.data import get_dataset, list_datasets
from cnnlab.data.registry import FOLDER_PREFIX, folder_path, is_folder_dataset
from cnnlab.errors import (
    CheckpointError,
    ConfigError,
    EvaluationError,
    OutputError,
    TrainingError,
    shell_command,
)

if TYPE_CHECKING:
    from cnnlab.data.sources import DataLocation

D = DEFAULTS  # the defaults the help texts state
RESUMABLE = {"epochs", "device", "precision", "data_dir", "quiet", "threads", *torchrun.FLAGS}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (the tutorial's recipe by default)",
        description="Train a model and write a run folder: config.json, metrics.jsonl, "
        "model.safetensors, checkpoint.safetensors, loss.png, filters.png.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--model", help=f"one of {', '.join(MODEL_NAMES)} (default: {D.model})")
    p.add_argument(
        "--hidden",
        type=int_in(1, MAX_OPTION_INT),
        help="hidden width of the mlp model (default: 128)",
    )
    p.add_argument(
        "--dataset",
        help=f"one of {', '.join(list_datasets())}, or folder:PATH, a folder of class folders "
        f"(PATH/<class>/<image>, or PATH/train/<class>/... with PATH/test/) (default: {D.dataset})",
    )
    p.add_argument("--epochs", type=setting_int("epochs"), help=f"(default: {D.epochs})")
    p.add_argument(
        "--batch-size", type=setting_int("batch_size"), help=f"(default: {D.batch_size})"
    )
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {D.lr:g})")
    p.add_argument("--optimizer", help=f"{', '.join(OPTIMIZERS)} (default: {D.optimizer})")
    p.add_argument("--momentum", type=float, help=f"for sgd (default: {D.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"(default: {D.weight_decay})")
    p.add_argument("--schedule", help=f"{', '.join(SCHEDULES)} (default: {D.schedule})")
    p.add_argument("--label-smoothing", type=float, help=f"(default: {D.label_smoothing})")
    p.add_argument("--seed", type=seed_int, help=f"0 to 2**32-1 (default: {D.seed})")
    p.add_argument(
        "--val-size",
        type=setting_int("val_size"),
        help="hold out N training images for validation after each epoch (default: 0)",
    )
    add_subset_flags(p)
    p.add_argument(
        "--normalize",
        action="store_true",
        help="subtract the dataset mean and divide by its std after x/255 (default: x/255 only)",
    )
    p.add_argument(
        "--augment",
        help=f"augment each training batch: {', '.join(AUGMENTS)}; natural: random crop of the "
        "4-pixel padded image and horizontal flip; digits: small rotation, zoom and shift and "
        "stroke thickness, no flip (default: none)",
    )
    add_folder_flags(p)
    add_device(p, precision=True, default=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help="use torch.compile (default: off)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads, at most the number of CPUs, kept for the whole run (default: the "
        "CPUs other processes leave free, followed while training; on --resume, the run's)",
    )
    p.add_argument(
        "--out", type=path_arg, help="run folder (default: runs/<date-time>-<model>-<dataset>)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the cnnlab run in an existing --out folder (the old run stays until the "
        "new one has saved its first epoch; other files in the folder are kept)",
    )
    p.add_argument(
        "--preset",
        help=f"a named recipe: {', '.join(PRESETS)}; flags given beside it override it "
        "(default: tutorial)",
    )
    p.add_argument(
        "--config",
        type=path_arg,
        metavar="RUN/config.json",
        help="rerun a recorded run's recipe; flags given beside it override it",
    )
    p.add_argument(
        "--resume",
        type=path_arg,
        metavar="RUN",
        help="continue RUN from its last completed epoch, with the threads, device and precision "
        "it used unless given; with --epochs N, extend it to N epochs",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (epoch lines and the result still print)",
    )
    add_data_dir(p)
    torchrun.add_flags(p)
    p.set_defaults(handler=run_train)


def add_folder_flags(p: argparse.ArgumentParser) -> None:
    """How a folder:PATH dataset is read; settings left out follow the images."""
    p.add_argument(
        "--image-size",
        type=positive_int,
        metavar="PIXELS",
        help="folder datasets: resize to PIXELSxPIXELS (default: the images' size when they all "
        "share one, else 32)",
    )
    p.add_argument(
        "--channels",
        type=positive_int,
        help="folder datasets: 1 (greyscale) or 3 (colour) (default: 1 when every image is "
        "greyscale, else 3)",
    )
    p.add_argument(
        "--fit",
        help=f"folder datasets: how other sizes are fitted, one of {', '.join(FITS)}; crop scales "
        "to cover and cuts the centre, pad scales to fit and pads with black (default: crop)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        help="folder datasets without a test/ folder: the share of each class held out for "
        f"testing, seeded and recorded in the run's splits.json (default: {D.test_fraction})",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="folder datasets: stop when any image file cannot be read (default: skip it, list "
        "it in the run's skipped.txt)",
    )
    p.add_argument(
        "--memory-budget",
        type=positive_int,
        metavar="MB",
        help="folder datasets: decoded images above this many MiB are memory-mapped from the "
        f"cache instead of held in memory (default: {D.memory_budget})",
    )


TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


def absolute_folder(dataset: str) -> str:
    """folder:PATH with PATH made absolute, so that eval and --resume work from any folder."""
    if not is_folder_dataset(dataset):
        return dataset
    return FOLDER_PREFIX + os.path.abspath(os.path.expanduser(folder_path(dataset)))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS}
    base = {}
    if "preset" in args:
        if "config" in args:
            raise ConfigError("--preset and --config both set the recipe; give one of them")
        base = preset_config(args.preset).to_json()
    if "config" in args:
        base = files.read_json(args.config, error=ConfigError).get("train")
        if not isinstance(base, dict):
            raise ConfigError(f"{args.config}: no 'train' section (is it a cnnlab config.json?)")
        try:  # the rules the flags are held to (cnnlab.config.TrainConfig)
            TrainConfig.from_json(base)
        except ConfigError as err:
            raise ConfigError(f"{args.config}: {err}") from None
    if "hidden" in args:
        given["model_options"] = {**base.get("model_options", {}), "hidden": args.hidden}
    if "dataset" in given:
        given["dataset"] = absolute_folder(given["dataset"])
    return TrainConfig.from_json(base, **given)


def run_train(args: argparse.Namespace) -> int:
    from cnnlab import checkpoint
    from cnnlab.data.sources import explicit_location
    from cnnlab.distributed import threads_per_process, world_from_env
    from cnnlab.distributed_run import world_size_note
    from cnnlab.phases import Phases, process_seconds
    from cnnlab.resume import resume_config, resume_run
    from cnnlab.run import default_run_dir, train_run
    from cnnlab.runtime import resume_settings

    quiet = "quiet" in args
    progress = not quiet and sys.stderr.isatty()
    data_dir = getattr(args, "data_dir", None)
    resuming = "resume" in args
    world = world_from_env()  # None unless this process is one of a torchrun job
    torchrun.check_flags(args, world)
    threads = getattr(args, "threads", None)
    if threads is None and world is not None:  # the machine's cores shared by its processes
        threads = threads_per_process(world.local_size)
    if resuming:
        extra = sorted(
            k for k in vars(args) if k not in RESUMABLE | {"resume", "handler", "command"}
        )
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise ConfigError(f"{flags} cannot be changed when resuming; only --epochs can")
        run_dir = args.resume
        config = resume_config(run_dir, getattr(args, "epochs", None))
        recorded = checkpoint.read_run_config(run_dir)
        device, precision, threads = resume_settings(
            recorded.get("runtime", {}),
            getattr(args, "device", None),
            getattr(args, "precision", None),
            threads,
        )
    else:
        config = config_from_args(args)
        run_dir = getattr(args, "out", None) or default_run_dir(config)
        device = getattr(args, "device", config.device)
        precision = config.precision
    if "nproc" in args:
        return torchrun.launch(args, config, run_dir)
    runtime = runtime_for(device, precision, threads, follow_load=True)
    if world is not None:
        data = explicit_location(data_dir) if resuming else new_run_data(config, data_dir)
        from cnnlab.cli.torchrun_worker import run_worker

        return run_worker(args, config, world, runtime, data, progress)
    if resuming and (note := world_size_note(recorded, 1, config.sync_bn)):
        print(note)
    saved = 0  # the last epoch this process saved in run_dir

    def on_saved(epoch: int) -> None:
        nonlocal saved
        saved = epoch

    phases = Phases()
    phases.add("start-up", process_seconds())  # the interpreter, imports, checks
    try:
        if resuming:
            data = explicit_location(data_dir)  # else the root the run recorded
            result = resume_run(
                run_dir,
                runtime,
                data,
                config.epochs,
                progress=progress,
                on_saved=on_saved,
                phases=phases,
            )
        else:
            overwrite = "overwrite" in args
            result = train_run(
                config,
                runtime,
                new_run_data(config, data_dir),
                run_dir,
                overwrite,
                progress=progress,
                on_saved=on_saved,
                phases=phases,
            )
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated)
        stopped = "Terminated." if isinstance(err, Terminated) else "Interrupted."
        print(f"{stopped} {saved_epochs(run_dir, saved, resuming)}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except (TrainingError, EvaluationError, OutputError) as err:  # a diverging loss, a full disk
        raise type(err)(f"{err}. {saved_epochs(run_dir, saved, resuming)}") from None
    where = os.path.abspath(run_dir)
    print(f"Test accuracy: {result.test_accuracy:.3f}")
    print(f"Evaluate: {shell_command('cnnlab', 'eval', where)}")
    further = shell_command("cnnlab", "train", "--resume", where, "--epochs", config.epochs + 5)
    print(f"Train further: {further}")
    print(f"Time: {phases.line(process_seconds())}")
    return 0


def new_run_data(config: TrainConfig, data_dir: Path | None) -> DataLocation:
    """Where a new run's data is: a folder dataset's folder, else the located data root."""
    from cnnlab.data.sources import DataLocation, locate_data

    if is_folder_dataset(config.dataset):
        return DataLocation(Path(folder_path(config.dataset)), "--dataset")
    return locate_data(get_dataset(config.dataset), data_dir)


def saved_epochs(run_dir: Path, saved: int, resuming: bool, nproc: int | None = None) -> str:
    """What a stopped training left in `run_dir`, and the command that continues it (with
    `--nproc nproc` for a job of that many processes)."""
    from cnnlab import runfiles, runfolder

    if resuming:  # the run's earlier epochs are there whatever this process saved
        with contextlib.suppress(CheckpointError):
            saved = max(saved, len(runfiles.read_metrics(run_dir)))
    if saved == 0:
        kept = (
            " The folder's previous run is unchanged." if runfolder.is_cnnlab_run(run_dir) else ""
        )
        return f"No epoch was completed, so nothing was saved.{kept}"
    processes = () if nproc is None else ("--nproc", nproc)
    resume = shell_command("cnnlab", "train", "--resume", os.path.abspath(run_dir), *processes)
    return f"Epoch {saved} is saved in {run_dir}. Resume with: {resume}"
