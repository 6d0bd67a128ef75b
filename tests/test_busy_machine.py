"""A busy machine: free CPUs from /proc/stat, the thread count a command takes, and the
benchmark's competing process."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from cnnlab import cpuload, runtime, train
from cnnlab.bench.busy import BusyRuns, competing_process
from cnnlab.cli.common import runtime_for
from cnnlab.config import TrainConfig
from cnnlab.cpuload import LoadFollower, busy_elsewhere, cpu_jiffies, free_cpus
from cnnlab.resume import resume_run
from cnnlab.run import train_run
from cnnlab.runfiles import read_metrics
from cnnlab.runtime import resolve_runtime

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


# --- following the load while training --------------------------------------------------------


def cumulative_stats(seconds: list[tuple[int, int]]) -> list[str]:
    """/proc/stat texts for CPUs 0 and 1, one per second: before, then after each second in
    which (busy0, busy1) of its 100 ticks per CPU were busy (the rest idle)."""
    busy, idle, texts = [0, 0], [0, 0], []
    for second in [(0, 0), *seconds]:
        for cpu in (0, 1):
            busy[cpu] += second[cpu]
            idle[cpu] += 100 - second[cpu] if texts else 0
        texts.append("".join(f"cpu{c} {busy[c]} 0 0 {idle[c]} 0 0 0 0 0 0\n" for c in (0, 1)))
    return texts


def follower_over(seconds: list[tuple[int, int]], threads: int = 2, ceiling: int = 2):
    """A LoadFollower on CPUs 0 and 1 reading one second of `seconds` per poll."""
    texts, clock = iter(cumulative_stats(seconds)), iter(range(100))
    follower = LoadFollower(
        threads,
        ceiling,
        1.0,
        clock=lambda: float(next(clock)),
        read=lambda: next(texts),
        own_seconds=lambda: 0.0,
    )
    follower.cpus = [0, 1]
    return follower


def test_the_follower_takes_the_cpus_another_process_starts_and_leaves():
    follower = follower_over([(0, 0), (100, 0), (100, 0), (0, 0)])  # a competitor on CPU 0
    assert follower.poll() is None  # quiet: 2 threads stay
    assert follower.poll() == 1  # another process took a CPU
    assert follower.describe().startswith("threads 1 of 2 CPUs (other processes keep")
    assert follower.poll() is None  # still there: unchanged
    assert follower.poll() == 2  # gone
    assert follower.describe() == "threads 2 of 2 CPUs (free; --threads N fixes it)"
    assert follower.changes == 2


def test_a_half_busy_cpu_does_not_make_the_count_flip():
    half = [(50, 0)] * 4  # another process keeps half a CPU busy
    for threads in (1, 2):
        follower = follower_over(half, threads)
        assert [follower.poll() for _ in half] == [None] * 4 and follower.changes == 0


def test_the_follower_never_goes_above_pytorchs_own_count():
    follower = follower_over([(0, 0), (0, 0)], threads=1, ceiling=1)  # e.g. 1 core, 2 CPUs
    assert follower.poll() is None and follower.poll() is None
    follower = follower_over([(100, 0), (0, 0)], threads=1, ceiling=2)
    assert follower.poll() is None and follower.poll() == 2


def test_the_follower_reads_nothing_before_its_interval_and_survives_no_proc_stat():
    reads = []
    clock = iter([0.0, 0.3, 0.6, 1.2])
    follower = LoadFollower(
        2, 2, 1.0, clock=lambda: next(clock), read=lambda: reads.append(1) or None
    )
    assert follower.poll() is None and follower.poll() is None and len(reads) == 1
    assert follower.poll() is None and len(reads) == 2  # read, unreadable: no change


@pytest.mark.skipif(len(cpuload.allowed_cpus()) < 2, reason="needs 2 CPUs")
def test_the_follower_sees_a_real_competitor():
    cpus = len(cpuload.allowed_cpus())
    with competing_process():
        follower = LoadFollower(cpus, cpus, interval=0.5)
        time.sleep(0.7)  # this process idle, the competitor spinning
        assert follower.poll() == cpus - 1


@pytest.mark.skipif(len(cpuload.allowed_cpus()) < 2, reason="needs 2 CPUs")
def test_training_follows_the_load_records_it_and_a_resume_says_so(
    monkeypatch, fake_root, tmp_path, no_run_figures
):
    polls = []

    class Follower:  # another process arrives at the 3rd step
        cpus = [0, 1]

        def __init__(self, threads, ceiling):
            self.threads, self.ceiling, self.changes = threads, ceiling, 0

        def poll(self):
            polls.append(1)
            if len(polls) == 3:
                self.threads, self.changes = 1, self.changes + 1
                return 1
            return None

        def describe(self):
            return f"threads {self.threads} of 2"

    monkeypatch.setattr(train, "LoadFollower", Follower)
    torch.set_num_threads(2)
    config = TrainConfig(epochs=1, batch_size=100)
    said = []
    run = tmp_path / "run"
    following = resolve_runtime("cpu", "fp32", 2, follow_load=2)
    train_run(config, following, fake_root, run, log=said.append)
    assert torch.get_num_threads() == 1 and len(polls) == 6  # every step polls
    assert "Epoch 1, step 3: threads 1 of 2" in said
    (record,) = read_metrics(run)
    assert record["threads"] == 1 and record["thread_changes"] == 1
    assert json.loads((run / "config.json").read_text())["runtime"]["follow_load"] == 2
    polls.clear()
    said.clear()
    resume_run(run, resolve_runtime("cpu", "fp32", 2), fake_root, epochs=2, log=said.append)
    assert polls == []  # a given thread count is kept
    (note,) = [line for line in said if line.startswith("Note:")]
    assert "the thread count followed the load in epoch 1" in note
    assert "thread_changes" not in read_metrics(run)[1]


def test_only_training_follows_the_load_and_only_unless_told_the_count(monkeypatch):
    monkeypatch.setattr(runtime, "free_cpus", lambda: (2, 2))
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert runtime_for("cpu", "fp32", follow_load=True).follow_load == 2  # PyTorch's count
    assert runtime_for("cpu", "fp32").follow_load == 0  # bench, compare: measured as set
    assert runtime_for("cpu", "fp32", 2, follow_load=True).follow_load == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime_for("cpu", "fp32", follow_load=True).to_json()["follow_load"] == 0
