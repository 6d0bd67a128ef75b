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
