"""Timing on a device: wait for its queued work before every clock read, and repeats' medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

Clock = Callable[[], float]  # seconds; time.perf_counter unless a test gives a fake one
T = TypeVar("T")


def sync(device: torch.device) -> None:
    """Wait until `device` has run all its queued work (CUDA and MPS kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(work: Callable[[], T], device: torch.device, clock: Clock) -> tuple[T, float]:
    """`work()`'s result and its wall-clock seconds on `device`, synchronised at both reads."""
    sync(device)
    start = clock()
    result = work()
    sync(device)
    return result, clock() - start


@dataclass(frozen=True)
class LoopRuns:
    """One training loop's images/s, repeat by repeat; its figure is their median."""

    name: str
    runs: tuple[float, ...]

    @property
    def images_per_second(self) -> float:
        return statistics.median(self.runs)


def taking_turns(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each run's median result over `repeats` rounds in which the runs take turns, after one
    untimed call each: drift in the machine's speed hits every run alike."""
    for run in runs.values():
        run()
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def images_per_second(step: Callable[[], object], steps: int, batch: int, clock: Clock) -> float:
    """`batch * steps` over the seconds `steps` calls of `step` take (on the CPU: no sync)."""
    start = clock()
    for _ in range(steps):
        step()
    return batch * steps / (clock() - start)
