"""Where one training step's time goes: torch.profiler over `train_step`, operators largest first.

>>> profile_step(resolve_runtime()).top(15)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from cnnlab.bench.timing import sync
from cnnlab.config import TrainConfig
from cnnlab.data import get_dataset
from cnnlab.data.preprocess import to_model_input
from cnnlab.runtime import Runtime
from cnnlab.train import build_model, make_optimizer, train_step


@dataclass(frozen=True)
class ProfileRow:
    operator: str
    ms_per_step: float  # self time
    share: float  # of the step's profiled self time


@dataclass(frozen=True)
class StepProfile:
    steps: int
    rows: tuple[ProfileRow, ...]  # largest first

    def top(self, count: int = 15) -> tuple[ProfileRow, ...]:
        """The `count` largest rows, then one "(all others)" row summing the rest, if any."""
        rest = self.rows[count:]
        if not rest:
            return self.rows
        others = ProfileRow(
            "(all others)", sum(r.ms_per_step for r in rest), sum(r.share for r in rest)
        )
        return (*self.rows[:count], others)

    def to_json(self) -> dict:
        return {"steps": self.steps, "profile": [asdict(r) for r in self.rows]}


def profile_step(
    runtime: Runtime, config: TrainConfig | None = None, steps: int = 50
) -> StepProfile:
    """Where one training step's time goes on the runtime's device, largest first.

    Profiles `train_step` on random data of the recipe's batch size under torch.profiler (the
    kernels' time on a GPU, the operators' on a CPU); the profiler adds some overhead of its
    own, so read the shares, not the totals.
    """
    from torch.profiler import ProfilerActivity, profile

    config = config or TrainConfig()
    spec = get_dataset(config.dataset)
    model = build_model(config, runtime)
    optimizer = make_optimizer(config, model.parameters())
    images = torch.randint(0, 256, (config.batch_size, *spec.shape), dtype=torch.uint8)
    x = to_model_input(images.to(runtime.device), channels_last=runtime.channels_last)
    y = torch.randint(0, spec.num_classes, (config.batch_size,), device=runtime.device)
    for _ in range(10):
        train_step(model, optimizer, x, y, runtime.precision)
    activities = [ProfilerActivity.CPU]
    attribute = "self_cpu_time_total"
    if runtime.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        attribute = "self_device_time_total"
    sync(runtime.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(model, optimizer, x, y, runtime.precision)
        sync(runtime.device)
    events = [(e.key, getattr(e, attribute)) for e in prof.key_averages()]
    events = [(key, us) for key, us in events if us > 0]
    total = sum(us for _, us in events)
    rows = [ProfileRow(key, us / steps / 1000, us / total) for key, us in events]
    return StepProfile(steps, tuple(sorted(rows, key=lambda r: r.ms_per_step, reverse=True)))
