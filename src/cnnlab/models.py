"""The models cnnlab trains, by name: the tutorial's CNN, its MLP baseline, the speed-run CNN.

Every model is built from the input shape and the class count, so the linear layers follow the
data. A model is described by a `ModelConfig` that run folders store as JSON and rebuild from:

    >>> model = create_model(ModelConfig("cnn", input_shape=(1, 28, 28), num_classes=10))
    >>> count_parameters(model)
    50378
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from cnnlab.choices import MAX_CLASSES, MAX_OPTION_INT, MODEL_NAMES
from cnnlab.errors import ConfigError

if TYPE_CHECKING:
    from cnnlab.data import DatasetSpec


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: its registered name, input, classes and options."""

    name: str
    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    num_classes: int = 10
    options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self) | {"input_shape": list(self.input_shape)}

    @classmethod
    def for_dataset(cls, name: str, spec: DatasetSpec, options: dict | None = None) -> ModelConfig:
        """Model `name` sized for a dataset: its image shape in, one output per class."""
        return cls(name, tuple(spec.shape), spec.num_classes, dict(options or {}))

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        return cls(
            name=data["name"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            options=dict(data.get("options") or {}),
        )


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str

    @property
    def options(self) -> dict:
        """The builder's keyword options and their defaults (beyond input shape and classes)."""
        params = list(inspect.signature(self.builder).parameters.values())[2:]
        return {p.name: p.default for p in params}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str):
    """Decorator: `builder(input_shape, num_classes, **options) -> nn.Module` becomes `name`."""

    if name not in MODEL_NAMES:  # the command line's help lists MODEL_NAMES without importing this
        raise ValueError(f"add {name!r} to cnnlab.choices.MODEL_NAMES")

    def wrap(builder):
        _REGISTRY[name] = ModelEntry(name, builder, description)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights, far beyond any model here at any width
MAX_INPUT_SIDE = 4096
MAX_INPUT_CHANNELS = 256


OPTION_KINDS = {
    int: f"an integer from 1 to {MAX_OPTION_INT}",
    float: "a finite number",
    bool: "true or false",
    str: "a string",
}


def option_value_ok(kind: type, value) -> bool:
    """A value of the option's type (its default's); JSON's true is not an integer here."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and 1 <= value <= MAX_OPTION_INT
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def check_model_options(name: str, options: dict) -> ModelEntry:
    """The registry entry of `name`, after checking that it takes every one of `options` and that
    each value has the type of the option's default (integers 1..65536, finite numbers)."""
    entry = get_model_entry(name)
    unknown = set(options) - set(entry.options)
    if unknown:
        valid = ", ".join(entry.options) or "none"
        raise ConfigError(
            f"model {name!r} has no option {', '.join(sorted(unknown))}; its options: {valid}"
        )
    for key, value in options.items():
        kind = type(entry.options[key])
        if not option_value_ok(kind, value):
            raise ConfigError(
                f"model {name!r} option {key} must be {OPTION_KINDS.get(kind, kind.__name__)}, "
                f"got {value!r}"
            )
    return entry


def check_model_config(config: ModelConfig) -> ModelEntry:
    """Refuse a model that cannot be built: bad options, an input shape that is not three sizes
    in range, a class count out of range, or more than `MAX_PARAMETERS` parameters (counted on
    PyTorch's meta device, which allocates nothing)."""
    entry = check_model_options(config.name, config.options)
    shape = tuple(config.input_shape)
    limits = (MAX_INPUT_CHANNELS, MAX_INPUT_SIDE, MAX_INPUT_SIDE)
    if len(shape) != 3 or not all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= limit
        for n, limit in zip(shape, limits)
    ):
        raise ConfigError(
            f"input shape must be (C, H, W) with C 1..{MAX_INPUT_CHANNELS} and H, W "
            f"1..{MAX_INPUT_SIDE}; got {shape}"
        )
    classes = config.num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        raise ConfigError(
            f"num_classes must be an integer from 1 to {MAX_CLASSES:,}, got {classes!r}"
        )
    with torch.device("meta"):
        probe = entry.builder(shape, classes, **config.options)
    parameters = count_parameters(probe, trainable_only=False)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"model {config.name!r} for input {'x'.join(map(str, shape))} would have "
            f"{parameters:,} parameters, more than the {MAX_PARAMETERS:,} cnnlab builds"
        )
    return entry


def create_model(config: ModelConfig) -> nn.Module:
    entry = check_model_config(config)
    return entry.builder(tuple(config.input_shape), config.num_classes, **config.options)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d layers in definition order, e.g. ['conv1', 'conv2']."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class CNN(nn.Module):
    """The tutorial's network: (conv-bn-relu-pool) x 2, then one linear layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: tuple = (28, 28)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * (size[0] // 4) * (size[1] // 4), num_classes)

    # Training sets this (cnnlab.train.build_model): ReLU and max-pooling commute (both are
    # monotone), so pooling first gives the same values and the same gradients, exactly, with
    # ReLU and its gradient on a quarter of the elements (+9% training speed on a 2-core CPU).
    pool_before_relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28)
        if self.pool_before_relu:
            x = torch.relu(self.pool(self.bn1(self.conv1(x))))
            x = torch.relu(self.pool(self.bn2(self.conv2(x))))
            return self.fc(x.flatten(start_dim=1))
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # (B, 32, 14, 14)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (B, 64, 7, 7)
        x = x.flatten(start_dim=1)  # (B, 3136)
        return self.fc(x)  # (B, 10)


class MLP(nn.Module):
    """The fully-connected baseline: flatten -> Linear(C*H*W, hidden) -> ReLU -> Linear."""

    def __init__(self, in_features: int = 784, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28)
        x = x.flatten(start_dim=1)  # (B, 784)
        return self.fc2(torch.relu(self.fc1(x)))  # (B, 10)


@register_model("cnn", "the tutorial's CNN: (conv3x3-bn-relu-maxpool) x2 [32, 64], linear")
def cnn(input_shape, num_classes):
    channels, height, width = input_shape
    if height < 4 or width < 4:
        raise ConfigError(
            f"cnn needs images of at least 4x4 (two 2x2 poolings); got {height}x{width}"
        )
    return CNN(channels, num_classes, (height, width))


@register_model("mlp", "fully-connected baseline: flatten, linear(hidden), relu, linear")
def mlp(input_shape, num_classes, hidden: int = 128):
    channels, height, width = input_shape
    return MLP(channels * height * width, num_classes, hidden)


class SpeedrunCNN(nn.Module):
    """A small, fast CNN for the speed-run preset: three conv blocks of 16, 32 and 64 channels.

    Each block pools right after its convolution and normalises the pooled map, so batch norm
    and ReLU touch a quarter of the values they would after the tutorial's conv-bn-relu-pool.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        size: tuple = (28, 28),
        widths: tuple = (16, 32, 64),
    ):
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(c3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(c3 * (size[0] // 8) * (size[1] // 8), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28)
        x = torch.relu(self.bn1(self.pool(self.conv1(x))))  # (B, 16, 14, 14)
        x = torch.relu(self.bn2(self.pool(self.conv2(x))))  # (B, 32, 7, 7)
        x = torch.relu(self.bn3(self.pool(self.conv3(x))))  # (B, 64, 3, 3)
        return self.fc(x.flatten(start_dim=1))  # (B, 10)


@register_model(
    "speedrun", "small fast CNN for --preset speedrun: (conv3x3-pool-bn-relu) x3 [16, 32, 64]"
)
def speedrun(input_shape, num_classes, width: int = 16):
    channels, height, width_px = input_shape
    if height < 8 or width_px < 8:
        raise ConfigError(
            f"speedrun needs images of at least 8x8 (three 2x2 poolings); got {height}x{width_px}"
        )
    return SpeedrunCNN(channels, num_classes, (height, width_px), (width, 2 * width, 4 * width))


from cnnlab import resnet as _resnet  # noqa: E402, F401  (registers "resnet"; it imports this module)
