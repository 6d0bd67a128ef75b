"""Each operator of the tutorial CNN's training step timed in place (inside a step written out
operator by operator, as training runs it: channels_last, pooling before ReLU) and alone (the
same call on the same tensors, repeated in a loop, its buffers warm in the cache).

    python scripts/bench_step_in_place.py --steps 200
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

aten = torch.ops.aten
CL = torch.channels_last
POOL = ([2, 2], [2, 2])
CONV = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, ..., groups


def tensors(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    t = {
        "x": torch.rand(64, 1, 28, 28).to(memory_format=CL),
        "w1": (torch.randn(32, 1, 3, 3) * 0.3).to(memory_format=CL),
        "w2": (torch.randn(64, 32, 3, 3) * 0.06).to(memory_format=CL),
        "fw": torch.randn(10, 3136) * 0.01,
    }
    for name, c in (("1", 32), ("2", 64)):
        t |= {"b" + name: torch.zeros(c), "g" + name: torch.ones(c), "be" + name: torch.zeros(c)}
        t |= {"rm" + name: torch.zeros(c), "rv" + name: torch.ones(c)}
    return t


def block_forward(t: dict, n: str, x: torch.Tensor, record) -> tuple:
    """conv{n}, bn{n}, pool, ReLU forward; returns what their backward needs and the output."""
    c = record(f"conv{n} forward", lambda: aten.convolution(x, t["w" + n], t["b" + n], *CONV))
    b, mean, invstd = record(
        f"bn{n} forward",
        lambda: aten.native_batch_norm(
            c, t["g" + n], t["be" + n], t["rm" + n], t["rv" + n], True, 0.1, 1e-5
        ),
    )
    p, indices = record(f"pool{n} forward", lambda: aten.max_pool2d_with_indices(b, *POOL))
    r = record(f"relu{n} forward", lambda: aten.relu(p))
    return (x, c, mean, invstd, b, indices, r), r


def block_backward(t: dict, n: str, saved: tuple, grad: torch.Tensor, record, first: bool):
    """The same block's backward, from the gradient at its output to the one at its input."""
    x, c, mean, invstd, b, indices, r = saved  # each lambda keeps its own inputs (re-timed alone)
    g_relu = record(f"relu{n} backward", lambda: aten.threshold_backward(grad, r, 0))
    g_pool = record(
        f"pool{n} backward",
        lambda: aten.max_pool2d_with_indices_backward(
            g_relu, b, *POOL, [0, 0], [1, 1], False, indices
        ),
    )
    g_bn = record(
        f"bn{n} backward",
        lambda: aten.native_batch_norm_backward(
            g_pool, c, t["g" + n], t["rm" + n], t["rv" + n], mean, invstd, True, 1e-5, [True] * 3
        ),
    )[0]
    mask = [not first, True, True]  # no gradient for the images
    channels = [t["w" + n].shape[0]]
    return record(
        f"conv{n} backward",
        lambda: aten.convolution_backward(g_bn, x, t["w" + n], channels, *CONV, mask),
    )[0]


def step(t: dict, record) -> None:
    """One training step's operators (forward, loss, backward) through `record(name, fn)`."""
    saved1, r1 = block_forward(t, "1", t["x"], record)
    saved2, r2 = block_forward(t, "2", r1, record)
    flat = r2.reshape(64, -1)
    logits = record("fc forward", lambda: flat @ t["fw"].t())
    grad_logits = torch.softmax(logits, 1) / 64
    grad_flat = record("fc backward", lambda: (grad_logits @ t["fw"], grad_logits.t() @ flat))[0]
    grad_r2 = grad_flat.view(64, 64, 7, 7).contiguous(memory_format=CL)
    grad_r1 = block_backward(t, "2", saved2, grad_r2, record, first=False)
    block_backward(t, "1", saved1, grad_r1, record, first=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--alone", type=int, default=50, help="calls per operator alone")
    args = parser.parse_args()
    t = tensors()
    in_place: dict[str, list[float]] = collections.defaultdict(list)
    calls: dict[str, object] = {}

    def record(name, fn):
        start = time.perf_counter()
        result = fn()
        in_place[name].append(time.perf_counter() - start)
        calls[name] = fn
        return result

    for _ in range(20):  # warm-up
        step(t, record)
    in_place.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(t, record)
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    print(f"{'operator':16s} {'in place, ms':>13s} {'alone, ms':>10s}")
    totals = [0.0, 0.0]
    for name, times in in_place.items():
        fn = calls[name]
        for _ in range(5):
            fn()
        alone = []
        for _ in range(args.alone):
            began = time.perf_counter()
            fn()
            alone.append(time.perf_counter() - began)
        here, there = statistics.median(times) * 1e3, statistics.median(alone) * 1e3
        totals[0] += here
        totals[1] += there
        print(f"{name:16s} {here:13.3f} {there:10.3f}")
    print(f"{'sum':16s} {totals[0]:13.3f} {totals[1]:10.3f}   (the step: {step_ms:.2f} ms)")


if __name__ == "__main__":
    main()
