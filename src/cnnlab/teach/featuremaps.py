"""Capture the feature maps a CNN computes for one input, found generically, not by layer name.

Forward hooks record the output of every `Conv2d` and pooling layer; a `TorchFunctionMode`
records the result of every ReLU call, whether the model uses `nn.ReLU`, `F.relu` or the
tutorial's `torch.relu`. Each recorded tensor is a copy of exactly what the next layer received,
so an in-place activation later in the forward pass cannot alter it.

    >>> x = to_model_input(test.images[7:8], norm)          # (1, 1, 28, 28)
    >>> maps = capture_feature_maps(model, x)
    >>> [(s.name, tuple(s.tensor.shape)) for s in block_outputs(maps)]
    [('pool#1', (1, 32, 14, 14)), ('pool#2', (1, 64, 7, 7))]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnlab.errors import ConfigError
from cnnlab.models import conv_layer_names

POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
RELU_FUNCTIONS = (
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
)


@dataclass
class Stage:
    """One recorded tensor: `name` is the layer's name, with `#k` for its k-th call when reused."""

    name: str
    kind: str  # "conv", "relu" or "pool"
    tensor: torch.Tensor  # (B, C, H, W)

    @property
    def shape_text(self) -> str:
        """'32 maps, 14x14' for a (B, 32, 14, 14) tensor."""
        channels, height, width = self.tensor.shape[1:]
        return f"{channels} map{'s' if channels != 1 else ''}, {height}x{width}"


@dataclass
class FeatureMaps:
    input: torch.Tensor  # (B, C, H, W), as the model received it
    stages: list[Stage]  # in the order the forward pass computed them
    logits: torch.Tensor  # (B, classes)


class _Recorder:
    """Appends stages in execution order and numbers repeated calls of one layer."""

    def __init__(self):
        self.stages: list[Stage] = []
        self.calls: dict[str, int] = {}

    def add(self, name: str, kind: str, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            return  # not a (B, C, H, W) feature map, e.g. a ReLU after a linear layer
        count = self.calls.get(name, 0) + 1
        self.calls[name] = count
        stage = Stage(f"{name}#{count}", kind, tensor.detach().float().cpu().clone())
        self.stages.append(stage)

    def finish(self) -> list[Stage]:
        """Drop the `#1` of layers that ran once: 'conv1', but 'pool#1', 'pool#2'."""
        for stage in self.stages:
            base = stage.name.rsplit("#", 1)[0]
            if self.calls[base] == 1:
                stage.name = base
        return self.stages


class _ReluMode(TorchFunctionMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RELU_FUNCTIONS:
            self.recorder.add("relu", "relu", out)
        return out


def require_conv_layers(model: nn.Module, name: str | None = None) -> None:
    """Raise `ConfigError` when `model` has no Conv2d layer (e.g. the mlp)."""
    if not conv_layer_names(model):
        raise ConfigError(
            f"model {name or type(model).__name__!r} has no convolutional layers, so it computes "
            f"no feature maps; use a run of a model with Conv2d layers, such as cnn"
        )


def stage_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, POOL_TYPES):
        return "pool"
    return None


@torch.no_grad()
def capture_feature_maps(model: nn.Module, x: torch.Tensor, relu: bool = True) -> FeatureMaps:
    """Run `model` in eval mode on `x` (B, C, H, W), already in the model's input scale.

    Raises `ConfigError` for a model without Conv2d layers or an input that is not 4-D.
    """
    require_conv_layers(model)
    if x.ndim != 4:
        raise ConfigError(f"input must be (B, C, H, W), got shape {tuple(x.shape)}")
    recorder = _Recorder()
    handles = []
    for name, module in model.named_modules():
        kind = stage_kind(module)
        if kind:
            handles.append(
                module.register_forward_hook(
                    lambda _m, _args, out, name=name, kind=kind: recorder.add(name, kind, out)
                )
            )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        if relu:
            with _ReluMode(recorder):
                logits = model(x.to(device))
        else:
            logits = model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return FeatureMaps(x.detach().float().cpu(), recorder.finish(), logits.float().cpu())


def block_outputs(maps: FeatureMaps) -> list[Stage]:
    """The last stage before each following conv layer: what each conv block hands on.

    For the tutorial CNN (conv-bn-relu-pool twice) these are the two pooled outputs,
    (32, 14, 14) and (64, 7, 7).
    """
    outputs: list[Stage] = []
    for i, stage in enumerate(maps.stages):
        following = maps.stages[i + 1] if i + 1 < len(maps.stages) else None
        if following is None or following.kind == "conv":
            outputs.append(stage)
    return outputs
