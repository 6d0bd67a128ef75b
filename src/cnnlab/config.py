"""Training recipes: `TrainConfig`, its validation, and the named presets.

A `TrainConfig` is everything `cnnlab train` needs besides data, device and output folder; run
folders store it as the "train" section of config.json and rebuild it with `from_json`:

    >>> config = TrainConfig.from_json(json.load(open("runs/x/config.json"))["train"])
    >>> preset_config("speedrun")
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from types import SimpleNamespace
from typing import TYPE_CHECKING

from cnnlab.choices import PRECISIONS
from cnnlab.data import DatasetSpec, get_dataset
from cnnlab.data.registry import FolderOptions, check_dataset_name, folder_path, is_folder_dataset
from cnnlab.errors import ConfigError

if TYPE_CHECKING:
    from cnnlab.models import ModelConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
MAX_SEED = 2**32 - 1
INT_LIMITS = {  # inclusive ranges, shared by the command-line flags and config.json's "train"
    "epochs": (1, 1_000_000),
    "batch_size": (1, 1 << 20),
    "seed": (0, MAX_SEED),
    "val_size": (0, 1 << 30),
    "train_subset": (1, 1 << 30),
    "test_subset": (1, 1 << 30),
}
SCHEDULES = ("constant", "onecycle", "cosine")
FITS = ("crop", "pad")
AUGMENTS = ("none", "natural", "digits")  # cnnlab.data.augment's presets
FOLDER_FLAGS = {"image_size": "--image-size", "channels": "--channels", "fit": "--fit"}
FOLDER_FLAGS |= {"test_fraction": "--test-fraction", "strict": "--strict"}


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; defaults are the tutorial's: cnn, MNIST, Adam 1e-3, batch 64, 5 epochs."""

    model: str = "cnn"
    model_options: dict = field(default_factory=dict)
    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    label_smoothing: float = 0.0
    seed: int = 0
    val_size: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    normalize: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    sync_bn: bool = False  # with several processes, batch norm over the whole batch
    augment: str = "none"  # a preset of cnnlab.data.augment, applied to every training batch
    # how a folder:PATH dataset is read (cnnlab.data.folder): None follows the images
    image_size: int | None = None
    channels: int | None = None
    fit: str = "crop"
    test_fraction: float = 0.1
    strict: bool = False
    memory_budget: int = 2048  # MiB of decoded images kept in memory; above: memory-mapped

    def __post_init__(self):
        from cnnlab.models import check_model_options  # PyTorch: only when a recipe is built

        check_types(self)
        check_model_options(self.model, self.model_options)
        check_dataset_name(self.dataset)
        checks = [
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.momentum >= 0, f"--momentum must be >= 0, got {self.momentum}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        ]
        for name in FIELD_TYPES[float]:
            value = getattr(self, name)
            checks.append((math.isfinite(value), f"--{flag(name)} must be finite, got {value}"))
        for name, (low, high) in INT_LIMITS.items():
            value = getattr(self, name)
            ok = value is None or low <= value <= high
            checks.append((ok, out_of_range(name, value, low, high)))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name, value, choices in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISIONS),
            ("augmentation", self.augment, AUGMENTS),
            ("fit", self.fit, FITS),
        ):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
        check_folder_settings(self)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, **overrides) -> TrainConfig:
        """Rebuild from config.json's "train" section; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training settings in config: {', '.join(sorted(unknown))}")
        return cls(**{**data, **overrides})

    def model_config(self, spec: DatasetSpec | None = None) -> ModelConfig:
        """The recipe's model sized for its dataset (`spec`, where the caller has resolved it)."""
        from cnnlab.models import ModelConfig

        spec = spec or get_dataset(self.dataset)
        return ModelConfig.for_dataset(self.model, spec, self.model_options)

    def folder_options(self, split_seed: int = 0) -> FolderOptions:
        """How a folder:PATH dataset is read for this recipe."""
        return FolderOptions(
            path=folder_path(self.dataset),
            image_size=self.image_size,
            channels=self.channels,
            fit=self.fit,
            test_fraction=self.test_fraction,
            val_size=self.val_size,
            split_seed=split_seed,
            strict=self.strict,
            memory_budget_mb=self.memory_budget,
        )


# The defaults as plain values (`DEFAULTS.epochs`), read without building a TrainConfig, which
# loads PyTorch to check the model: the command line's help states them.
DEFAULTS = SimpleNamespace(
    **{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
)


def flag(name: str) -> str:
    return name.replace("_", "-")


def out_of_range(name: str, value, low: int, high: int) -> str:
    """The message for an integer setting outside `INT_LIMITS`, worded as the flag's."""
    bound = f"at least {low}" if value is not None and value < low else f"at most {high:,}"
    return f"--{flag(name)} must be {bound}, got {value}"


FIELD_TYPES = {
    int: ("epochs", "batch_size", "seed", "val_size", "memory_budget"),
    float: ("lr", "momentum", "weight_decay", "label_smoothing", "test_fraction"),
    str: ("model", "dataset", "optimizer", "schedule", "device", "precision", "augment", "fit"),
    bool: ("normalize", "compile", "strict", "sync_bn"),
    dict: ("model_options",),
    (int, type(None)): ("train_subset", "test_subset", "image_size", "channels"),
}
TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "an object",
    (int, type(None)): "an integer or null",
}


def check_types(config: TrainConfig) -> None:
    """Settings read from a config.json arrive untyped: each must have its field's type."""
    for kind, names in FIELD_TYPES.items():
        allowed = (int, float) if kind is float else kind
        for name in names:
            value = getattr(config, name)
            wrong_bool = isinstance(value, bool) and kind is not bool
            if wrong_bool or not isinstance(value, allowed):
                raise ConfigError(f"setting {name} must be {TYPE_NAMES[kind]}, got {value!r}")


def check_folder_settings(config: TrainConfig) -> None:
    """The folder settings' ranges; given for a built-in dataset, they are an error."""
    checks = [
        (
            config.image_size is None or 1 <= config.image_size <= 4096,
            f"--image-size must be 1..4096 pixels, got {config.image_size}",
        ),
        (config.channels in (None, 1, 3), f"--channels must be 1 or 3, got {config.channels}"),
        (
            0 < config.test_fraction < 1,
            f"--test-fraction must be between 0 and 1, got {config.test_fraction}",
        ),
        (config.memory_budget >= 1, "--memory-budget must be at least 1 MB"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if is_folder_dataset(config.dataset):
        return
    default = TrainConfig.__dataclass_fields__
    given = [
        flag
        for name, flag in FOLDER_FLAGS.items()
        if getattr(config, name) != default[name].default
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to folder datasets "
            f"(--dataset folder:PATH), "
            f"not to {config.dataset}"
        )


PRESETS: dict[str, dict] = {  # settings that differ from TrainConfig's defaults
    "tutorial": {},
    # Tuned on a 5,000-image validation split (BENCHMARKS.md): one pass over the first 50,000
    # training images with a small CNN, a one-cycle schedule and label smoothing.
    "speedrun": {
        "model": "speedrun",
        "epochs": 1,
        "train_subset": 50_000,
        "batch_size": 128,
        "lr": 0.008,
        "schedule": "onecycle",
        "label_smoothing": 0.1,
    },
}


def preset_config(name: str) -> TrainConfig:
    """A named recipe: `tutorial` (the defaults) or `speedrun` (see BENCHMARKS.md)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name])
