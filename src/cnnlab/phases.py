"""Where a command's wall-clock seconds go: named phases, timed with `with phases("name"):`.

    >>> phases = Phases()
    >>> with phases("training"):
    ...     fit(...)
    >>> phases.line(total=12.5)
    '12.5 s in all: training 9.4 s, other 3.1 s'

`process_seconds()` is the time since this process started (the interpreter's own start-up
included, where /proc says when that was; elsewhere since the command line was imported, which
imports this module first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

_IMPORTED = time.perf_counter()


class Phases:
    """Seconds per phase, in the order the phases first ran; a phase run twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def line(self, total: float) -> str:
        """`total` split into the phases, the rest named `other`."""
        parts = [f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items()]
        other = total - sum(self.seconds.values())
        return f"{total:.1f} s in all: " + ", ".join(parts + [f"other {max(other, 0.0):.1f} s"])


def parse_line(line: str) -> dict[str, float]:
    """The phases of a `Phases.line` (`12.5 s in all: training 9.4 s, other 3.1 s`), with
    anything before it (`Time: `); `other` included."""
    parts = line.split(" in all: ", 1)[1].split(", ")
    return {name: float(value) for name, value, _ in (part.rsplit(" ", 2) for part in parts)}


def process_seconds() -> float:
    """Seconds since this process started: from the kernel's start time where /proc has it
    (Linux), else since this module was imported (`cnnlab.cli` imports it first)."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED
