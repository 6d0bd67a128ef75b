"""Batch norm over the whole batch of several data-parallel processes, on CPUs too.

PyTorch's `torch.nn.SyncBatchNorm` runs on GPUs only (its statistics kernels exist for CUDA
alone, and DistributedDataParallel refuses it in a CPU model), so a CPU job (gloo) could not
use `--sync-bn`. `CpuSyncBatchNorm` fills the gap: in training mode it sums each channel's
values, then its squared deviations, over all processes with an `all_reduce` whose backward
pass is an `all_reduce` too, so the forward pass normalises by the whole batch's mean and
variance and the gradient flows through those statistics as it would in one process.

`synced_view` gives the training step a copy of the model's module tree whose batch norms are
synchronised (torch's class on a GPU) and which shares every parameter and buffer with the
model: the model itself keeps its plain layers, so evaluating, folding and saving it are the
same as for a model trained in one process.

    >>> ddp = DistributedDataParallel(synced_view(model, device))   # trains `model`'s tensors
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AllReduceSum(torch.autograd.Function):
    """The sum over processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = x.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover every process's batch (any device)."""

    def __init__(self, num_features: int, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None):  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, ...)
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        ):
            return super().forward(x)
        self._check_input_dim(x)
        return self.forward_synced(x)

    def forward_synced(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise by the mean and biased variance of every process's batch (in float64)."""
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()
        count = x.new_full((1,), x.numel() // x.shape[1], dtype=torch.float64)
        sums = AllReduceSum.apply(torch.cat([xd.sum(dims), count]), group)  # (C + 1,)
        n = sums[-1].detach()
        mean = sums[:-1] / n  # (C,)
        centred = xd - mean.view(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims), group) / n  # (C,)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        self.update_running_stats(mean.detach(), var.detach(), n)
        return y.to(x.dtype)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """As `F.batch_norm` does: the unbiased variance, an exponential or cumulative average."""
        if not self.track_running_stats or self.running_mean is None:
            return
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:
            factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / (n - 1).clamp(min=1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def synced(bn: _BatchNorm, device: torch.device, process_group=None) -> nn.Module:
    """A synchronised batch norm holding `bn`'s own parameter and buffer tensors."""
    kind = nn.SyncBatchNorm if device.type == "cuda" else CpuSyncBatchNorm
    layer = kind(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group
    )
    for name in ("weight", "bias"):
        layer._parameters[name] = bn._parameters.get(name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        layer._buffers[name] = bn._buffers.get(name)
    return layer.train(bn.training)


def synced_view(module: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """`module` with its batch norms synchronised, for the training step: new modules where a
    batch norm is or lies below, the very same parameter and buffer tensors everywhere."""
    if isinstance(module, _BatchNorm):
        return synced(module, device, process_group)
    if not any(isinstance(m, _BatchNorm) for m in module.modules()):
        return module
    view = copy.copy(module)
    view._parameters = dict(module._parameters)
    view._buffers = dict(module._buffers)
    view._modules = {
        name: None if child is None else synced_view(child, device, process_group)
        for name, child in module._modules.items()
    }
    return view
