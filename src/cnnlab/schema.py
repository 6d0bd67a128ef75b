"""One schema for what cnnlab loads back: config.json and checkpoint metadata, checked whole.

A run folder is data that a user can edit, copy between machines or damage. Every value read
from it is checked here, before anything is built from it: its type, its range, and its agreement
with the rest of the run (the model section with the recipe and the dataset, the checkpoint's
tensors with the model and the optimizer that the recipe builds, down to their dtypes). Every
problem is one `CheckpointError` naming the file; nothing else escapes.

    >>> check_run_config(json.loads(path.read_text()), path)  # config.json, whole
    >>> check_checkpoint(header, meta, expected, path)  # before a tensor is read
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cnnlab.config import MAX_SEED, TrainConfig
from cnnlab.data.registry import is_folder_dataset
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import MAX_CLASSES, ModelConfig, check_model_config

MAX_THREADS = 1 << 12
MAX_PROCESSES = 1 << 20  # data-parallel processes of a torchrun job
MAX_TEXT = 4096  # characters of a recorded name, path or version
METRIC_NUMBERS = (
    "loss",
    "train_accuracy",
    "lr",
    "seconds",
    "images_per_second",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
)
PRECISIONS = ("fp32", "bf16")  # as recorded: resolved, never "auto"


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite JSON number (JSON's 1e400 reads as infinity, and true is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def need(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise CheckpointError(f"{path}: {message}")


def need_int(value, low: int, high: int, path: Path, where: str) -> None:
    need(
        is_int(value) and low <= value <= high,
        path,
        f"{where} must be an integer from {low} to {high:,}, got {short(value)}",
    )


def need_text(value, path: Path, where: str) -> None:
    need(isinstance(value, str) and len(value) <= MAX_TEXT, path, f"{where} must be a string")


def short(value, limit: int = 60) -> str:
    """A value for a one-line message: at most `limit` characters of its repr."""
    text = value if isinstance(value, str) and limit > 60 else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def section(config: dict, name: str, path: Path) -> dict:
    """config[name] if present (a JSON object), else {}."""
    value = config.get(name, {})
    need(isinstance(value, dict), path, f"'{name}' must be a JSON object")
    return value


# --- config.json ---------------------------------------------------------------------------------


def check_run_config(config: dict, path: Path) -> None:
    """Every section cnnlab reads, checked for types, ranges and agreement with each other."""
    model = check_model_section(config, path)
    train = check_train_section(config, path)
    dataset = section(config, "dataset", path)
    check_dataset_section(dataset, model, path)
    names = {dataset.get("name"), train.dataset if train else None} - {None}
    need(len(names) <= 1, path, f"the dataset and train sections name different datasets {names}")
    if train is not None and model is not None:
        folder = is_folder_dataset(train.dataset)  # its shape and classes: the dataset section
        need(
            model.name == train.model if folder else train.model_config() == model,
            path,
            "the 'model' section does not match the model the 'train' section builds "
            f"({train.model} for {train.dataset})",
        )
    check_normalization(section(config, "normalization", path), train, path)
    check_runtime(section(config, "runtime", path), path)
    for key in ("seed", "val_split_seed"):
        if key in config:
            need_int(config[key], 0, MAX_SEED, path, key)
    for key in ("data_root", "created"):
        if key in config:
            need_text(config[key], path, key)
    for key, value in section(config, "versions", path).items():
        need_text(value, path, f"versions.{key}")


def check_model_section(config: dict, path: Path) -> ModelConfig | None:
    if "model" not in config:
        return None
    entry = config["model"]
    need(isinstance(entry, dict), path, "no valid 'model' entry (it must be a JSON object)")
    name = entry.get("name")
    need(isinstance(name, str), path, f"no valid 'model' entry (name: {short(name)})")
    shape, options = entry.get("input_shape"), entry.get("options") or {}
    need(isinstance(shape, list), path, f"model input_shape must be a list, got {short(shape)}")
    need(isinstance(options, dict), path, f"model options must be an object, got {short(options)}")
    model = ModelConfig(name, tuple(shape), entry.get("num_classes"), options)
    try:
        check_model_config(model)
    except ConfigError as err:
        reason = short(str(err), 300)  # it may quote a value of any size
        if reason.startswith("unknown model"):
            raise CheckpointError(f"{path}: {reason}") from None
        raise CheckpointError(
            f"{path}: cannot build model {short(name)} from its 'model' entry ({reason})"
        ) from None
    return model


def check_train_section(config: dict, path: Path) -> TrainConfig | None:
    if "train" not in config:
        return None
    train = config["train"]
    need(isinstance(train, dict), path, "'train' must be a JSON object")
    try:
        return TrainConfig.from_json(train)
    except ConfigError as err:
        raise CheckpointError(f"{path}: 'train' section: {short(str(err), 300)}") from None


def check_dataset_section(dataset: dict, model: ModelConfig | None, path: Path) -> None:
    if "name" in dataset:
        need_text(dataset["name"], path, "dataset.name")
    if "classes" in dataset:
        classes = dataset["classes"]
        need(
            isinstance(classes, list)
            and 1 <= len(classes) <= MAX_CLASSES
            and all(isinstance(c, str) and len(c) <= MAX_TEXT for c in classes),
            path,
            "dataset.classes must be a list of class names",
        )
        if model is not None:
            need(
                len(classes) == model.num_classes,
                path,
                f"dataset.classes lists {len(classes)} classes, the model has "
                f"{model.num_classes} outputs",
            )
    if "shape" in dataset:
        shape = dataset["shape"]
        need(
            isinstance(shape, list) and len(shape) == 3 and all(is_int(n) for n in shape),
            path,
            f"dataset.shape must be [C, H, W], got {short(shape)}",
        )
        if model is not None:
            need(
                tuple(shape) == tuple(model.input_shape),
                path,
                f"dataset.shape {shape} differs from the model's input shape "
                f"{list(model.input_shape)}",
            )


def check_normalization(norm: dict, train: TrainConfig | None, path: Path) -> None:
    """mean and std: both null (x/255 only) or both set; finite numbers (or one per channel),
    std positive; set exactly when the recipe says --normalize."""
    values = {key: norm.get(key) for key in ("mean", "std")}
    for key, value in values.items():
        numbers = value if isinstance(value, list) else [value]
        ok = value is None or (0 < len(numbers) <= 256 and all(is_number(v) for v in numbers))
        need(ok, path, f"normalization {key} must be a number or null, got {short(value)}")
    if values["std"] is not None:
        stds = values["std"] if isinstance(values["std"], list) else [values["std"]]
        need(all(s > 0 for s in stds), path, "normalization std must be positive")
    given = [v is not None for v in values.values()]
    need(given[0] == given[1], path, "normalization needs both mean and std, or neither")
    if train is not None and "mean" in norm:
        need(
            given[0] == train.normalize,
            path,
            f"normalization {'is missing' if train.normalize else 'is set'} but the recipe's "
            f"normalize is {str(train.normalize).lower()}",
        )


def check_runtime(runtime: dict, path: Path) -> None:
    if "precision" in runtime:
        need(
            runtime["precision"] in PRECISIONS,
            path,
            f"runtime.precision must be one of {', '.join(PRECISIONS)}, "
            f"got {short(runtime['precision'])}",
        )
    if "threads" in runtime:
        need_int(runtime["threads"], 1, MAX_THREADS, path, "runtime.threads")
    if "world_size" in runtime:
        need_int(runtime["world_size"], 1, MAX_PROCESSES, path, "runtime.world_size")
    if "run_id" in runtime:  # the torchrun job that created the run (cnnlab.distributed_run)
        need_text(runtime["run_id"], path, "runtime.run_id")
    if "channels_last" in runtime:
        need(isinstance(runtime["channels_last"], bool), path, "runtime.channels_last: true/false")
    if "follow_load" in runtime:  # 0, or the most threads training followed the load up to
        need_int(runtime["follow_load"], 0, MAX_THREADS, path, "runtime.follow_load")
    for key in ("device", "device_name"):
        if key in runtime:
            need_text(runtime[key], path, f"runtime.{key}")


# --- checkpoint.safetensors ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedCheckpoint:
    """What a checkpoint of this run must hold, from the model and optimizer its config builds."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]  # "model.x" / "rng.torch" -> (dtype, shape)
    parameters: list[tuple[str, tuple[int, ...]]]  # (dtype, shape) of each optimized parameter
    state_names: frozenset[str]  # the optimizer's per-parameter state, e.g. exp_avg
    param_groups: list[dict]  # a fresh optimizer's groups (with "params")
    epochs: int  # the recipe's epoch count


def check_checkpoint(header: dict, meta, expected: ExpectedCheckpoint, path: Path) -> None:
    """Refuse a checkpoint whose metadata or tensors do not fit the run, before any tensor is
    read: `header` maps each stored tensor to (safetensors dtype, shape)."""
    required = ("epochs_done", "global_step", "metrics", "optimizer_param_groups")
    absent = [key for key in required if not isinstance(meta, dict) or key not in meta]
    need(not absent, path, f"incomplete training checkpoint (no {', '.join(absent)})")
    epochs_done, step = meta.get("epochs_done"), meta.get("global_step")
    need_int(epochs_done, 1, expected.epochs, path, "epochs_done")
    need_int(step, 0, 1 << 40, path, "global_step")
    check_metrics(meta.get("metrics"), epochs_done, path)
    check_param_groups(meta.get("optimizer_param_groups"), expected.param_groups, path)
    scalars = meta.get("optimizer_scalars", {})
    need(isinstance(scalars, dict), path, "optimizer_scalars must be a JSON object")
    state: dict[str, set[str]] = {}  # parameter index -> the names of its optimizer state
    for index, entries in scalars.items():
        need(
            isinstance(entries, dict) and entries and all(is_number(v) for v in entries.values()),
            path,
            f"optimizer_scalars[{short(index)}] must map names to numbers",
        )
        check_state_index(index, "", expected, path)
        state.setdefault(index, set())  # an empty entry still has to hold the optimizer's state
        for name in entries:
            check_optimizer_key(index, name, expected, path)
            state.setdefault(index, set()).add(name)
    wanted = dict(expected.tensors) | {"history.step_loss": ("F32", (step,))}
    for key, (dtype, shape) in header.items():
        shape = tuple(shape)
        if key.startswith("optim."):
            _, index, name = (key.split(".", 2) + ["", ""])[:3]
            param = check_optimizer_key(index, name, expected, path)
            fits = (dtype, shape) == (("F32", ()) if name == "step" else param)
            need(fits, path, f"{key} does not fit the model ({dtype} {list(shape)})")
            state.setdefault(index, set()).add(name)
            continue
        need(key in wanted, path, f"unexpected tensor {key}")
        need((dtype, shape) == wanted[key], path, describe_misfit(key, dtype, shape, *wanted[key]))
    missing = sorted(key.removeprefix("model.") for key in set(wanted) - set(header))
    need(not missing, path, f"incomplete training checkpoint (missing: {', '.join(missing)})")
    for index, names in state.items():
        need(
            names == expected.state_names,
            path,
            f"optimizer state of parameter {index} has {', '.join(sorted(names))}; the optimizer "
            f"keeps {', '.join(sorted(expected.state_names))}",
        )


def describe_misfit(key: str, dtype: str, shape, want_dtype: str, want_shape) -> str:
    if key == "rng.torch":
        return "rng.torch is not a CPU random-generator state"
    if key == "history.step_loss":
        return "history.step_loss is not one loss per step"
    name = key.removeprefix("model.")
    if tuple(shape) != tuple(want_shape):
        return f"{name} has shape {tuple(shape)}, the model needs {tuple(want_shape)}"
    return f"{name} is stored as {dtype}, the model needs {want_dtype}"


def check_optimizer_key(index, name, expected: ExpectedCheckpoint, path: Path):
    """(dtype, shape) of the parameter that optimizer state `index`.`name` belongs to."""
    check_state_index(index, name, expected, path)
    need(name in expected.state_names, path, f"optim.{index}.{name}: not state of this optimizer")
    return expected.parameters[int(index)]


def check_state_index(index, name: str, expected: ExpectedCheckpoint, path: Path) -> None:
    """`index` names one of the model's parameters, as a decimal string."""
    ok = isinstance(index, str) and index.isascii() and index.isdigit() and len(index) < 6
    need(
        ok and int(index) < len(expected.parameters),
        path,
        f"optim.{str(index)[:40]}.{name} does not fit the model",
    )


def check_metrics(metrics, epochs_done: int, path: Path) -> None:
    """One record per completed epoch, numbered from 1, with numbers where numbers belong."""
    need(isinstance(metrics, list), path, "incomplete training checkpoint (no metrics)")
    need(
        len(metrics) == epochs_done,
        path,
        f"{len(metrics)} metric records for {epochs_done} completed epochs",
    )
    for number, record in enumerate(metrics, start=1):
        need(
            isinstance(record, dict),
            path,
            "incomplete training checkpoint (metrics that are not records)",
        )
        need(
            record.get("epoch") == number,
            path,
            f"metric record {number} is for epoch {short(record.get('epoch'))}",
        )
        for key in METRIC_NUMBERS:
            value = record.get(key, 0)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            need(ok, path, f"metric {key} of epoch {number} must be a number, got {short(value)}")
        for key in ("threads", "thread_changes"):  # the count at its end; changes following load
            if key in record:
                need_int(record[key], 0, MAX_THREADS, path, f"metric {key} of epoch {number}")


IMPLEMENTATION_KEYS = {"foreach", "fused", "capturable", "differentiable"}  # how, not what


def check_param_groups(groups, fresh: list[dict], path: Path) -> None:
    """The optimizer's hyperparameters must be those the recipe sets (the learning rate is set
    anew at every step, so it need only be a number); how the update runs may differ."""
    need(
        isinstance(groups, list) and len(groups) == len(fresh),
        path,
        "invalid optimizer parameter groups (expected one group)",
    )
    for group, reference in zip(groups, fresh):
        need(isinstance(group, dict), path, "invalid optimizer parameter groups (not objects)")
        params = group.get("params")
        ok = isinstance(params, list) and all(is_int(i) for i in params)
        need(ok, path, "invalid optimizer parameter groups ('params')")
        need(
            sorted(params) == sorted(reference["params"]),
            path,
            f"the optimizer state is for {len(params)} parameters, the model has "
            f"{len(reference['params'])}",
        )
        for key, value in group.items():
            if key == "params":
                continue
            need(key in reference, path, f"unknown optimizer setting {short(key)}")
            want = reference[key]
            if key == "lr":
                ok = is_number(value) and value >= 0
            elif key in IMPLEMENTATION_KEYS:
                ok = value is None or isinstance(value, bool)
            else:
                ok = same_json(value, want)
            need(
                ok,
                path,
                f"optimizer setting {key} is {short(value)}, the recipe gives {short(want)}",
            )


def same_json(value, want) -> bool:
    """`value` read from JSON equals `want`: tuples as lists (betas), and true is not 1."""
    if isinstance(want, (list, tuple)):
        return (
            isinstance(value, list)
            and len(value) == len(want)
            and all(same_json(v, w) for v, w in zip(value, want))
        )
    if isinstance(want, bool) or isinstance(value, bool):
        return value is want
    return type(value) in (int, float, type(None), str) and value == want
