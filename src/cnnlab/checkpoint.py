"""Weights and training state in safetensors: what a model is rebuilt from and what resume needs.

model.safetensors       the weights after the last completed epoch
checkpoint.safetensors  weights + optimizer state + RNG state + step-loss history, and in its
                        metadata the epoch and the metrics so far
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.files import load_safetensors, read_json, save_safetensors
from cnnlab.models import ModelConfig, create_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


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
