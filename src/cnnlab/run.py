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
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import __version__, checkpoint, runfolder
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.config import TrainConfig
from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.data.preprocess import Normalization
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import DataSplits, make_splits
from cnnlab.errors import CheckpointError, ConfigError, shell_command
from cnnlab.files import (
    PICKLE_SUFFIXES,
    atomic_write_text,
    load_safetensors,
    parse_json,
    read_bounded,
    refuse_pickle,
)
from cnnlab.models import ModelConfig, conv_layer_names, create_model
from cnnlab.runtime import Runtime
from cnnlab.train import EpochEnd, FitResult, fit
from cnnlab.viz import save_figure
from cnnlab.viz import training as viz

MAX_METRICS_BYTES = 64 << 20
VAL_SPLIT_SEED = 0  # the validation hold-out is the same for every training seed


def default_run_dir(config: TrainConfig, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{config.model}-{config.dataset}"


def load_splits(config: TrainConfig, data_root: Path) -> DataSplits:
    spec = get_dataset(config.dataset)
    train, test = load_dataset(spec, data_root)
    return make_splits(
        train,
        test,
        config.val_size,
        config.train_subset,
        config.test_subset,
        VAL_SPLIT_SEED,
        spec=spec,
    )


def run_splits(run, data_root: Path, test_subset: int | None = None) -> DataSplits:
    """The splits a loaded run saw: its validation hold-out, its test subset (or `test_subset`)."""
    cfg = run.train_config
    train, test = load_dataset(run.dataset, data_root)
    return make_splits(
        train,
        test,
        cfg.get("val_size", 0),
        None,
        test_subset or cfg.get("test_subset"),
        run.config.get("val_split_seed", VAL_SPLIT_SEED),
        spec=run.dataset,
    )


def run_config_json(config: TrainConfig, runtime: Runtime, data_root: Path) -> dict:
    """config.json: rebuild the model ("model"), rerun the training ("train"), and provenance."""
    import torchvision

    spec = get_dataset(config.dataset)
    return {
        "model": config.model_config().to_json(),
        "train": config.to_json(),
        "dataset": {"name": spec.name, "classes": list(spec.classes), "shape": list(spec.shape)},
        "normalization": spec.normalization(config.normalize).to_json(),
        "val_split_seed": VAL_SPLIT_SEED,
        "runtime": runtime.to_json(),
        "seed": config.seed,
        "data_root": str(data_root),
        "versions": {
            "cnnlab": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }


def train_run(
    config: TrainConfig,
    runtime: Runtime,
    data_root: Path,
    run_dir: Path,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_saved: Callable[[int], None] | None = None,
) -> FitResult:
    """Train a new run into `run_dir` and write every run file.

    Everything that can be checked is checked before the folder is touched: the data, the
    model's size, the folder, the free space. The run trains in a staging folder and replaces
    the folder's previous run only once its first epoch is saved (`cnnlab.runfolder`).
    `on_saved(n)` is called each time this run's epoch `n` is saved in `run_dir`.
    """
    run_dir = Path(run_dir)
    splits = load_splits(config, data_root)
    with torch.device("meta"):  # checks the model and sizes its files, allocating nothing
        probe = create_model(config.model_config())
    model_bytes = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    recorded = run_config_json(config, runtime, data_root)
    with runfolder.new_run(run_dir, recorded, overwrite, 4 * model_bytes + (1 << 20)) as stage:
        log(f"Run folder: {run_dir}")

        def save(end: EpochEnd) -> None:
            stage.save(lambda folder: save_epoch(folder, end))
            if on_saved is not None:
                on_saved(len(end.metrics))

        result = fit(config, splits, runtime, on_epoch=save, log=log, progress=progress)
        write_run_figures(run_dir, result)
    return result


def not_started_message(run_dir: Path) -> str:
    """What a folder whose training stopped before its first epoch ended says, for every command."""
    return (
        f"{run_dir} holds no completed epoch (its training stopped before the first epoch "
        f"ended), so there is nothing to resume or evaluate; start it again with: "
        f"{restart_command(run_dir)}"
    )


def restart_command(run_dir: Path) -> str:
    """The command that trains the recipe in `run_dir`'s config.json again, in its place."""
    config, out = os.path.abspath(run_dir / CONFIG_FILE), os.path.abspath(run_dir)
    return shell_command("cnnlab", "train", "--config", config, "--out", out, "--overwrite")


def write_run_figures(run_dir: Path, result: FitResult) -> None:
    save_figure(viz.loss_curve(result.metrics, result.step_losses), run_dir / "loss.png")
    convs = conv_layer_names(result.model)
    if convs:
        weight = result.model.get_submodule(convs[0]).weight
        save_figure(
            viz.filter_grid(weight, f"Learned filters, {convs[0]}"), run_dir / "filters.png"
        )


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    """Rewrite metrics.jsonl from the list (atomic; each epoch appears exactly once)."""
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in metrics))


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl ([] when there is none), read within bounds."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = [
        parse_json(line, path)
        for line in read_bounded(path, CheckpointError, MAX_METRICS_BYTES).splitlines()
        if line.strip()
    ]
    if not all(isinstance(r, dict) for r in records):
        raise CheckpointError(f"{path}: not valid JSON lines (each line must be an object)")
    return records


@dataclass
class LoadedRun:
    run_dir: Path
    config: dict  # the whole config.json
    model_config: ModelConfig
    model: torch.nn.Module

    @property
    def dataset(self) -> DatasetSpec:
        """The dataset the run was trained on (checked by `schema.check_run_config` on loading)."""
        return get_dataset(run_dataset_name(self.config))

    @property
    def train_config(self) -> dict:
        return self.config.get("train") or {}

    @property
    def normalization(self) -> Normalization:
        """How the run scaled its inputs; every prediction must scale the same way."""
        return Normalization.from_json(self.config.get("normalization"))


def find_run(path: Path) -> tuple[Path, Path]:
    """A run folder or a `.safetensors` file inside one -> (run folder, weights file)."""
    path = Path(path)
    if path.is_file() or (path.suffix and not path.is_dir()):  # a folder may have a dot in its name
        refuse_pickle(path)
        if not path.exists():
            raise CheckpointError(f"{path}: not found")
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: expected a run folder or a .safetensors file")
        return path.parent, path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run folder")
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            refuse_pickle(path / pickles[0])
        if (path / CHECKPOINT_FILE).exists():
            command = shell_command("cnnlab", "train", "--resume", os.path.abspath(path))
            raise CheckpointError(
                f"{path}: no {WEIGHTS_FILE}, but {CHECKPOINT_FILE} holds the last saved epoch; "
                f"write the weights from it (and train on if epochs remain) with: {command}"
            )
        if (path / CONFIG_FILE).exists():
            raise CheckpointError(not_started_message(path))
        if any(p.name.startswith(runfolder.STAGING_PREFIX) for p in path.iterdir()):
            raise CheckpointError(
                f"{path}: no epoch saved yet (its first epoch is training, or was stopped; then "
                f"run the same cnnlab train command again)"
            )
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (not a cnnlab run folder?)")
    return path, weights


def load_run(path: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a trained model from a run folder (or a weights file inside one), in eval mode.

    Predict through `cnnlab.predict.Predictor` with the run's memory layout (as `evaluate_run`
    does) and the predictions are bit-identical to the trained model's.
    """
    run_dir, weights_path = find_run(path)
    config = checkpoint.read_run_config(run_dir)
    run_dataset_name(config, run_dir / CONFIG_FILE)
    model_config, model = checkpoint.model_from_config(config, run_dir / CONFIG_FILE)
    if weights_path.name == CHECKPOINT_FILE:
        tensors = checkpoint.load_training_state(run_dir).model_state
    else:
        tensors, _ = load_safetensors(
            weights_path,
            check=lambda header, _: checkpoint.check_weights_fit(header, model, weights_path),
        )
    checkpoint.load_weights(model, tensors, weights_path)
    model.to(device).eval()
    return LoadedRun(run_dir, config, model_config, model)


def run_dataset_name(config: dict, config_path: Path | str = CONFIG_FILE) -> str:
    """The dataset a run config names; a config that names none is refused, never guessed."""
    name = config.get("dataset", {}).get("name") or config.get("train", {}).get("dataset")
    if not isinstance(name, str):
        raise CheckpointError(f"{config_path}: no dataset recorded (expected dataset.name)")
    try:
        get_dataset(name)
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    return name


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
