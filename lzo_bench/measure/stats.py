"""Summary statistics of repeated timings: one median and interquartile range for every table.

``profile`` (per phase and method) and ``peers`` (per phase and library) both report a median with
its IQR; they used two copies of this with different quantile methods. The one method here is
``statistics.quantiles(method="inclusive")``: linear interpolation between the sorted samples with
the minimum and maximum as the 0th and 100th percentiles (numpy's default ``linear``), so the
quartiles always lie within the measured times, also for the few repeats a quick run takes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """``(median, Q3 - Q1)`` of ``values``; one value: ``(it, 0.0)``; none: ``(nan, nan)``."""
    if not values:
        return math.nan, math.nan
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]
