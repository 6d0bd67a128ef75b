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


def step(t: dict, record) -> None:
    """One training step's operators (forward, loss, backward) through `record(name, fn)`."""
    c1 = record("conv1 forward", lambda: aten.convolution(t["x"], t["w1"], t["b1"], *CONV))
    b1, m1, s1 = record(
        "bn1 forward",
        lambda: aten.native_batch_norm(c1, t["g1"], t["be1"], t["rm1"], t["rv1"], True, 0.1, 1e-5),
    )
    p1, i1 = record("pool1 forward", lambda: aten.max_pool2d_with_indices(b1, *POOL))
    r1 = record("relu1 forward", lambda: aten.relu(p1))
    c2 = record("conv2 forward", lambda: aten.convolution(r1, t["w2"], t["b2"], *CONV))
    b2, m2, s2 = record(
        "bn2 forward",
        lambda: aten.native_batch_norm(c2, t["g2"], t["be2"], t["rm2"], t["rv2"], True, 0.1, 1e-5),
    )
    p2, i2 = record("pool2 forward", lambda: aten.max_pool2d_with_indices(b2, *POOL))
    r2 = record("relu2 forward", lambda: aten.relu(p2))
    flat = r2.reshape(64, -1)
    logits = record("fc forward", lambda: flat @ t["fw"].t())
    grad_logits = torch.softmax(logits, 1) / 64
    grad_flat = record("fc backward", lambda: (grad_logits @ t["fw"], grad_logits.t() @ flat))[0]
    grad_r2 = grad_flat.view(64, 64, 7, 7).contiguous(memory_format=CL)
    grad_p2 = record("relu2 backward", lambda: aten.threshold_backward(grad_r2, r2, 0))
    grad_b2 = record(
        "pool2 backward",
        lambda: aten.max_pool2d_with_indices_backward(
            grad_p2, b2, *POOL, [0, 0], [1, 1], False, i2
        ),
    )
    grad_c2 = record(
        "bn2 backward",
        lambda: aten.native_batch_norm_backward(
            grad_b2, c2, t["g2"], t["rm2"], t["rv2"], m2, s2, True, 1e-5, [True, True, True]
        ),
    )[0]
    grad_r1 = record(
        "conv2 backward",
        lambda: aten.convolution_backward(grad_c2, r1, t["w2"], [64], *CONV, [True, True, True]),
    )[0]
    grad_p1 = record("relu1 backward", lambda: aten.threshold_backward(grad_r1, r1, 0))
    grad_b1 = record(
        "pool1 backward",
        lambda: aten.max_pool2d_with_indices_backward(
            grad_p1, b1, *POOL, [0, 0], [1, 1], False, i1
        ),
    )
    grad_c1 = record(
        "bn1 backward",
        lambda: aten.native_batch_norm_backward(
            grad_b1, c1, t["g1"], t["rm1"], t["rv1"], m1, s1, True, 1e-5, [True, True, True]
        ),
    )[0]
    record(
        "conv1 backward",
        lambda: aten.convolution_backward(
            grad_c1, t["x"], t["w1"], [32], *CONV, [False, True, True]
        ),
    )


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
