"""How many of this process's CPUs other processes leave free, measured over a short window.

PyTorch runs one thread per CPU. When another process keeps one of those CPUs busy, the scheduler
pauses one of PyTorch's threads now and then, and every parallel op waits at its barrier for it:
training on 2 CPUs beside one busy process ran at a quarter of its speed, while 1 thread kept
more than half (BENCHMARKS.md, "A busy machine"). So a command that is not told how many threads
to use takes the CPUs that are free when it starts.

Linux only (/proc/stat); elsewhere every CPU counts as free.

    >>> free_cpus()   # 2 on a quiet 2-CPU machine, 1 beside `python3 -c 'while True: pass'`
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

WINDOW_SECONDS = 0.1
PROC_STAT = "/proc/stat"


def cpu_jiffies(stat_text: str, cpus: Iterable[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of `cpus` since boot, from /proc/stat's per-CPU lines; idle and
    I/O wait are not busy, everything else (user, nice, system, interrupts, steal) is."""
    wanted = {f"cpu{n}" for n in cpus}
    busy = total = 0
    for line in stat_text.splitlines():
        fields = line.split()
        if not fields or fields[0] not in wanted:
            continue
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def read_proc_stat() -> str | None:
    try:
        with open(PROC_STAT) as f:
            return f.read()
    except OSError:
        return None


def allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_elsewhere(
    cpus: list[int],
    window: float = WINDOW_SECONDS,
    read: Callable[[], str | None] = read_proc_stat,
    sleep: Callable[[float], None] = time.sleep,
    own_seconds: Callable[[], float] = time.process_time,
) -> float | None:
    """How many of `cpus` other processes kept busy during `window` seconds (0.0 to len(cpus));
    None where /proc/stat cannot be read."""
    before_text, own_before = read(), own_seconds()
    if before_text is None:
        return None
    sleep(window)
    after_text, own_after = read(), own_seconds()
    if after_text is None:
        return None
    busy_before, total_before = cpu_jiffies(before_text, cpus)
    busy_after, total_after = cpu_jiffies(after_text, cpus)
    elapsed = total_after - total_before  # ticks of all the CPUs together
    if elapsed <= 0:
        return None
    ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = (own_after - own_before) * ticks_per_second
    others = max(0.0, busy_after - busy_before - own)
    return len(cpus) * others / elapsed


def free_cpus(busy: Callable[[list[int]], float | None] = busy_elsewhere) -> tuple[int, int]:
    """(free, all): this process's CPUs, and those no other process kept busy (at least 1; a
    CPU busy half the time or more counts as busy)."""
    cpus = allowed_cpus()
    others = busy(cpus)
    if others is None:
        return len(cpus), len(cpus)
    return max(1, len(cpus) - int(others + 0.5)), len(cpus)
