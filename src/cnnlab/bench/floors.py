"""The two floors under a training step of the tutorial CNN: its compute at the machine's measured
convolution rate, and the bytes its layers must move at the machine's measured copy bandwidth.

Bytes, per layer, forward and backward (x: the layer's input, y: its output, W: its weights;
activations in the runtime's precision, weights and their gradients in fp32):

    Conv2d, Linear   forward x + W + y; backward dy + x + dW (weight gradient) and, except for
                     the first layer, dy + W + dx (input gradient)
    BatchNorm2d      forward 2x + y (statistics, then normalise); backward 2(dy + x) + dx
    MaxPool2d        forward x + y; backward dy + x (where the maximum was) + dx
    ReLU             forward x + y; backward dy + y + dx
    Adam             parameters, gradients and two moments read, three written (fp32)

Training pools before ReLU (`CNN.pool_before_relu`), so ReLU counts at the pooled size. These are
floors: a real kernel moves at least this (PyTorch's also zero-fills max-pool's input gradient
and keeps int64 indices, which are not counted).

    >>> floors = step_floors(data_root, resolve_runtime(), steps=300, repeats=3)
    >>> floors.compute_ms, floors.memory_ms, floors.binding, floors.fraction_of_floor

A third, tighter floor takes the layers one after another, each at its own binding limit
(`Floors.layered_ms`), and the memory floor is also given at the bandwidth of a buffer far
larger than the caches (`memory_from_dram_ms`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.bench.throughput import cnnlab_loop, conv_limit_gflops
from cnnlab.bench.timing import Clock, timed
from cnnlab.config import TrainConfig
from cnnlab.models import ModelConfig, create_model
from cnnlab.runtime import Runtime
from cnnlab.teach.summary import summarize

FP32 = 4
LARGE_BUFFER = 256 << 20  # bytes: copied from memory, whatever the caches hold


@dataclass(frozen=True)
class LayerBytes:
    name: str
    kind: str
    forward: int
    backward: int
    flops: int = 0  # forward and backward: 3x the forward (2x for conv1: no input gradient)


@dataclass(frozen=True)
class Floors:
    batch: int
    precision: str
    layers: tuple[LayerBytes, ...]
    train_flops: int  # per step: the layers' forward and backward
    conv_gflops: float  # measured: conv2's shape, channels_last
    copy_gbytes_per_s: float  # measured: a copy of a buffer the size of conv1's output
    copy_buffer_bytes: int
    measured_images_per_second: float  # cnnlab's training loop at this batch, median of repeats
    large_copy_gbytes_per_s: float  # measured: a buffer far larger than the caches

    @property
    def bytes_per_step(self) -> int:
        return sum(layer.forward + layer.backward for layer in self.layers)

    @property
    def compute_ms(self) -> float:
        return self.train_flops / (self.conv_gflops * 1e9) * 1e3

    @property
    def memory_ms(self) -> float:
        return self.bytes_per_step / (self.copy_gbytes_per_s * 1e9) * 1e3

    @property
    def binding(self) -> str:
        return "memory" if self.memory_ms >= self.compute_ms else "compute"

    @property
    def floor_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def layered_ms(self) -> float:
        """The layers one after another, each at its own binding limit: the sum over layers of
        the larger of its compute and its memory time (a step in eager PyTorch runs its layers
        in turn, so no layer's memory traffic hides behind another's arithmetic)."""
        return (
            sum(
                max(
                    layer.flops / (self.conv_gflops * 1e9),
                    (layer.forward + layer.backward) / (self.copy_gbytes_per_s * 1e9),
                )
                for layer in self.layers
            )
            * 1e3
        )

    @property
    def memory_from_dram_ms(self) -> float:
        """The memory floor if every byte came from memory, none from the caches."""
        return self.bytes_per_step / (self.large_copy_gbytes_per_s * 1e9) * 1e3

    @property
    def fraction_of_layered_floor(self) -> float:
        return self.layered_ms / self.measured_ms

    @property
    def measured_ms(self) -> float:
        return self.batch / self.measured_images_per_second * 1e3

    @property
    def fraction_of_floor(self) -> float:
        """How close the measured step comes to the binding floor (1.0: at the floor)."""
        return self.floor_ms / self.measured_ms

    def to_json(self) -> dict:
        return {
            "batch": self.batch,
            "precision": self.precision,
            "train_flops_per_step": self.train_flops,
            "conv_gflops": self.conv_gflops,
            "copy_gbytes_per_s": self.copy_gbytes_per_s,
            "copy_buffer_bytes": self.copy_buffer_bytes,
            "bytes_per_step": self.bytes_per_step,
            "compute_ms": self.compute_ms,
            "memory_ms": self.memory_ms,
            "binding": self.binding,
            "measured_ms": self.measured_ms,
            "fraction_of_floor": self.fraction_of_floor,
            "layered_ms": self.layered_ms,
            "fraction_of_layered_floor": self.fraction_of_layered_floor,
            "large_copy_gbytes_per_s": self.large_copy_gbytes_per_s,
            "memory_from_dram_ms": self.memory_from_dram_ms,
            "layers": [vars(layer) for layer in self.layers],
        }


def layer_bytes(model: torch.nn.Module, batch: int, element: int) -> tuple[LayerBytes, ...]:
    """The bytes each layer of the tutorial CNN's training step must read and write."""
    rows = [r for r in summarize(model, (1, 28, 28), batch).rows if r.kind != "flatten"]  # a view
    layers = []
    first_conv = True
    for row in rows:
        x = math.prod(row.input_shape) * element
        y = math.prod(row.output_shapes[0]) * element
        w = row.parameters * FP32
        if row.kind in ("Conv2d", "Linear"):
            backward = (y + x + w) + (0 if first_conv else y + w + x)
            passes = 2 if first_conv else 3  # forward, weight gradient, input gradient
            flops = passes * 2 * row.mult_adds  # the rows count the whole batch
            layers.append(LayerBytes(row.name, row.kind, x + w + y, backward, flops))
            first_conv = False
        elif row.kind == "BatchNorm2d":
            layers.append(LayerBytes(row.name, row.kind, 2 * x + y + w, 2 * (y + x) + x + w))
        elif row.kind == "MaxPool2d":
            layers.append(LayerBytes(row.name, row.kind, x + y, y + x + x))
            layers.append(LayerBytes("relu", "ReLU", 2 * y, 3 * y))  # after the pool
        else:
            raise ValueError(f"no byte count for a {row.kind} layer")
    params = sum(p.numel() for p in model.parameters())
    layers.append(LayerBytes("optimizer", "Adam", 0, 7 * params * FP32))
    return tuple(layers)


def copy_bandwidth(
    nbytes: int, device: torch.device, repeats: int = 9, iters: int = 20, clock=time.perf_counter
) -> float:
    """Median GB/s of copying a buffer of `nbytes` (read + write counted) on `device`."""
    src = torch.rand(nbytes // FP32, device=device)
    dst = torch.empty_like(src)

    def run() -> None:
        for _ in range(iters):
            dst.copy_(src)

    run()
    rates = [2 * nbytes * iters / timed(run, device, clock)[1] / 1e9 for _ in range(repeats)]
    return statistics.median(rates)


def step_floors(
    data_root: Path,
    runtime: Runtime,
    steps: int,
    repeats: int,
    batch: int = 64,
    clock: Clock = time.perf_counter,
) -> Floors:
    """Both floors of one training step of the tutorial CNN at `batch`, measured here, and the
    step cnnlab's training loop takes (`steps` steps, median of `repeats`)."""
    model = create_model(ModelConfig("cnn")).to(runtime.device)
    element = 2 if runtime.precision == "bf16" else FP32
    layers = layer_bytes(model, batch, element)
    flops = sum(layer.flops for layer in layers)
    gflops = conv_limit_gflops(runtime.precision, runtime.device, clock=clock)
    buffer = batch * 32 * 28 * 28 * element  # conv1's output: the largest activation
    bandwidth = copy_bandwidth(buffer, runtime.device, clock=clock)
    large = copy_bandwidth(LARGE_BUFFER, runtime.device, repeats=5, iters=3, clock=clock)
    loop = cnnlab_loop(data_root, runtime, steps, TrainConfig(batch_size=batch), clock)
    loop()  # warm-up
    measured = statistics.median(loop() for _ in range(repeats))
    return Floors(
        batch, runtime.precision, layers, flops, gflops, bandwidth, buffer, measured, large
    )
