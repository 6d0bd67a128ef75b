"""A run folder read back: metrics.jsonl, the trained model rebuilt from config.json and its
safetensors weights (`load_run`), and the dataset the run names.

    >>> run = load_run("runs/demo")   # LoadedRun(run_dir, config, model_config, model), eval mode
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import checkpoint, runfolder
from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from cnnlab.config import TrainConfig
from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.data.preprocess import Normalization
from cnnlab.data.registry import folder_spec_from_json, is_folder_dataset
from cnnlab.errors import CheckpointError, ConfigError, shell_command
from cnnlab.files import (
    PICKLE_SUFFIXES,
    atomic_write_text,
    load_safetensors,
    parse_json,
    read_bounded,
    refuse_pickle,
)
from cnnlab.models import ModelConfig

MAX_METRICS_BYTES = 64 << 20
VAL_SPLIT_SEED = 0  # the validation hold-out is the same for every training seed


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
    check_run_dataset(config, run_dir / CONFIG_FILE)
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


def check_run_dataset(config: dict, config_path: Path) -> DatasetSpec:
    """The run's dataset, or one `CheckpointError` (other sections: `cnnlab.schema`)."""
    try:
        return run_dataset(config, config_path)
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None


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
