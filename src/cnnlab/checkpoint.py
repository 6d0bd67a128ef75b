"""Run folders, atomic writes, safetensors weights with JSON metadata. Nothing is ever unpickled.

A run folder holds:

    config.json             how to rebuild the model and rerun the training (+ versions, device)
    metrics.jsonl           one JSON line per completed epoch
    model.safetensors       the weights after the last completed epoch
    checkpoint.safetensors  weights + optimizer state + RNG state + step-loss history, and in its
                            metadata the epoch and the metrics so far: what `--resume` needs
    loss.png, filters.png   figures (derived files: other commands may add more)

Every file is written to a temporary name in the same folder and moved into place with
`os.replace`, so a crash or kill leaves the previous good version.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.errors import CheckpointError, ConfigError, OutputError
from cnnlab.models import ModelConfig, create_model
from cnnlab.preprocess import Normalization

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
TRAINING_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    CHECKPOINT_FILE,
    "loss.png",
    "filters.png",
)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    A failed write leaves the previous file and no temporary file behind, and raises
    `OutputError` naming `path`; an interrupt is re-raised unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the usual permissions (umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # e.g. the folder is missing: nothing to remove
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    """Rewrite metrics.jsonl from the list (atomic; each epoch appears exactly once)."""
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in metrics))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


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
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(
            f"run folder {path} already exists and is not empty; pass --overwrite to replace its "
            f"training files, or --resume {path} to continue it"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to output folder {path}: {err.strerror or err}") from None
    if overwrite:
        for name in TRAINING_FILES:
            (path / name).unlink(missing_ok=True)
    return path


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"cnnlab": json.dumps(metadata)} if metadata is not None else None
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=meta))


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read tensors and cnnlab's JSON metadata; refuse anything that is not safetensors."""
    path = Path(path)
    refuse_pickle(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        tensors = load_safetensors_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = header.get("__metadata__", {}).get("cnnlab")
        return tensors, (json.loads(meta) if meta else None)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None


def refuse_pickle(path: Path) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing to load a pickled PyTorch file; loading one can run arbitrary "
            f"code. cnnlab reads only .safetensors weights with a config.json"
        )


@dataclass
class LoadedRun:
    run_dir: Path
    config: dict  # the whole config.json
    model_config: ModelConfig
    model: torch.nn.Module

    @property
    def dataset(self) -> DatasetSpec:
        """The dataset the run was trained on (checked by `check_run_config` on loading)."""
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
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (not a cnnlab run folder?)")
    return path, weights


def load_run(path: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a trained model from a run folder (or a weights file inside one), in eval mode.

    Predict through `cnnlab.evaluate.Predictor` with the run's memory layout (as `evaluate_run`
    does) and the predictions are bit-identical to the trained model's.
    """
    run_dir, weights_path = find_run(path)
    config = read_json(run_dir / CONFIG_FILE)
    check_run_config(config, run_dir / CONFIG_FILE)
    model_config, model = model_from_config(config, run_dir / CONFIG_FILE)
    tensors, _ = load_safetensors(weights_path)
    if weights_path.name == CHECKPOINT_FILE:
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_weights(model, tensors, weights_path)
    model.to(device).eval()
    return LoadedRun(run_dir, config, model_config, model)


def run_dataset_name(config: dict) -> str:
    return config.get("dataset", {}).get("name") or config.get("train", {}).get("dataset", "mnist")


def check_run_config(config: dict, config_path: Path) -> None:
    """The sections commands read beside "model" must have the shapes cnnlab writes."""
    for section in ("dataset", "train", "normalization", "runtime"):
        if not isinstance(config.get(section, {}), dict):
            raise CheckpointError(f"{config_path}: '{section}' must be a JSON object")
    norm = config.get("normalization", {})
    for key in ("mean", "std"):
        value = norm.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"{config_path}: normalization {key} must be a number or null")
    try:
        get_dataset(run_dataset_name(config))
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None


def model_from_config(config: dict, config_path: Path) -> tuple[ModelConfig, torch.nn.Module]:
    """Build the untrained model that config.json's "model" entry describes."""
    try:
        model_config = ModelConfig.from_json(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: no valid 'model' entry ({err})") from None
    try:
        return model_config, create_model(model_config)
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. an input_shape of two numbers
        raise CheckpointError(
            f"{config_path}: cannot build model {model_config.name!r} from its 'model' entry "
            f"({err})"
        ) from None


def load_weights(model: torch.nn.Module, tensors: dict, source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors)


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    save_safetensors(run_dir / WEIGHTS_FILE, model.state_dict())


@dataclass
class TrainingState:
    """What `--resume` restores: the epoch reached and everything needed to continue exactly."""

    epochs_done: int
    global_step: int
    metrics: list[dict]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict
    rng_state: torch.Tensor
    step_losses: torch.Tensor


def save_training_state(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs_done: int,
    global_step: int,
    metrics: list[dict],
    step_losses: torch.Tensor,
) -> None:
    """Write checkpoint.safetensors in one atomic step (tensors + JSON metadata together)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["history.step_loss"] = step_losses.float()
    meta = {
        "epochs_done": epochs_done,
        "global_step": global_step,
        "metrics": metrics,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
    }
    save_safetensors(run_dir / CHECKPOINT_FILE, tensors, meta)


def save_epoch(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    metrics: list[dict],
    global_step: int,
    step_losses: torch.Tensor,
) -> None:
    """Everything a completed epoch leaves, each file atomic: the checkpoint first (what resume
    reads), then the weights, then metrics.jsonl (rewritten from the checkpoint on resume)."""
    save_training_state(run_dir, model, optimizer, len(metrics), global_step, metrics, step_losses)
    save_weights(run_dir, model)
    write_metrics(run_dir, metrics)


def load_training_state(run_dir: Path) -> TrainingState:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(
            f"{run_dir}: no {CHECKPOINT_FILE}, so there is nothing to resume "
            f"(no epoch was completed?)"
        )
    tensors, meta = load_safetensors(path)
    try:
        if not isinstance(meta, dict) or not all(isinstance(m, dict) for m in meta["metrics"]):
            raise ValueError("no metadata, or metrics that are not records")
        optim_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        for index, scalars in meta["optimizer_scalars"].items():
            optim_state.setdefault(int(index), {}).update(scalars)
        state = TrainingState(
            epochs_done=int(meta["epochs_done"]),
            global_step=int(meta["global_step"]),
            metrics=list(meta["metrics"]),
            model_state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
            optimizer_state={"state": optim_state, "param_groups": meta["optimizer_param_groups"]},
            rng_state=tensors["rng.torch"],
            step_losses=tensors["history.step_loss"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incomplete training checkpoint ({err})") from None
    check_training_state(state, Path(run_dir), path)
    return state


def check_training_state(state: TrainingState, run_dir: Path, path: Path) -> None:
    """Refuse a checkpoint that does not fit the run's model, so a resume cannot crash on it."""
    _, model = model_from_config(read_json(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)
    load_weights(model, state.model_state, path)
    shapes = [p.shape for p in model.parameters()]
    if state.rng_state.dtype != torch.uint8 or state.rng_state.shape != torch.get_rng_state().shape:
        raise CheckpointError(f"{path}: rng.torch is not a CPU random-generator state")
    if state.step_losses.ndim != 1:
        raise CheckpointError(f"{path}: history.step_loss is not one loss per step")
    try:
        grouped = sorted(i for g in state.optimizer_state["param_groups"] for i in g["params"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid optimizer parameter groups ({err})") from None
    if grouped != list(range(len(shapes))):
        raise CheckpointError(
            f"{path}: the optimizer state is for {len(grouped)} parameters, the model has "
            f"{len(shapes)}"
        )
    for index, entries in state.optimizer_state["state"].items():
        for name, value in entries.items():
            if not 0 <= index < len(shapes) or (  # a scalar, or shaped like its parameter
                isinstance(value, torch.Tensor) and value.ndim and value.shape != shapes[index]
            ):
                raise CheckpointError(f"{path}: optim.{index}.{name} does not fit the model")
