"""Timing helpers shared by the benchmark scripts; they measure, they do not report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(call: Callable[[], object], repeats: int, warmups: int = 3) -> float:
    """The median wall time of `repeats` calls of `call`, in milliseconds, after `warmups`
    untimed ones (first-call costs: compiling, allocating, filling caches)."""
    for _ in range(warmups):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)
