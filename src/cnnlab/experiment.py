"""A training run from start to finish: data, run folder, config.json, fit, figures.

This is what `cnnlab train` calls; it is also the library entry point for a complete run:

    >>> result = train_run(TrainConfig(epochs=1), resolve_runtime(), data_root, Path("runs/demo"))
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab import __version__, checkpoint, viz
from cnnlab.config import TrainConfig
from cnnlab.data import DataSplits, get_dataset, load_dataset, make_splits
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import conv_layer_names
from cnnlab.runtime import Runtime
from cnnlab.train import FitResult, fit

VAL_SPLIT_SEED = 0  # the validation hold-out is the same for every training seed


def default_run_dir(config: TrainConfig, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{config.model}-{config.dataset}"


def load_splits(config: TrainConfig, data_root: Path) -> DataSplits:
    train, test = load_dataset(get_dataset(config.dataset), data_root)
    return make_splits(
        train, test, config.val_size, config.train_subset, config.test_subset, VAL_SPLIT_SEED
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
) -> FitResult:
    """Train a new run into `run_dir` and write every run file."""
    splits = load_splits(config, data_root)
    checkpoint.prepare_run_dir(run_dir, overwrite)
    log(f"Run folder: {run_dir}")
    checkpoint.write_json(
        run_dir / checkpoint.CONFIG_FILE, run_config_json(config, runtime, data_root)
    )
    result = fit(config, splits, runtime, run_dir=run_dir, log=log, progress=progress)
    write_run_figures(run_dir, result)
    return result


def resume_config(run_dir: Path, epochs: int | None = None) -> TrainConfig:
    """The recorded recipe of `run_dir`, with the epoch count extended to `epochs` if given."""
    recorded = checkpoint.read_json(Path(run_dir) / checkpoint.CONFIG_FILE)
    try:
        config = TrainConfig.from_json(recorded["train"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(
            f"{run_dir}: config.json has no valid 'train' section ({err})"
        ) from None
    if epochs is not None:
        config = TrainConfig.from_json(config.to_json(), epochs=epochs)
    return config


def resume_run(
    run_dir: Path,
    runtime: Runtime,
    data_root: Path,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> FitResult:
    """Continue `run_dir` from its last completed epoch (to `epochs` in all, if given)."""
    run_dir = Path(run_dir)
    config = resume_config(run_dir, epochs)
    state = checkpoint.load_training_state(run_dir)
    if config.epochs < state.epochs_done:
        raise ConfigError(
            f"--epochs {config.epochs} is fewer than the {state.epochs_done} epochs already done"
        )
    if config.epochs == state.epochs_done:
        raise ConfigError(
            f"{run_dir} already finished its {state.epochs_done} epochs; pass --epochs N "
            f"(more than {state.epochs_done}) to train it further"
        )
    splits = load_splits(config, data_root)
    log(f"Run folder: {run_dir}")
    log(f"Resuming after epoch {state.epochs_done} of {config.epochs}")
    recorded = checkpoint.read_json(run_dir / checkpoint.CONFIG_FILE)
    recorded["train"] = config.to_json()
    checkpoint.write_json(run_dir / checkpoint.CONFIG_FILE, recorded)
    result = fit(config, splits, runtime, run_dir=run_dir, resume=state, log=log, progress=progress)
    write_run_figures(run_dir, result)
    return result


def write_run_figures(run_dir: Path, result: FitResult) -> None:
    viz.save_figure(viz.loss_curve(result.metrics, result.step_losses), run_dir / "loss.png")
    convs = conv_layer_names(result.model)
    if convs:
        weight = result.model.get_submodule(convs[0]).weight
        viz.save_figure(
            viz.filter_grid(weight, f"Learned filters, {convs[0]}"), run_dir / "filters.png"
        )
