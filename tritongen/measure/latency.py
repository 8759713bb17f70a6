"""Latency of one callable: warm-up, then N timed runs; median is the number we compare."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

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

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> "Latency":
        arr = np.array(times_ms)
        return cls(len(arr), float(np.median(arr)), float(arr.mean()), float(np.percentile(arr, 90)), float(arr.min()))


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
    return Latency.of(times)


def interleaved(a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``a`` and ``b`` timed alternately (see :func:`interleaved_latency`)."""
    la, lb = interleaved_latency(lambda i: a(), lambda i: b(), runs, warmup)
    return la.median_ms, lb.median_ms


def interleaved_latency(a: Callable[[int], object], b: Callable[[int], object], runs: int,
                        warmup: int) -> tuple[Latency, Latency]:
    """Latency of ``a(i)`` and ``b(i)`` (i = run index: both get the same input) timed alternately
    (A, B, B, A, ...), so that load on a noisy machine hits both alike."""
    for i in range(warmup):
        a(i)
        b(i)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        pairs = [(a, ta), (b, tb)] if i % 2 == 0 else [(b, tb), (a, ta)]
        for fn, times in pairs:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1000)
    return Latency.of(ta), Latency.of(tb)
