"""Mean and spread of repeated measurements (over seeds or repeats): one definition for all.

>>> mean_std([97.0, 98.0, 99.0])   # e.g. test accuracy (%) over three seeds
(98.0, 1.0)
>>> mean_std([98.0])               # one value has no spread
(98.0, None)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1); the deviation is None for one value."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None
