"""Tried and rejected: conv2's weight gradient as one matrix product of the output gradient with
the input's 3x3 patches (im2col), its input gradient from oneDNN alone, in a custom autograd
function; against PyTorch's `convolution_backward` for both. The training step as
`train.build_model` and `train.make_optimizer` make it, the two paths alternating in one process,
medians over repeats.

    python scripts/bench_conv_weight_gemm.py --repeats 11 --steps 50
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from cnnlab.bench.timing import images_per_second, taking_turns
from cnnlab.config import TrainConfig
from cnnlab.data.preprocess import to_model_input
from cnnlab.runtime import resolve_runtime
from cnnlab.train import build_model, make_optimizer, train_step

aten = torch.ops.aten
CONV = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, ..., groups


def patches(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, 9*C): each position's 3x3 neighbourhood, (kh, kw, c) order."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
    s_n, s_c, s_h, s_w = padded.stride()
    view = padded.as_strided((n, h, w, 3, 3, c), (s_n, s_h, s_w, s_h, s_w, s_c))
    return view.reshape(n * h * w, 9 * c)


class Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return aten.convolution(x, weight, bias, *CONV)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        out = weight.shape[0]
        grad = grad.contiguous(memory_format=torch.channels_last)
        mask = [True, False, False]
        grad_x = aten.convolution_backward(grad, x, weight, [out], *CONV, mask)[0]
        rows = grad.permute(0, 2, 3, 1).reshape(-1, out)  # a view of channels_last
        grad_w = (rows.t() @ patches(x)).view(out, 3, 3, -1).permute(0, 3, 1, 2)
        return grad_x, grad_w, rows.sum(0)


def gemm_forward(model, x: torch.Tensor) -> torch.Tensor:
    x = torch.relu(model.pool(model.bn1(model.conv1(x))))
    x = Conv3x3.apply(x, model.conv2.weight, model.conv2.bias)
    x = torch.relu(model.pool(model.bn2(x)))
    return model.fc(x.flatten(start_dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    runtime, config = resolve_runtime("cpu", "fp32"), TrainConfig()
    torch.manual_seed(0)
    plain = build_model(config, runtime)
    gemm = copy.deepcopy(plain)
    gemm.forward = lambda images: gemm_forward(gemm, images)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    x, y = to_model_input(images, channels_last=runtime.channels_last), torch.randint(0, 10, (64,))
    for model in (plain, gemm):
        F.cross_entropy(model(x), y).backward()
    error = (plain.conv2.weight.grad - gemm.conv2.weight.grad).norm()
    print(
        f"conv2's weight gradient: relative difference {error / plain.conv2.weight.grad.norm():.1e}"
    )
    paths = {"PyTorch's convolution_backward": plain, "weight gradient as a GEMM": gemm}
    optimizers = {k: make_optimizer(config, m.parameters()) for k, m in paths.items()}

    def run(name: str):
        step = lambda: train_step(paths[name], optimizers[name], x, y, "fp32")  # noqa: E731
        return lambda: images_per_second(step, args.steps, 64, time.perf_counter)

    rates = taking_turns({name: run(name) for name in paths}, args.repeats)
    base, other = (rates[k] for k in paths)
    print(f"PyTorch's convolution_backward: {base:,.0f} images/s")
    print(f"weight gradient as a GEMM:      {other:,.0f} images/s  ({other / base - 1:+.0%})")


if __name__ == "__main__":
    main()
