"""What the benchmarks share: one way to time a call.

The benches run as scripts (``python bench/NAME.py``), so Python puts ``bench/`` first on the
path and they import this module as ``timing``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Milliseconds per call of ``step``: the median of ``repeats`` timed calls after ``warmup`` untimed ones.

    The median, not the mean: on shared machines a few calls land on a busy core, and one of them
    would move a mean more than the change under test.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
