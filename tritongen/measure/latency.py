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


def interleaved(a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``a`` and ``b`` timed alternately (A, B, B, A, ...), so that load on a noisy
    machine hits both alike."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        first, second, t_first, t_second = (a, b, ta, tb) if i % 2 == 0 else (b, a, tb, ta)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        t_first.append((t1 - t0) * 1000)
        t_second.append((t2 - t1) * 1000)
    return float(np.median(ta)), float(np.median(tb))
