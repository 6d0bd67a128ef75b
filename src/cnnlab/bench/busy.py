"""Throughput on a busy machine: each loop alone, then beside one CPU-bound competing process.

The competitor is `while True: pass` in another Python process, started and stopped here (it also
stops by itself when this process dies). Quiet and busy repeats alternate, so drift in the
machine's speed hits both alike; the figure is the share of its quiet throughput a loop keeps.

    >>> report = busy_bench(data_root, resolve_runtime(), steps=100, repeats=3)
    >>> [(loop.name, loop.kept) for loop in report.loops]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.bench.throughput import cnnlab_loop
from cnnlab.bench.timing import Clock, timed
from cnnlab.bench.tutorial import tutorial_loop
from cnnlab.config import TrainConfig
from cnnlab.cpuload import free_cpus
from cnnlab.models import ModelConfig, create_model
from cnnlab.predict import EvalSettings, Predictor
from cnnlab.runtime import Runtime

# Spins until its parent is gone, checking every ~10^6 iterations (a few ms).
COMPETITOR = (
    "import os\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(1_000_000):\n"
    "        pass\n"
)
OPENMP_WAIT = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")  # how OpenMP threads wait, when set
SETTLE_SECONDS = 0.3  # for the competitor to start spinning before a busy repeat


@dataclass(frozen=True)
class BusyRuns:
    """One loop's images/s, repeat by repeat: alone; beside the competitor with the threads it
    had (the competitor started during the run); and beside it with the threads a command
    started on the busy machine takes (`cnnlab.cpuload.free_cpus`); for training, also
    starting with the threads it had and following the load as `cnnlab train` does."""

    name: str
    quiet: tuple[float, ...]
    busy_same_threads: tuple[float, ...]
    busy_free_threads: tuple[float, ...]
    busy_following: tuple[float, ...] = ()  # training only: the threads it had, then following

    @property
    def quiet_rate(self) -> float:
        return statistics.median(self.quiet)

    def kept(self, runs: tuple[float, ...]) -> float:
        """The share of its quiet throughput the loop keeps in `runs`."""
        return statistics.median(runs) / self.quiet_rate

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "quiet_images_per_second": self.quiet_rate,
            "busy_same_threads_images_per_second": statistics.median(self.busy_same_threads),
            "busy_free_threads_images_per_second": statistics.median(self.busy_free_threads),
            "kept_same_threads": self.kept(self.busy_same_threads),
            "kept_free_threads": self.kept(self.busy_free_threads),
            "quiet": list(self.quiet),
            "busy_same_threads": list(self.busy_same_threads),
            "busy_free_threads": list(self.busy_free_threads),
            "busy_following": list(self.busy_following),
        } | ({"kept_following": self.kept(self.busy_following)} if self.busy_following else {})


@dataclass(frozen=True)
class BusyReport:
    threads: int  # alone, and beside the competitor when it started during the run
    free_threads: tuple[int, ...]  # what free_cpus chose beside the competitor, each repeat
    wait: str  # how OpenMP threads waited: GOMP_SPINCOUNT / OMP_WAIT_POLICY, or "default"
    loops: tuple[BusyRuns, ...]

    def to_json(self) -> dict:
        return {
            "threads": self.threads,
            "free_threads": list(self.free_threads),
            "openmp_wait": self.wait,
            "loops": [loop.to_json() for loop in self.loops],
        }


@contextlib.contextmanager
def competing_process() -> Iterator[subprocess.Popen]:
    """One CPU-bound process beside this one for the duration of the block."""
    process = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        time.sleep(SETTLE_SECONDS)
        yield process
    finally:
        process.kill()
        process.wait()


def prediction_loop(
    runtime: Runtime, batch: int, count: int, clock: Clock = time.perf_counter
) -> Callable[[], float]:
    """A function that classifies `count` random images with the tutorial CNN as evaluation
    and prediction do (a `Predictor` at batch `batch`) and returns images/s."""
    model = create_model(ModelConfig("cnn")).to(runtime.device)
    settings = EvalSettings(
        batch_size=batch, precision=runtime.precision, channels_last=runtime.channels_last
    )
    predictor = Predictor(model, settings)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, device=runtime.device)

    def run() -> float:
        if batch == 1:  # one call per image, as a server or `cnnlab predict FILE` makes them
            _, seconds = timed(
                lambda: [predictor.logits(images[i : i + 1]) for i in range(count)],
                runtime.device,
                clock,
            )
        else:
            _, seconds = timed(lambda: predictor.logits(images), runtime.device, clock)
        return count / seconds

    return run


def busy_bench(data_root: Path, runtime: Runtime, steps: int, repeats: int) -> BusyReport:
    """Training (cnnlab's loop and the tutorial's), evaluation (batch 1,000) and prediction
    (one image per call), each measured alone and beside a competing process (with the thread
    count unchanged, then with the count `free_cpus` gives on the busy machine)."""
    training = "cnnlab train (tutorial recipe)"
    following = cnnlab_loop(data_root, runtime, steps, TrainConfig(), follow_load=True)
    loops = {
        training: cnnlab_loop(data_root, runtime, steps, TrainConfig()),
        "tutorial loop": tutorial_loop(data_root, steps, runtime.device),
        "evaluation, batch 1,000": prediction_loop(runtime, 1000, 10_000),
        "prediction, 1 image per call": prediction_loop(runtime, 1, 500),
    }
    threads = torch.get_num_threads()
    for run in (*loops.values(), following):  # warm-up
        run()
    torch.set_num_threads(threads)  # following may have moved it
    phases = ("quiet", "same", "free")
    rates: dict[str, dict[str, list[float]]] = {p: {name: [] for name in loops} for p in phases}
    chosen, followed = [], []
    for _ in range(repeats):
        for name, run in loops.items():
            rates["quiet"][name].append(run())
        with competing_process():
            for name, run in loops.items():
                rates["same"][name].append(run())
            try:
                followed.append(following())
            finally:
                torch.set_num_threads(threads)
            chosen.append(free_cpus()[0])
            torch.set_num_threads(chosen[-1])
            try:
                for name, run in loops.items():
                    rates["free"][name].append(run())
            finally:
                torch.set_num_threads(threads)
    runs = tuple(
        BusyRuns(
            name,
            *(tuple(rates[p][name]) for p in phases),
            tuple(followed) if name == training else (),
        )
        for name in loops
    )
    settings = [f"{k}={os.environ[k]}" for k in OPENMP_WAIT if k in os.environ]
    return BusyReport(threads, tuple(chosen), ", ".join(settings) or "default", runs)
