"""Tried and rejected: training batch norm, 2x2 max-pooling and ReLU as one autograd step.

`relu(max_pool(batch_norm(c)))` in training mode is, per channel, `relu(max_pool(a * c + b))`
with `a = gamma / sqrt(var + eps)`, `b = beta - mean * a`. An increasing map commutes with
max-pooling, so the block below pools the raw convolution output and normalises only the pooled
quarter (channels with a negative `a` pool `-c`); backward uses that the pool passes gradient
to one position in four, so batch norm's sums run over the quarter and the full-size input
gradient is one scatter plus one pass `k1 * c + k0`. Fewer passes over memory, equal to
PyTorch's modules up to rounding (printed below), and yet slower than PyTorch's own kernels in
cnnlab's training loop on MNIST (BENCHMARKS.md), the two paths taking turns in one process.

    python scripts/bench_fused_block.py --data-dir ../shared/data --repeats 5 --steps 200
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.bench.throughput import cnnlab_loop
from cnnlab.bench.timing import taking_turns
from cnnlab.config import TrainConfig
from cnnlab.models import ModelConfig, create_model
from cnnlab.runtime import resolve_runtime
from cnnlab.train import build_model

aten = torch.ops.aten
POOL = ([2, 2], [2, 2])  # kernel, stride
WELL_CONDITIONED = 1e4  # mean^2 / var above which the variance is summed a second time


def batch_statistics(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of (N, C, H, W) `c`, from one pass of sums and one
    of squares; a channel whose mean dwarfs its spread gets the two-pass variance instead."""
    count = c.numel() // c.shape[1]
    mean = c.sum((0, 2, 3)) / count
    var = ((c * c).sum((0, 2, 3)) / count - mean * mean).clamp(min=0)
    if bool((mean * mean > WELL_CONDITIONED * var).any()):
        var = (c - mean.view(1, -1, 1, 1)).square().sum((0, 2, 3)) / count
    return mean, var


class BatchNormPoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, weight, bias, eps: float):
        mean, var = batch_statistics(c)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        shift = bias - mean * scale
        per_channel = (1, -1, 1, 1)
        negative = scale < 0
        if bool(negative.any()):  # pool -c there: the maximum of a * c is at c's minimum
            sign = torch.where(negative, -1.0, 1.0).view(per_channel)
            pooled, indices = aten.max_pool2d_with_indices(c * sign, *POOL)
            pooled = pooled * sign
        else:
            pooled, indices = aten.max_pool2d_with_indices(c, *POOL)
        out = torch.relu(torch.addcmul(shift.view(per_channel), pooled, scale.view(per_channel)))
        ctx.save_for_backward(c, indices, pooled, out, mean, invstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        c, indices, pooled, out, mean, invstd, weight = ctx.saved_tensors
        per_channel = (1, -1, 1, 1)
        count = c.numel() // c.shape[1]
        grad_pooled = torch.where(out > 0, grad_out, 0.0)  # through the ReLU
        xhat = (pooled - mean.view(per_channel)) * invstd.view(per_channel)
        grad_bias = grad_pooled.sum((0, 2, 3))
        grad_weight = (grad_pooled * xhat).sum((0, 2, 3))
        scale = weight * invstd
        # d c = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), dy nonzero at the maxima only
        k1 = -scale * invstd * grad_weight / count
        k0 = -scale * grad_bias / count - k1 * mean
        grad_c = aten.max_pool2d_with_indices_backward(
            grad_pooled * scale.view(per_channel), c, *POOL, [0, 0], [1, 1], False, indices
        )
        grad_c.addcmul_(c, k1.view(per_channel)).add_(k0.view(per_channel))
        return grad_c, grad_weight, grad_bias, None


def batch_norm_pool_relu(c: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """`relu(max_pool2d(bn(c), 2))` for a training-mode `bn`, its running statistics and batch
    count updated as `nn.BatchNorm2d` updates them (momentum, unbiased running variance)."""
    out, mean, var = BatchNormPoolReLU.apply(c, bn.weight, bn.bias, bn.eps)
    with torch.no_grad():
        count = c.numel() // c.shape[1]
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var * (count / max(count - 1, 1)), bn.momentum)
        bn.num_batches_tracked.add_(1)
    return out


def fused_forward(model, x: torch.Tensor) -> torch.Tensor:
    x = batch_norm_pool_relu(model.conv1(x), model.bn1)
    x = batch_norm_pool_relu(model.conv2(x), model.bn2)
    return model.fc(x.flatten(start_dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds MNIST/raw/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn")).to(memory_format=torch.channels_last)
    model.pool_before_relu = True  # training's path, the one to beat
    fused = copy.deepcopy(model)
    fused.forward = lambda images: fused_forward(fused, images)
    x, y = (
        torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last),
        torch.arange(64) % 10,
    )
    for path in (model, fused):
        F.cross_entropy(path(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        if name.startswith("conv") and name.endswith("bias"):  # before batch norm: zero
            print(f"gradient of {name}: {float(p.grad.norm()):.0e} and {float(q.grad.norm()):.0e}")
            continue
        error = float((p.grad - q.grad).norm() / p.grad.norm())
        print(f"gradient of {name}: relative difference {error:.1e}")

    def fused_model(config, runtime):
        built = build_model(config, runtime)
        built.forward = lambda images: fused_forward(built, images)
        return built

    runtime, config = resolve_runtime("cpu", "fp32"), TrainConfig()
    loops = {
        "PyTorch's modules (pool before ReLU)": cnnlab_loop(
            args.data_dir, runtime, args.steps, config
        ),
        "fused block": cnnlab_loop(
            args.data_dir, runtime, args.steps, config, make_model=fused_model
        ),
    }
    rates = taking_turns(loops, args.repeats)
    base, fast = rates.values()
    print(f"training loop on MNIST, PyTorch's modules: {base:,.0f} images/s")
    print(
        f"training loop on MNIST, fused block:       {fast:,.0f} images/s  ({fast / base - 1:+.0%})"
    )


if __name__ == "__main__":
    main()
