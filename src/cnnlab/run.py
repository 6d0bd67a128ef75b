"""A run folder from start to finish: data, config.json, fit, each epoch's files, figures, loading.

This is what `cnnlab train` calls; it is also the library entry point for a complete run:

    >>> result = train_run(TrainConfig(epochs=1), runtime, data_root, Path("runs/demo"))
    >>> run = load_run("runs/demo")   # the model rebuilt from config.json, weights from safetensors

A run folder holds:

    config.json             how to rebuild the model and rerun the training (+ versions, device)
    metrics.jsonl           one JSON line per completed epoch
    model.safetensors       the weights after the last completed epoch
    checkpoint.safetensors  what `--resume` needs (cnnlab.checkpoint)
    loss.png, filters.png   figures (derived files: other commands may add more)
    splits.json             a folder dataset's file names per split (and skipped.txt: the files
                            that could not be read)
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from cnnlab import __version__, checkpoint, runfolder
from cnnlab.config import TrainConfig
from cnnlab.data import folder_splits as folders
from cnnlab.data import get_dataset
from cnnlab.data.identity import check_recorded, describe
from cnnlab.data.registry import is_folder_dataset
from cnnlab.data.sources import (
    PACKAGED_ROOT,
    DataLocation,
    is_present,
    locate_data,
    read_dataset,
)
from cnnlab.data.splits import DataSplits, make_splits
from cnnlab.models import conv_layer_names, create_model
from cnnlab.phases import Phases
from cnnlab.runfiles import (
    VAL_SPLIT_SEED,
    run_dataset_name,
    write_metrics,
)
from cnnlab.runtime import Runtime
from cnnlab.train import EpochEnd, FitResult, fit
from cnnlab.viz import save_figure
from cnnlab.viz import training as viz


def default_run_dir(config: TrainConfig, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = config.dataset
    if is_folder_dataset(dataset):  # folder:/data/photos -> folder-photos
        dataset = "folder-" + (Path(config.folder_options().path).expanduser().resolve().name)
    return root / f"{stamp}-{config.model}-{dataset}"


def as_location(data: DataLocation | Path) -> DataLocation:
    return data if isinstance(data, DataLocation) else DataLocation(Path(data), "given")


def load_splits(
    config: TrainConfig,
    data: DataLocation | Path,
    recorded: dict | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> DataSplits:
    """The recipe's splits with their spec (a folder's is built from the folder), read from
    `data`; with `recorded` (a run's "data" entry), the files must be those the run used."""
    if is_folder_dataset(config.dataset):
        options = config.folder_options(VAL_SPLIT_SEED)
        return folders.folder_splits(
            options, config.train_subset, config.test_subset, log, progress
        )
    spec = get_dataset(config.dataset)
    location = as_location(data)
    raw = read_dataset(spec, location.root)
    check_recorded(recorded, list(raw.files), str(location.root / spec.raw_folder))
    splits = make_splits(
        raw.train,
        raw.test,
        config.val_size,
        config.train_subset,
        config.test_subset,
        VAL_SPLIT_SEED,
        spec=spec,
    )
    splits.files = raw.files
    return splits


def run_splits(run, data: DataLocation | Path, test_subset: int | None = None) -> DataSplits:
    """The splits a loaded run saw: its validation hold-out, its test subset (or `test_subset`),
    from the same files (checked against the fingerprint in config.json)."""
    cfg = run.train_config
    if run.dataset.kind == "folder":
        splits = folders.folder_splits(
            run.dataset.folder, None, test_subset or cfg.get("test_subset")
        )
        folders.check_assignment(run.run_dir, splits)
        return splits
    location = as_location(data)
    raw = read_dataset(run.dataset, location.root)
    check_recorded(run.config.get("data"), list(raw.files), str(location.root))
    return make_splits(
        raw.train,
        raw.test,
        cfg.get("val_size", 0),
        None,
        test_subset or cfg.get("test_subset"),
        run.config.get("val_split_seed", VAL_SPLIT_SEED),
        spec=run.dataset,
    )


def run_data_location(
    run_config: dict,
    data_dir: Path | None = None,
    env=None,
    log: Callable[[str], None] = print,
) -> DataLocation:
    """Where a run's data is read from: --data-dir or $CNNLAB_DATA when given, else the root the
    run recorded (the packaged copy is found wherever this cnnlab is installed), else the usual
    search with a note."""
    env = os.environ if env is None else env
    name = run_dataset_name(run_config)
    if is_folder_dataset(name):  # a folder run reads its own recorded folder
        return DataLocation(Path(name.split(":", 1)[1]), "the run's image folder")
    spec = get_dataset(name)
    if data_dir or env.get("CNNLAB_DATA"):
        return locate_data(spec, data_dir, env)
    data = run_config.get("data") if isinstance(run_config.get("data"), dict) else {}
    if data.get("origin") == "packaged copy" and is_present(spec, PACKAGED_ROOT):
        return DataLocation(PACKAGED_ROOT, "packaged copy, as recorded in config.json")
    recorded = data.get("root") or run_config.get("data_root")
    if isinstance(recorded, str) and recorded:
        if is_present(spec, Path(recorded)):
            return DataLocation(Path(recorded), "recorded in config.json")
        log(f"Note: the recorded data root {recorded} no longer holds {spec.name}; searching")
    return locate_data(spec, None, env)


def data_json(location: DataLocation, files) -> dict:
    """config.json's "data": where the data came from and the fingerprint of every file."""
    return {
        "root": str(location.root.resolve()),
        "origin": location.origin,
        "official": all(f.official for f in files),
        "files": {f.name: f.to_json() for f in files},
    }


def run_config_json(
    config: TrainConfig,
    runtime: Runtime,
    location: DataLocation | Path,
    splits: DataSplits | None = None,
) -> dict:
    """config.json: rebuild the model ("model"), rerun the training ("train"), and provenance.

    `splits` are the run's (their spec is the dataset resolved where the run started).
    """
    spec = splits.spec if splits is not None and splits.spec else get_dataset(config.dataset)
    dataset = folders.dataset_json(splits) if spec.kind == "folder" else spec.to_json()
    location = as_location(location)
    files = splits.files if splits is not None else ()
    return {
        "model": config.model_config(spec).to_json(),
        "train": config.to_json(),
        "dataset": dataset,
        "normalization": spec.normalization(config.normalize).to_json(),
        "val_split_seed": VAL_SPLIT_SEED,
        "runtime": runtime.to_json(),
        "seed": config.seed,
        "data_root": str(location.root.resolve()),
        "data": data_json(location, files),
        "versions": {
            "cnnlab": __version__,
            "torch": torch.__version__,
            "torchvision": package_version("torchvision"),  # importing it takes seconds
            "python": platform.python_version(),
        },
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }


def package_version(name: str) -> str:
    """An installed package's version, read from its metadata without importing it."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def train_run(
    config: TrainConfig,
    runtime: Runtime,
    data: DataLocation | Path,
    run_dir: Path,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_saved: Callable[[int], None] | None = None,
    phases: Phases | None = None,
) -> FitResult:
    """Train a new run into `run_dir` and write every run file; `phases` gets where the seconds
    went (data, setup, training, evaluation, saving, figures).

    Everything that can be checked is checked before the folder is touched: the data, the
    model's size, the folder, the free space. The run trains in a staging folder and replaces
    the folder's previous run only once its first epoch is saved (`cnnlab.runfolder`).
    `on_saved(n)` is called each time this run's epoch `n` is saved in `run_dir`.
    """
    phases = phases if phases is not None else Phases()
    run_dir = Path(run_dir)
    location = as_location(data)
    with phases("data"):
        splits = load_splits(config, location, log=log, progress=progress)
        recorded = run_config_json(config, runtime, location, splits)
    with runfolder.new_run(run_dir, recorded, overwrite, epoch_bytes(config, splits)) as stage:
        save = begin_stage(stage, splits, location, log, on_saved)
        result = fit(
            config, splits, runtime, on_epoch=save, log=log, progress=progress, phases=phases
        )
        with phases("figures"):
            write_run_figures(run_dir, result)
    return result


def epoch_bytes(config: TrainConfig, splits: DataSplits) -> int:
    """About what an epoch's files take on disk; building the model checks it, on no device."""
    with torch.device("meta"):  # allocates nothing
        probe = create_model(config.model_config(splits.spec))
    model_bytes = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    return 4 * model_bytes + (1 << 20)


def begin_stage(
    stage: runfolder.Stage,
    splits: DataSplits,
    location: DataLocation,
    log: Callable[[str], None],
    on_saved: Callable[[int], None] | None = None,
) -> Callable[[EpochEnd], None]:
    """Say where the run goes and on what data, stage a folder dataset's files, and return
    `fit`'s per-epoch hook that saves into the stage (then the run folder)."""
    log(f"Run folder: {stage.run_dir}")
    if splits.folder is not None:  # splits.json and skipped.txt, swapped in with the run
        folders.write_folder_files(stage.staging, splits, log, stage.run_dir)
    else:
        log(f"Data: {location.describe()}, {describe(list(splits.files))}")

    def save(end: EpochEnd) -> None:
        stage.save(lambda folder: save_epoch(folder, end))
        if on_saved is not None:
            on_saved(len(end.metrics))

    return save


def write_run_figures(run_dir: Path, result: FitResult) -> None:
    save_figure(viz.loss_curve(result.metrics, result.step_losses), run_dir / "loss.png")
    convs = conv_layer_names(result.model)
    if convs:
        weight = result.model.get_submodule(convs[0]).weight
        save_figure(
            viz.filter_grid(weight, f"Learned filters, {convs[0]}"), run_dir / "filters.png"
        )


def save_epoch(run_dir: Path, end: EpochEnd) -> None:
    """Everything a completed epoch leaves, each file atomic: the checkpoint first (what resume
    reads), then the weights, then metrics.jsonl (rewritten from the checkpoint on resume)."""
    checkpoint.save_training_state(
        run_dir,
        end.model,
        end.optimizer,
        len(end.metrics),
        end.global_step,
        end.metrics,
        end.step_losses,
    )
    checkpoint.save_weights(run_dir, end.model)
    write_metrics(run_dir, end.metrics)


def saver(run_dir: Path) -> Callable[[EpochEnd], None]:
    """`fit`'s per-epoch hook that writes the run folder."""
    return lambda end: save_epoch(run_dir, end)
