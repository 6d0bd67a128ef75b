"""Training speed of the tutorial CNN with ReLU before max-pooling (the tutorial's order) and
after it (training's execution path, the same values and gradients): steps of batch 64 on random
images, the two orders alternating in one process, medians over repeats.

    python scripts/bench_pool_order.py --repeats 7 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cnnlab.models import ModelConfig, create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn")).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x = torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def images_per_second(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return 64 * steps / (time.perf_counter() - start)

    rates: dict[bool, list[float]] = {False: [], True: []}
    for pool_first in rates:  # warm-up
        model.pool_before_relu = pool_first
        images_per_second(10)
    for _ in range(args.repeats):
        for pool_first in rates:
            model.pool_before_relu = pool_first
            rates[pool_first].append(images_per_second(args.steps))
    tutorial, fast = (statistics.median(rates[k]) for k in (False, True))
    print(f"ReLU then pool (the tutorial): {tutorial:,.0f} images/s")
    print(f"pool then ReLU (training):     {fast:,.0f} images/s  ({fast / tutorial - 1:+.0%})")


if __name__ == "__main__":
    main()
