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
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import __version__, checkpoint
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE
from cnnlab.config import TrainConfig
from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.data import folder_splits as folders
from cnnlab.data.identity import check_recorded, describe
from cnnlab.data.preprocess import Normalization
from cnnlab.data.registry import folder_spec_from_json, is_folder_dataset
from cnnlab.data.sources import (
    PACKAGED_ROOT,
    DataLocation,
    is_present,
    locate_data,
    read_dataset,
)
from cnnlab.data.splits import DataSplits, make_splits
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.files import (
    PICKLE_SUFFIXES,
    atomic_write_text,
    load_safetensors,
    prepare_output_dir,
    read_json,
    refuse_pickle,
    write_json,
)
from cnnlab.models import ModelConfig, conv_layer_names
from cnnlab.runtime import Runtime
from cnnlab.train import EpochEnd, FitResult, fit
from cnnlab.viz import save_figure
from cnnlab.viz import training as viz

METRICS_FILE = "metrics.jsonl"
TRAINING_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    CHECKPOINT_FILE,
    "loss.png",
    "filters.png",
    folders.ASSIGNMENT_FILE,
    folders.SKIPPED_FILE,
)
VAL_SPLIT_SEED = 0  # the validation hold-out is the same for every training seed


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
    import torchvision

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
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }


def train_run(
    config: TrainConfig,
    runtime: Runtime,
    data: DataLocation | Path,
    run_dir: Path,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> FitResult:
    """Train a new run into `run_dir` and write every run file."""
    location = as_location(data)
    splits = load_splits(config, location, log=log, progress=progress)
    prepare_run_dir(run_dir, overwrite)
    log(f"Run folder: {run_dir}")
    if splits.folder is not None:
        folders.write_folder_files(run_dir, splits, log)
    else:
        log(f"Data: {location.describe()}, {describe(list(splits.files))}")
    write_json(run_dir / CONFIG_FILE, run_config_json(config, runtime, location, splits))
    result = fit(config, splits, runtime, on_epoch=saver(run_dir), log=log, progress=progress)
    write_run_figures(run_dir, result)
    return result


def resume_config(run_dir: Path, epochs: int | None = None) -> TrainConfig:
    """The recorded recipe of `run_dir`, with the epoch count extended to `epochs` if given."""
    recorded = read_json(Path(run_dir) / CONFIG_FILE)
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
    data: DataLocation | Path | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> FitResult:
    """Continue `run_dir` from its last completed epoch (to `epochs` in all, if given), on the
    data it was trained with (`data`, else the recorded root; the files' fingerprint is checked)."""
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
    recorded = read_json(run_dir / CONFIG_FILE)
    location = as_location(data) if data is not None else run_data_location(recorded, log=log)
    splits = load_splits(config, location, recorded.get("data"), log, progress)
    if splits.folder is not None:
        folders.check_assignment(run_dir, splits)
    log(f"Run folder: {run_dir}")
    if splits.folder is None:
        log(f"Data: {location.describe()}, {describe(list(splits.files))}")
    log(f"Resuming after epoch {state.epochs_done} of {config.epochs}")
    recorded["train"] = config.to_json()
    write_json(run_dir / CONFIG_FILE, recorded)
    result = fit(
        config,
        splits,
        runtime,
        resume=state,
        on_epoch=saver(run_dir),
        log=log,
        progress=progress,
    )
    write_run_figures(run_dir, result)
    return result


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
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON lines ({err})") from None


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create (or, with `overwrite`, reuse) a run folder and check that it can be written.

    An existing non-empty folder is refused unless `overwrite`; then only cnnlab's own training
    files are replaced, never the user's other files.
    """
    refusal = (
        f"run folder {path} already exists and is not empty; pass --overwrite to replace its "
        f"training files, or --resume {path} to continue it"
    )
    return prepare_output_dir(path, TRAINING_FILES, overwrite, refusal)


@dataclass
class LoadedRun:
    run_dir: Path
    config: dict  # the whole config.json
    model_config: ModelConfig
    model: torch.nn.Module

    @property
    def dataset(self) -> DatasetSpec:
        """The run's dataset (checked on loading; a folder's is read from config.json alone)."""
        return run_dataset(self.config)

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
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (not a cnnlab run folder?)")
    return path, weights


def load_run(path: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a trained model from a run folder (or a weights file inside one), in eval mode.

    Predict through `cnnlab.predict.Predictor` with the run's memory layout (as `evaluate_run`
    does) and the predictions are bit-identical to the trained model's.
    """
    run_dir, weights_path = find_run(path)
    config = read_json(run_dir / CONFIG_FILE)
    check_run_config(config, run_dir / CONFIG_FILE)
    model_config, model = checkpoint.model_from_config(config, run_dir / CONFIG_FILE)
    tensors, _ = load_safetensors(weights_path)
    if weights_path.name == CHECKPOINT_FILE:
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    checkpoint.load_weights(model, tensors, weights_path)
    model.to(device).eval()
    return LoadedRun(run_dir, config, model_config, model)


def run_dataset_name(config: dict, config_path: Path | str = CONFIG_FILE) -> str:
    """The dataset a run config names; a config that names none is refused, never guessed."""
    name = config.get("dataset", {}).get("name") or config.get("train", {}).get("dataset")
    if not isinstance(name, str):
        raise CheckpointError(f"{config_path}: no dataset recorded (expected dataset.name)")
    return name


def run_dataset(config: dict, config_path: Path | str = CONFIG_FILE) -> DatasetSpec:
    """A built-in dataset by name; a folder's from its recorded "dataset" and "train" settings."""
    name = run_dataset_name(config, config_path)
    if not is_folder_dataset(name):
        return get_dataset(name)
    try:
        train = TrainConfig.from_json(config.get("train") or {})
        options = train.folder_options(config.get("val_split_seed", VAL_SPLIT_SEED))
        return folder_spec_from_json(config["dataset"], options)
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{config_path}: no valid folder dataset recorded ({err})") from None


def check_run_config(config: dict, config_path: Path) -> None:
    """The sections commands read beside "model" must have the shapes cnnlab writes."""
    for section in ("dataset", "train", "normalization", "runtime"):
        if not isinstance(config.get(section, {}), dict):
            raise CheckpointError(f"{config_path}: '{section}' must be a JSON object")
    norm = config.get("normalization", {})
    for key in ("mean", "std"):
        value = norm.get(key)
        values = value if isinstance(value, list) and value else [value]
        if value is not None and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise CheckpointError(f"{config_path}: normalization {key} must be numbers or null")
    try:
        run_dataset(config, config_path)
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None


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
