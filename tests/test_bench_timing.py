"""The benchmarks' timing helpers: runs taking turns after a warm-up, and a rate from a clock."""

from __future__ import annotations

import itertools

import pytest

from cnnlab.bench.timing import images_per_second, taking_turns


def test_runs_take_turns_after_one_untimed_call_each_and_give_medians():
    calls = []
    results = {"a": iter([99.0, 1.0, 5.0, 3.0]), "b": iter([0.0, 10.0, 30.0, 20.0])}

    def run(name):
        def call():
            calls.append(name)
            return next(results[name])

        return call

    medians = taking_turns({"a": run("a"), "b": run("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-up, then turns
    assert medians == {"a": 3.0, "b": 20.0}  # the warm-up's 99 and 0 are not counted


def test_images_per_second_counts_every_step_against_the_clock():
    ticks = itertools.count(0.0, 0.5)  # each clock read half a second later
    steps = []
    rate = images_per_second(lambda: steps.append(1), 10, 64, lambda: next(ticks))
    assert len(steps) == 10 and rate == pytest.approx(64 * 10 / 0.5)
