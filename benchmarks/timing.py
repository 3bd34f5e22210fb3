"""Timing helpers shared by the benchmarks (`run.py bench ...`).

Each benchmark measures the real path beside its bare baseline in one run and prints a table, then one
`RESULT name=value ...` line. Timings are medians of repeated trials, taken side by side in the same
process, so that the ratio means something on a shared, noisy machine. Benchmarks live here, beside
`run.py`, because some need both sides of the pipeline (an engine and a learner) in one process.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], None], trials: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
