"""Training speed of the tutorial CNN with ReLU before max-pooling (the tutorial's order) and
after it (training's execution path, the same values and gradients): steps of batch 64 on random
images, the two orders alternating in one process, medians over repeats.

    python scripts/bench_pool_order.py --repeats 7 --steps 50
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnlab.bench.timing import images_per_second, taking_turns
from cnnlab.models import ModelConfig, create_model
from cnnlab.train import train_step


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

    def run(pool_first: bool):
        def steps() -> float:
            model.pool_before_relu = pool_first
            step = lambda: train_step(model, optimizer, x, y, "fp32")  # noqa: E731
            return images_per_second(step, args.steps, 64, time.perf_counter)

        return steps

    rates = taking_turns({order: run(order) for order in (False, True)}, args.repeats)
    tutorial, fast = rates[False], rates[True]
    print(f"ReLU then pool (the tutorial): {tutorial:,.0f} images/s")
    print(f"pool then ReLU (training):     {fast:,.0f} images/s  ({fast / tutorial - 1:+.0%})")


if __name__ == "__main__":
    main()
