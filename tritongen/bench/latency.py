"""Latency of one callable: warm-up, then N timed runs; median is the number we compare."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Latency:
    runs: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms (median of {self.runs}, p90 {self.p90_ms:.2f})"


def measure(fn: Callable[[], object], runs: int = 20, warmup: int = 3, budget_s: float | None = None) -> Latency:
    """Time ``fn``; with ``budget_s`` stop early once the budget is spent (at least 3 runs)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if budget_s is not None and i >= 2 and time.perf_counter() - start > budget_s:
            break
    arr = np.array(times)
    return Latency(len(arr), float(np.median(arr)), float(arr.mean()), float(np.percentile(arr, 90)), float(arr.min()))
