"""How many of this process's CPUs other processes leave free, measured over a short window.

PyTorch runs one thread per CPU. When another process keeps one of those CPUs busy, the scheduler
pauses one of PyTorch's threads now and then, and every parallel op waits at its barrier for it:
training on 2 CPUs beside one busy process ran at a quarter of its speed, while 1 thread kept
more than half (BENCHMARKS.md, "A busy machine"). So a command that is not told how many threads
to use takes the CPUs that are free when it starts.

Linux only (/proc/stat); elsewhere every CPU counts as free.

    >>> free_cpus()   # 2 on a quiet 2-CPU machine, 1 beside `python3 -c 'while True: pass'`

A process that starts later is followed by `LoadFollower`, which training polls every step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

WINDOW_SECONDS = 0.1
FOLLOW_SECONDS = 1.0  # between readings while following the load
FOLLOW_MARGIN = 0.1  # CPUs of load past the half-CPU boundary before the count moves
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


def others_busy(cpus: list[int], before: str, after: str, own_seconds: float) -> float | None:
    """How many of `cpus` other processes kept busy between two readings of /proc/stat, this
    process having used `own_seconds` of CPU time meanwhile (0.0 to len(cpus)); None when no
    time passed between them."""
    busy_before, total_before = cpu_jiffies(before, cpus)
    busy_after, total_after = cpu_jiffies(after, cpus)
    elapsed = total_after - total_before  # ticks of all the CPUs together
    if elapsed <= 0:
        return None
    ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = max(0.0, busy_after - busy_before - own_seconds * ticks_per_second)
    return len(cpus) * others / elapsed


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
    return others_busy(cpus, before_text, after_text, own_after - own_before)


def free_count(cpus: int, others: float) -> int:
    """The CPUs left free when other processes keep `others` busy: at least 1; a CPU busy half
    the time or more counts as busy."""
    return max(1, cpus - int(others + 0.5))


def free_cpus(busy: Callable[[list[int]], float | None] = busy_elsewhere) -> tuple[int, int]:
    """(free, all): this process's CPUs, and those no other process kept busy (at least 1; a
    CPU busy half the time or more counts as busy)."""
    cpus = allowed_cpus()
    others = busy(cpus)
    if others is None:
        return len(cpus), len(cpus)
    return free_count(len(cpus), others), len(cpus)


class LoadFollower:
    """Follows other processes' load while a long loop runs, for a thread count that was not
    given: `poll()`, cheap enough for every step, reads /proc/stat at most every `interval`
    seconds and returns the thread count the CPUs left free allow (1 to `ceiling`) over the
    time since its last reading (nothing sleeps), or None while the count stays as it is.

    A process that starts beside training would otherwise keep it at 2 threads on 2 CPUs,
    where every parallel op waits for the thread the scheduler paused (`free_cpus`). The count
    moves only when the load is a margin past the half-CPU boundary, so a competitor that keeps
    about half a CPU busy does not make it change every second.
    """

    def __init__(
        self,
        threads: int,
        ceiling: int,
        interval: float = FOLLOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], str | None] = read_proc_stat,
        own_seconds: Callable[[], float] = time.process_time,
    ):
        self.cpus = allowed_cpus()
        self.threads = threads  # the count in use now
        self.ceiling = max(ceiling, 1)  # PyTorch's count on a quiet machine
        self.changes = 0  # since the caller last reset it
        self.interval, self.clock, self.read, self.own_seconds = interval, clock, read, own_seconds
        self.last = (clock(), read(), own_seconds())

    def poll(self) -> int | None:
        now = self.clock()
        if now - self.last[0] < self.interval:
            return None
        text, own = self.read(), self.own_seconds()
        (_, before, own_before), self.last = self.last, (now, text, own)
        if text is None or before is None:
            return None
        others = others_busy(self.cpus, before, text, own - own_before)
        if others is None:
            return None
        fewer = min(free_count(len(self.cpus), others - FOLLOW_MARGIN), self.ceiling)
        more = min(free_count(len(self.cpus), others + FOLLOW_MARGIN), self.ceiling)
        if fewer < self.threads:
            self.threads = fewer
        elif more > self.threads:
            self.threads = more
        else:
            return None
        self.changes += 1
        return self.threads

    def describe(self) -> str:
        """The thread count now, in words, for the log."""
        why = "other processes keep the rest busy" if self.threads < self.ceiling else "free"
        return f"threads {self.threads} of {len(self.cpus)} CPUs ({why}; --threads N fixes it)"
