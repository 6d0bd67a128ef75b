"""Weights and training state in safetensors: what a model is rebuilt from and what resume needs.

model.safetensors       the weights after the last completed epoch
checkpoint.safetensors  weights + optimizer state + RNG state + step-loss history, and in its
                        metadata the epoch and the metrics so far
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import schema
from cnnlab.config import TrainConfig
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.files import load_safetensors, read_json, save_safetensors
from cnnlab.models import ModelConfig, create_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def read_run_config(run_dir: Path) -> dict:
    """`run_dir`'s config.json, read within bounds and checked whole (`schema.check_run_config`)."""
    path = Path(run_dir) / CONFIG_FILE
    config = read_json(path)
    schema.check_run_config(config, path)
    return config


def model_from_config(config: dict, config_path: Path) -> tuple[ModelConfig, torch.nn.Module]:
    """Build the untrained model that config.json's "model" entry describes."""
    try:
        model_config = ModelConfig.from_json(config["model"])
    except (KeyError, TypeError, ValueError, OverflowError) as err:
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
    """Load `tensors` into `model` after checking names, shapes, dtypes and finiteness."""
    check_weights_fit({k: described(v) for k, v in tensors.items()}, model, source)
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values")
    model.load_state_dict(tensors)


def check_weights_fit(found: dict[str, tuple[str, tuple]], model: torch.nn.Module, source: Path):
    """Refuse weights (name -> (safetensors dtype, shape)) that are not exactly the model's."""
    expected = {k: described(v) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    for key, (dtype, shape) in found.items():
        if tuple(shape) != expected[key][1]:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(shape)}, the model needs {expected[key][1]}"
            )
        if dtype != expected[key][0]:
            raise CheckpointError(
                f"{source}: {key} is stored as {dtype}, the model needs {expected[key][0]}"
            )


def described(t: torch.Tensor) -> tuple[str, tuple[int, ...]]:
    """(safetensors dtype name, shape) of a tensor, as a safetensors header describes it."""
    return SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)


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
    """The training state in `run_dir`'s checkpoint, after checking it against the run.

    config.json is checked first (`read_run_config`), then every tensor the checkpoint
    declares and all its metadata are checked against the model and optimizer that config
    builds (`schema.check_checkpoint`) before a single tensor is read.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(
            f"{run_dir}: no {CHECKPOINT_FILE}, so there is nothing to resume "
            f"(no epoch was completed?)"
        )
    config = read_run_config(run_dir)
    expected = expected_checkpoint(config, run_dir / CONFIG_FILE)
    tensors, meta = load_safetensors(
        path, check=lambda header, meta: schema.check_checkpoint(header, meta, expected, path)
    )
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, scalars in meta.get("optimizer_scalars", {}).items():
        optim_state.setdefault(int(index), {}).update(scalars)
    return TrainingState(
        epochs_done=meta["epochs_done"],
        global_step=meta["global_step"],
        metrics=list(meta["metrics"]),
        model_state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer_state={"state": optim_state, "param_groups": meta["optimizer_param_groups"]},
        rng_state=tensors["rng.torch"],
        step_losses=tensors["history.step_loss"],
    )


def expected_checkpoint(config: dict, config_path: Path) -> schema.ExpectedCheckpoint:
    """What a checkpoint of the run that `config` describes must hold: the model's tensors, the
    optimizer's state and groups (from a fresh optimizer of the recipe), the RNG state."""
    from cnnlab.train import make_optimizer  # here: cnnlab.train imports this module

    if not isinstance(config.get("train"), dict):
        raise CheckpointError(f"{config_path}: no 'train' section, so the run cannot be resumed")
    train = TrainConfig.from_json(config["train"])  # checked by read_run_config
    _, model = model_from_config(config, config_path)
    probe = torch.zeros(1, requires_grad=True)  # one step of the recipe's optimizer on a scalar
    probe.grad = torch.zeros(1)
    probe_optimizer = make_optimizer(train, [probe])
    probe_optimizer.step()
    tensors = {f"model.{k}": described(v) for k, v in model.state_dict().items()}
    tensors["rng.torch"] = described(torch.get_rng_state())
    return schema.ExpectedCheckpoint(
        tensors=tensors,
        parameters=[described(p) for p in model.parameters()],
        state_names=frozenset(next(iter(probe_optimizer.state.values()), {})),
        param_groups=make_optimizer(train, model.parameters()).state_dict()["param_groups"],
        epochs=train.epochs,
    )
