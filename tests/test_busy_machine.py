"""A busy machine: free CPUs from /proc/stat, the thread count a command takes, and the
benchmark's competing process."""

from __future__ import annotations

import os
import time

import pytest
import torch

from cnnlab import cpuload, runtime
from cnnlab.bench.busy import BusyRuns, competing_process
from cnnlab.cpuload import busy_elsewhere, cpu_jiffies, free_cpus

STAT = """cpu  300 0 100 900 10 0 0 0 0 0
cpu0 100 0 50 400 5 0 0 0 0 0
cpu1 200 0 50 500 5 0 0 0 0 0
intr 12345
ctxt 999
"""


def stat_after(extra: dict[int, tuple[int, int]]) -> str:
    """STAT with cpuN's user and idle ticks raised by extra[N] = (user, idle)."""
    lines = []
    for line in STAT.splitlines():
        fields = line.split()
        if fields[0].startswith("cpu") and fields[0] != "cpu":
            user, idle = extra.get(int(fields[0][3:]), (0, 0))
            fields[1] = str(int(fields[1]) + user)
            fields[4] = str(int(fields[4]) + idle)
        lines.append(" ".join(fields))
    return "\n".join(lines)


def test_busy_ticks_are_all_but_idle_and_io_wait():
    assert cpu_jiffies(STAT, [0]) == (150, 555)
    assert cpu_jiffies(STAT, [0, 1]) == (400, 1310)
    assert cpu_jiffies(STAT, [7]) == (0, 0)  # a CPU this process may not use is not counted


@pytest.mark.parametrize(
    "extra,own_ticks,expected",
    [
        ({0: (0, 10), 1: (0, 10)}, 0, 0.0),  # quiet
        ({0: (10, 0), 1: (0, 10)}, 0, 1.0),  # one CPU busy with another process
        ({0: (10, 0), 1: (0, 10)}, 10, 0.0),  # ... with this process: not "elsewhere"
        ({0: (10, 0), 1: (5, 5)}, 0, 1.5),
    ],
)
def test_busy_elsewhere_subtracts_this_process(extra, own_ticks, expected):
    texts = iter([STAT, stat_after(extra)])
    hz = os.sysconf("SC_CLK_TCK")
    own = iter([0.0, own_ticks / hz])
    busy = busy_elsewhere(
        [0, 1], read=lambda: next(texts), sleep=lambda s: None, own_seconds=lambda: next(own)
    )
    assert busy == pytest.approx(expected)


def test_unreadable_proc_stat_counts_every_cpu_free():
    assert busy_elsewhere([0], read=lambda: None, sleep=lambda s: None) is None
    cpus = len(cpuload.allowed_cpus())
    assert free_cpus(busy=lambda c: None) == (cpus, cpus)


@pytest.mark.parametrize("others,free", [(0.0, 2), (0.4, 2), (0.5, 1), (1.0, 1), (2.0, 1)])
def test_a_cpu_busy_half_the_time_counts_as_busy(monkeypatch, others, free):
    monkeypatch.setattr(cpuload, "allowed_cpus", lambda: [0, 1])
    assert free_cpus(busy=lambda c: others) == (free, 2)


def test_a_command_takes_the_free_cpus_and_says_so(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "free_cpus", lambda: (1, 2))
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    torch.set_num_threads(2)
    said = []
    assert runtime.configure_process(None, log=said.append) == 1
    assert torch.get_num_threads() == 1
    assert said == [
        "Threads: 1 of 2 CPUs, as other processes keep the rest busy (--threads N sets the count)"
    ]


def test_given_threads_or_omp_num_threads_are_kept(monkeypatch):
    monkeypatch.setattr(runtime, "free_cpus", lambda: (1, 2))
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.configure_process(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.configure_process(None) is None and torch.get_num_threads() == 2


def test_the_competitor_spins_and_is_stopped():
    with competing_process() as process:
        assert process.poll() is None
        start = cpu_seconds(process.pid)
        time.sleep(0.5)
        assert cpu_seconds(process.pid) - start > 0.2  # CPU-bound, not sleeping
    assert process.poll() is not None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_kept_is_the_busy_median_over_the_quiet_median():
    runs = BusyRuns("x", (100.0, 300.0, 200.0), (50.0, 70.0, 60.0), (120.0, 100.0, 110.0))
    assert runs.kept(runs.busy_same_threads) == pytest.approx(0.3)
    assert runs.kept(runs.busy_free_threads) == pytest.approx(0.55)
