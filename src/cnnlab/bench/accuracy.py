"""Accuracy benchmarks: the speed-run preset over seeds, and the tutorial program against cnnlab.

>>> speedrun_bench(data_root, resolve_runtime(), seeds=10).test_accuracy_mean
>>> accuracy_bench(data_root, resolve_runtime(), seeds=5).mean_difference
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cnnlab.bench.tutorial import tutorial_training
from cnnlab.config import TrainConfig, preset_config
from cnnlab.errors import TrainingError
from cnnlab.phases import parse_line
from cnnlab.run import load_splits
from cnnlab.runtime import Runtime
from cnnlab.stats import mean_std
from cnnlab.train import fit


@dataclass(frozen=True)
class SpeedrunReport:
    config: TrainConfig
    test_accuracies: tuple[float, ...]  # seed 0, 1, ...
    training_seconds: tuple[float, ...]
    process_seconds: float  # one whole `cnnlab train --preset speedrun`, start to exit
    process_phases: dict[str, float]  # where that process said its seconds went

    @property
    def seeds(self) -> list[int]:
        return list(range(len(self.test_accuracies)))

    @property
    def test_accuracy_mean(self) -> float:
        return mean_std(self.test_accuracies)[0]

    @property
    def test_accuracy_std(self) -> float:
        return mean_std(self.test_accuracies)[1] or 0.0

    @property
    def training_seconds_median(self) -> float:
        return statistics.median(self.training_seconds)

    def to_json(self) -> dict:
        return {
            "config": self.config.to_json(),
            "seeds": self.seeds,
            "test_accuracies": list(self.test_accuracies),
            "test_accuracy_mean": self.test_accuracy_mean,
            "test_accuracy_std": self.test_accuracy_std,
            "training_seconds": list(self.training_seconds),
            "training_seconds_median": self.training_seconds_median,
            "process_seconds": self.process_seconds,
            "process_phases": self.process_phases,
        }


def speedrun_bench(
    data_root: Path, runtime: Runtime, seeds: int = 10, log: Callable[[str], None] = print
) -> SpeedrunReport:
    """`--preset speedrun` over seeds 0..seeds-1 with the data loaded once, then one whole
    `cnnlab train --preset speedrun` process on the same device, timed from start to exit."""
    config = preset_config("speedrun")
    splits = load_splits(config, data_root)
    accuracies, seconds = [], []
    for seed in range(seeds):
        result = fit(replace(config, seed=seed), splits, runtime, log=lambda _: None)
        accuracies.append(result.test_accuracy)
        seconds.append(sum(m["seconds"] for m in result.metrics))
        log(f"  seed {seed}: test accuracy {accuracies[-1]:.4f}, training {seconds[-1]:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "cnnlab", "train", "--preset", "speedrun", "--quiet"]
        command += ["--device", runtime.device.type, "--precision", runtime.precision]
        command += ["--data-dir", str(data_root), "--out", str(Path(folder) / "run")]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        process_seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise TrainingError(f"the timed `cnnlab train --preset speedrun` process failed: {last}")
    phases = time_line_phases(done.stdout)
    return SpeedrunReport(config, tuple(accuracies), tuple(seconds), process_seconds, phases)


def time_line_phases(output: str) -> dict[str, float]:
    """The phases of `cnnlab train`'s last line, `Time: 13.6 s in all: start-up 2.7 s, ...`."""
    lines = [line for line in output.splitlines() if line.startswith("Time: ")]
    if not lines:
        raise TrainingError("`cnnlab train` printed no `Time:` line")
    return parse_line(lines[-1])


@dataclass(frozen=True)
class AccuracyReport:
    """Test accuracy of the tutorial program and of `cnnlab train` on paired seeds 0, 1, ..."""

    epochs: int
    precision: str  # cnnlab's; the tutorial program is fp32
    tutorial: tuple[float, ...]
    cnnlab: tuple[float, ...]

    @property
    def seeds(self) -> list[int]:
        return list(range(len(self.tutorial)))

    @property
    def tutorial_mean(self) -> float:
        return mean_std(self.tutorial)[0]

    @property
    def cnnlab_mean(self) -> float:
        return mean_std(self.cnnlab)[0]

    @property
    def mean_difference(self) -> float:
        return mean_std(self._differences())[0]

    @property
    def difference_standard_error(self) -> float:
        std = mean_std(self._differences())[1] or 0.0
        return std / len(self.tutorial) ** 0.5

    def _differences(self) -> list[float]:
        return [b - a for a, b in zip(self.tutorial, self.cnnlab)]

    def to_json(self) -> dict:
        return {
            "epochs": self.epochs,
            "seeds": self.seeds,
            "precision": self.precision,
            "tutorial_test_accuracies": list(self.tutorial),
            "cnnlab_test_accuracies": list(self.cnnlab),
            "tutorial_mean": self.tutorial_mean,
            "cnnlab_mean": self.cnnlab_mean,
            "mean_difference": self.mean_difference,
            "difference_standard_error": self.difference_standard_error,
        }


def accuracy_bench(
    data_root: Path,
    runtime: Runtime,
    seeds: int = 5,
    epochs: int = 5,
    log: Callable[[str], None] = print,
) -> AccuracyReport:
    """Paired seeds: the fp32 tutorial program against `cnnlab train`'s defaults, test accuracy."""
    config = TrainConfig(epochs=epochs)
    splits = load_splits(config, data_root)
    tutorial, ours = [], []
    for seed in range(seeds):
        tutorial.append(tutorial_training(data_root, seed, runtime.device, epochs))
        result = fit(replace(config, seed=seed), splits, runtime, log=lambda _: None)
        ours.append(result.test_accuracy)
        log(f"  seed {seed}: tutorial {tutorial[-1]:.4f}, cnnlab {ours[-1]:.4f}")
    return AccuracyReport(epochs, runtime.precision, tuple(tutorial), tuple(ours))
