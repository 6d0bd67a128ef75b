"""A model's layer table, like torchinfo or Keras's `summary()`: shapes, parameters, memory.

`summarize` runs one forward pass of a zero input with a hook on every leaf module and records
what each layer really received and produced:

    >>> model = create_model(ModelConfig("cnn", input_shape=(1, 28, 28), num_classes=10))
    >>> report = summarize(model, (1, 28, 28))
    >>> [row.output_shapes[0] for row in report.rows][:3]
    [(1, 32, 28, 28), (1, 32, 28, 28), (1, 32, 14, 14)]
    >>> report.total_parameters
    50378
    >>> report.stages
    ('28x28', '14x14', '7x7', 'flatten to 3136 (input of fc)')

`cnnlab summary` renders a `ModelSummary`; every number it prints is a field or property here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from cnnlab.errors import ConfigError
from cnnlab.models import MAX_INPUT_CHANNELS, MAX_INPUT_SIDE

Shape = tuple[int, ...]

NORMALIZATIONS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28): an image's channels, height and width."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 3 or not all(re.fullmatch("[0-9]{1,9}", p) and int(p) > 0 for p in parts):
        raise ConfigError(  # ASCII digits only: "²" passes str.isdigit() but not int()
            f"an input shape is CxHxW with three positive integers, e.g. 1x28x28; got {text!r}"
        )
    channels, height, width = (int(p) for p in parts)
    if channels > MAX_INPUT_CHANNELS or max(height, width) > MAX_INPUT_SIDE:
        raise ConfigError(
            f"input {text}: at most {MAX_INPUT_CHANNELS} channels and "
            f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} pixels"
        )
    return channels, height, width


def format_shape(shape: Sequence[int]) -> str:
    """(1, 28, 28) -> '1x28x28'."""
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class LayerRow:
    """One call of a leaf module in the forward pass (a module called twice has two rows).

    `parameters` counts the module's parameters on its first call and 0 on later calls, so the
    column adds up to the model's total. `output_bytes` is 0 for a reshape, which is a view.
    """

    name: str
    kind: str
    input_shape: Shape | None
    output_shapes: tuple[Shape, ...]
    parameters: int
    mult_adds: int
    output_bytes: int
    repeated: bool = False


@dataclass(frozen=True)
class ModelSummary:
    """The layer rows and the totals; every number comes from the model and the forward pass."""

    rows: tuple[LayerRow, ...]
    input_shape: Shape  # (B, C, H, W) as fed to the model
    trainable: int
    non_trainable: int
    buffer_values: int
    buffer_kinds: tuple[str, ...]  # e.g. ('num_batches_tracked', 'running_mean', 'running_var')
    parameter_bytes: int
    buffer_bytes: int
    input_bytes: int
    activation_bytes: int

    @property
    def total_parameters(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def listed_parameters(self) -> int:
        return sum(row.parameters for row in self.rows)

    @property
    def mult_adds(self) -> int:
        return sum(row.mult_adds for row in self.rows)

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.activation_bytes + self.parameter_bytes + self.buffer_bytes

    @property
    def unlisted_parameters(self) -> int:
        """Parameters of the model that no listed layer holds (e.g. a bare nn.Parameter)."""
        return self.total_parameters - self.listed_parameters

    @property
    def repeated_layers(self) -> list[str]:
        return list(dict.fromkeys(row.name for row in self.rows if row.repeated))

    def calls(self, name: str) -> int:
        """How many rows the layer `name` has: the times the forward pass called it."""
        return sum(row.name == name for row in self.rows)

    @property
    def memory(self) -> tuple[tuple[str, int], ...]:
        """(part, bytes) of one forward pass: input, layer outputs, parameters, buffers, total."""
        return (
            ("input", self.input_bytes),
            ("layer outputs", self.activation_bytes),
            ("parameters", self.parameter_bytes),
            ("buffers", self.buffer_bytes),
            ("total", self.total_bytes),
        )

    @property
    def stages(self) -> tuple[str, ...]:
        """The spatial sizes in order, and where the model flattens:
        ('28x28', '14x14', '7x7', 'flatten to 3136 (input of fc)')."""
        stages: list[str] = []
        if len(self.input_shape) == 4:
            stages.append(format_shape(self.input_shape[2:]))
        for n, row in enumerate(self.rows):
            if row.kind == "flatten":
                following = self.rows[n + 1].name if n + 1 < len(self.rows) else "the next step"
                stages.append(f"flatten to {row.output_shapes[0][1]} (input of {following})")
                continue
            for shape in row.output_shapes:
                size = format_shape(shape[2:])
                if len(shape) == 4 and (not stages or stages[-1] != size):
                    stages.append(size)
        return tuple(stages)


def human_bytes(n: int) -> str:
    """1552 -> '1.5 KiB'; below 1 KiB, whole bytes."""
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def mult_adds(module: nn.Module, inputs: Sequence[torch.Tensor], output: torch.Tensor) -> int:
    """Multiply-adds of one call, for the whole batch it was given (biases are not counted).

    Convolution: each output value takes (in_channels / groups) * kernel_h * kernel_w of them;
    a transposed convolution spreads each input value over (out_channels / groups) * kernel
    outputs. Linear: in_features per output value. Normalisation layers: one per output value,
    the y = a*x + c that evaluation-mode batch norm reduces to. Pooling, activations, dropout and
    reshapes: 0, since comparisons and element-wise operations are not multiply-adds.
    """
    if isinstance(module, _ConvNd):
        kernel = math.prod(module.kernel_size)
        if module.transposed:
            return inputs[0].numel() * (module.out_channels // module.groups) * kernel
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, NORMALIZATIONS):
        return output.numel()
    return 0


def summarize(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> ModelSummary:
    """Run `model` once on zeros of shape (batch_size, *input_shape) and tabulate its layers.

    Each leaf module (one without children) gets a row per call, with the shapes it received
    and produced. Functional steps such as `torch.relu` leave no trace, except that a flatten
    shows as a row "(flatten)" when a layer receives the previous output reshaped to (B, N).
    Runs in evaluation mode without gradients and leaves the model as it was: modes restored,
    batch-norm running statistics untouched. Activation bytes are the outputs of the listed
    rows for this one forward pass; training keeps about as much again for the gradients.

    Raises ConfigError when the model cannot take the input or produces an empty activation.
    """
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    floating = reference is not None and reference.is_floating_point()
    x = torch.zeros(
        batch_size, *input_shape, device=device, dtype=reference.dtype if floating else None
    )
    names = {module: name for name, module in model.named_modules()}
    leaves = [m for m in model.modules() if next(m.children(), None) is None]

    rows: list[LayerRow] = []
    seen: set[nn.Module] = set()
    last_shape: list[Shape] = [tuple(x.shape)]  # the latest tensor shape the forward pass made

    def hook(module: nn.Module, args: tuple, output) -> None:
        name = names[module] or type(module).__name__.lower()
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        in_shape = tuple(first.shape) if first is not None else None
        if in_shape is not None and _is_flatten(last_shape[0], in_shape):
            rows.append(LayerRow("(flatten)", "flatten", last_shape[0], (in_shape,), 0, 0, 0))
        outputs = list(_tensors(output))
        shapes = tuple(tuple(t.shape) for t in outputs)
        for t in outputs:
            if t.numel() == 0:
                raise ConfigError(
                    f"the input {format_shape(input_shape)} is too small for this model: "
                    f"{name} gives an empty output {tuple(t.shape)}"
                )
        rows.append(
            LayerRow(
                name=name,
                kind=type(module).__name__,
                input_shape=in_shape,
                output_shapes=shapes,
                parameters=0 if module in seen else _own_parameters(module),
                mult_adds=mult_adds(module, args, outputs[0]) if outputs else 0,
                output_bytes=sum(t.numel() * t.element_size() for t in outputs),
                repeated=module in seen,
            )
        )
        seen.add(module)
        if shapes:
            last_shape[0] = shapes[-1]

    modes = {m: m.training for m in model.modules()}
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except RuntimeError as err:
        message = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"the model cannot take a {format_shape(input_shape)} input: {message}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    params = list(model.parameters())
    buffers = list(model.named_buffers())
    return ModelSummary(
        rows=tuple(rows),
        input_shape=tuple(x.shape),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        non_trainable=sum(p.numel() for p in params if not p.requires_grad),
        buffer_values=sum(b.numel() for _, b in buffers),
        buffer_kinds=tuple(sorted({name.rsplit(".", 1)[-1] for name, _ in buffers})),
        parameter_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for _, b in buffers),
        input_bytes=x.numel() * x.element_size(),
        activation_bytes=sum(row.output_bytes for row in rows),
    )


def _own_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _is_flatten(previous: Shape, received: Shape) -> bool:
    """Did the layer receive the previous output flattened to (B, N)?"""
    return (
        len(received) == 2
        and len(previous) > 2
        and previous[0] == received[0]
        and math.prod(previous) == math.prod(received)
    )


def _tensors(value) -> Iterator[torch.Tensor]:
    """The tensors in a module's output, which may be a tensor, a tuple or a dict of them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
