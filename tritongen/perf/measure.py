"""perf_analyzer's measurement method: windows, stability, server-side statistics.

Per load level: optional warm-up requests, then measurement windows (``time_windows``: a
fixed duration; ``count_windows``: until N requests have finished) until the last three
windows agree within the stability percentage on throughput and on the stabilising latency
(average, or ``--percentile``), or ``--max-trials`` windows have passed. The result merges
those three windows. A request belongs to the window in which it finished. Server-side
numbers are deltas of Triton's cumulative statistics across the same windows, for the model
and, for an ensemble, every composing model.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import PerfError
from .inputs import ModelInfo
from .load import Collected, LoadManager
from .shm import DEFAULT_OUTPUT_SIZE
from .worker import RECORD_FIELDS

STABILITY_WINDOW = 3
STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
PERCENTILES = (50, 90, 95, 99)
COUNT_POLL_S = 0.02
KEEP_UP_FRACTION = 0.9  # below 90 % of the asked load (or a worker using >= 90 % of a core): the client is the limit

_COL = {name: i for i, name in enumerate(RECORD_FIELDS)}


@dataclass
class PerfSettings:
    mode: str = "concurrency"  # "concurrency" | "request_rate"
    levels: list[float] = field(default_factory=lambda: [1])
    batch_size: int = 1
    distribution: str = "constant"
    measurement_mode: str = "time_windows"
    measurement_interval_ms: int = 5000
    measurement_request_count: int = 50
    stability_percentage: float = 10.0
    max_trials: int = 10
    percentile: int | None = None
    warmup_request_count: int = 0
    latency_threshold_ms: float | None = None
    timeout_s: float = 30.0
    binary_search: bool = False  # search levels[0]..levels[-1] (step levels[1] - levels[0]) for the highest within the threshold
    request_intervals_us: list[float] | None = None  # distribution "custom": gaps between sends (--request-intervals)
    metrics_url: str | None = None  # --collect-metrics: Triton's Prometheus endpoint, polled during each level
    metrics_interval_ms: int = 1000
    sync: bool = False  # perf_analyzer's --sync: blocking calls, a thread per request in flight; else --async
    shared_memory: str = "none"  # a key of perf.shm.SHARED_MEMORY (perf_analyzer's --shared-memory)
    output_shared_memory_size: int = DEFAULT_OUTPUT_SIZE  # bytes per batch item of a variable-size output

    def validate(self) -> None:
        from .shm import SHARED_MEMORY

        SHARED_MEMORY.lookup(self.shared_memory, PerfError).check()
        if self.output_shared_memory_size <= 0:
            raise PerfError("--output-shared-memory-size must be > 0 bytes")
        if self.mode not in ("concurrency", "request_rate"):
            raise PerfError(f"unknown load mode {self.mode!r}")
        if not self.levels or any(v <= 0 for v in self.levels):
            raise PerfError("load levels must be positive")
        if self.mode == "concurrency" and any(v != int(v) for v in self.levels):
            raise PerfError("concurrency levels must be whole numbers")
        if self.distribution not in ("constant", "poisson", "custom"):
            raise PerfError(f"--request-distribution {self.distribution!r}: choose constant or poisson")
        if (self.distribution == "custom") != bool(self.request_intervals_us):
            raise PerfError("--request-intervals FILE gives the custom schedule (one gap in µs per line)")
        if self.request_intervals_us and (self.mode != "request_rate" or any(g <= 0 for g in self.request_intervals_us)):
            raise PerfError("--request-intervals: every gap must be > 0 µs, and the load is open loop (no --concurrency-range)")
        if self.measurement_mode not in ("time_windows", "count_windows"):
            raise PerfError(f"--measurement-mode {self.measurement_mode!r}: choose time_windows or count_windows")
        if self.measurement_interval_ms <= 0 or self.measurement_request_count <= 0 or self.max_trials < STABILITY_WINDOW:
            raise PerfError(f"--measurement-interval and --measurement-request-count must be > 0, --max-trials >= {STABILITY_WINDOW}")
        if self.percentile is not None and not 1 <= self.percentile <= 99:
            raise PerfError("--percentile must be within 1..99")
        if self.stability_percentage <= 0:
            raise PerfError("--stability-percentage must be > 0")
        if self.binary_search and (self.latency_threshold_ms is None or len(self.levels) < 2):
            raise PerfError("--binary-search needs --latency-threshold and a range start:end[:step] to search")


@dataclass
class ServerStats:
    """One model's statistics (or their delta over a window)."""

    inference_count: int = 0
    execution_count: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_KINDS, 0))
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_KINDS, 0))

    @classmethod
    def from_proto(cls, stats) -> "ServerStats":
        s = stats.inference_stats
        return cls(int(stats.inference_count), int(stats.execution_count),
                   {k: int(getattr(s, k).count) for k in STAT_KINDS}, {k: int(getattr(s, k).ns) for k in STAT_KINDS})

    def _combine(self, other: "ServerStats", sign: int) -> "ServerStats":
        return ServerStats(self.inference_count + sign * other.inference_count,
                           self.execution_count + sign * other.execution_count,
                           {k: self.counts[k] + sign * other.counts[k] for k in STAT_KINDS},
                           {k: self.ns[k] + sign * other.ns[k] for k in STAT_KINDS})

    def __sub__(self, other: "ServerStats") -> "ServerStats":
        return self._combine(other, -1)

    def __add__(self, other: "ServerStats") -> "ServerStats":
        return self._combine(other, 1)

    def avg_us(self, kind: str) -> float:
        return self.ns[kind] / self.counts[kind] / 1000 if self.counts[kind] else 0.0

    @property
    def compute_us(self) -> float:
        n = self.counts["compute_input"]
        total = self.ns["compute_input"] + self.ns["compute_infer"] + self.ns["compute_output"]
        return total / n / 1000 if n else 0.0


def server_snapshot(client: Any, models: list[str], timeout_s: float) -> dict[str, ServerStats]:
    """Cumulative statistics of ``models`` (all versions summed), one RPC."""
    from tritonclient.utils import InferenceServerException

    try:
        response = client.get_inference_statistics(model_name="", client_timeout=timeout_s)
    except InferenceServerException as exc:
        raise PerfError(f"cannot read server statistics: {exc.message()}") from None
    snapshot = {name: ServerStats() for name in models}
    for stats in response.model_stats:
        if stats.name in snapshot:
            snapshot[stats.name] = snapshot[stats.name] + ServerStats.from_proto(stats)
    return snapshot


@dataclass
class Window:
    start_ns: int
    end_ns: int
    records: np.ndarray
    server: dict[str, ServerStats]
    cpu_s: list[float]
    sent: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def latencies_ns(self) -> np.ndarray:
        return self.records[:, _COL["end_ns"]] - self.records[:, _COL["start_ns"]]


def _percentile_ns(sorted_ns: np.ndarray, p: int) -> int:
    """perf_analyzer's nearest-rank percentile."""
    if not len(sorted_ns):
        return 0
    index = max(int(np.ceil(len(sorted_ns) * p / 100.0)) - 1, 0)
    return int(sorted_ns[min(index, len(sorted_ns) - 1)])


@dataclass
class PerfStatus:
    """One load level's result: the merged stable windows (client side in ns)."""

    mode: str
    value: float
    batch_size: int
    stable: bool
    windows: list[Window]  # the merged ones
    trials: int
    model: str
    composing: list[str]
    percentile: int | None = None
    warnings: list[str] = field(default_factory=list)
    metrics: Any = None  # perf.metrics.LevelMetrics with --collect-metrics
    protocol: str = "grpc"  # a key of perf.engines.ENGINES: what carried the load

    def __post_init__(self) -> None:
        records = np.concatenate([w.records for w in self.windows]) if self.windows else np.zeros((0, len(RECORD_FIELDS)), np.int64)
        self.records = records
        self.duration_s = sum(w.seconds for w in self.windows)
        latencies = np.sort(records[:, _COL["end_ns"]] - records[:, _COL["start_ns"]])
        self.request_count = len(records)
        self.delayed_request_count = int(records[:, _COL["delayed"]].sum()) if len(records) else 0
        self.infer_per_sec = self.request_count * self.batch_size / self.duration_s if self.duration_s else 0.0
        self.avg_latency_ns = int(latencies.mean()) if len(latencies) else 0
        self.std_latency_us = int(latencies.std() / 1000) if len(latencies) else 0
        wanted = sorted(set(PERCENTILES) | ({self.percentile} if self.percentile else set()))
        self.percentile_latency_ns = {p: _percentile_ns(latencies, p) for p in wanted}
        self.avg_send_ns = int(records[:, _COL["send_ns"]].mean()) if len(records) else 0
        self.avg_recv_ns = int(records[:, _COL["recv_ns"]].mean()) if len(records) else 0
        self.avg_wait_ns = int(records[:, _COL["wait_ns"]].mean()) if len(records) else 0
        self.server: dict[str, ServerStats] = {}
        for w in self.windows:
            for name, stats in w.server.items():
                self.server[name] = self.server.get(name, ServerStats()) + stats
        cpu = np.array([w.cpu_s for w in self.windows]).sum(axis=0) if self.windows else np.zeros(1)
        self.client_cpu_pct = [100.0 * c / self.duration_s for c in cpu] if self.duration_s else [0.0]
        self.sent = sum(w.sent for w in self.windows)
        # Little's law: requests the client actually kept outstanding, on average
        self.achieved_concurrency = float(latencies.sum() / 1e9 / self.duration_s) if self.duration_s else 0.0

    @property
    def stabilizing_latency_ns(self) -> int:
        return self.percentile_latency_ns[self.percentile] if self.percentile else self.avg_latency_ns

    @property
    def model_stats(self) -> ServerStats:
        return self.server.get(self.model, ServerStats())

    def breakdown_us(self) -> dict[str, float]:
        """Queue and compute input/infer/output per request, µs: the model's own, or for an
        ensemble (which computes nothing itself) the sum over its composing models."""
        models = [self.server[m] for m in self.composing if m in self.server] if self.composing else [self.model_stats]
        return {kind: sum(m.avg_us(kind) for m in models)
                for kind in ("queue", "compute_input", "compute_infer", "compute_output")}


def _stability_metrics(window: Window, batch_size: int, percentile: int | None) -> tuple[float, float]:
    latencies = np.sort(window.latencies_ns)
    throughput = len(latencies) * batch_size / window.seconds if window.seconds else 0.0
    latency = _percentile_ns(latencies, percentile) if percentile else (float(latencies.mean()) if len(latencies) else 0.0)
    return throughput, latency


def is_stable(metrics: list[tuple[float, float]], percentage: float) -> bool:
    """The last three windows: max/min of throughput and of latency <= 1 + percentage/100."""
    if len(metrics) < STABILITY_WINDOW:
        return False
    last = metrics[-STABILITY_WINDOW:]
    throughputs, latencies = [m[0] for m in last], [m[1] for m in last]
    if min(throughputs) <= 0 or min(latencies) <= 0:
        return False
    limit = 1 + percentage / 100.0
    return max(throughputs) / min(throughputs) <= limit and max(latencies) / min(latencies) <= limit


class Profiler:
    def __init__(self, settings: PerfSettings, info: ModelInfo, manager: LoadManager, stats_client: Any,
                 on_window: Callable[[dict[str, Any]], None] = lambda event: None, protocol: str = "grpc"):
        settings.validate()
        self.settings, self.info, self.manager, self.client = settings, info, manager, stats_client
        self.protocol = protocol
        self.models = [info.name, *info.composing]
        self.on_window = on_window
        self.timeline: list[dict[str, Any]] = []  # every window of every level, for the profile export

    def sweep(self) -> list[PerfStatus]:
        if self.settings.binary_search:
            return self.binary_search()
        results = []
        for value in self.settings.levels:
            status = self.profile_level(value)
            results.append(status)
            if not status.stable:
                break
            threshold = self.settings.latency_threshold_ms
            if threshold is not None and status.stabilizing_latency_ns / 1e6 >= threshold:
                status.warnings.append(f"Measured latency went over the set limit of {threshold:g} msec.")
                break
        return results

    def binary_search(self) -> list[PerfStatus]:
        """perf_analyzer's ``--binary-search``: the highest level of the range (on its step grid)
        whose stabilising latency stays within ``--latency-threshold``, by halving the range; every
        level measured on the way is a result. Ends early when a level does not stabilise."""
        s = self.settings
        threshold, levels = float(s.latency_threshold_ms), s.levels
        step = levels[1] - levels[0]
        results: list[PerfStatus] = []

        def within(value: float) -> bool | None:
            status = self.profile_level(value)
            results.append(status)
            over = status.stabilizing_latency_ns / 1e6 > threshold  # a level over the limit stops early, unstable
            return None if not status.stable and not over else not over

        low, high = levels[0], levels[-1]
        verdict = within(low)
        if verdict is False:
            results[-1].warnings.append(f"Binary search: even {low:g} is over the {threshold:g} msec limit.")
        if not verdict:
            return results
        verdict = within(high)
        while verdict is False and high - low > step:
            middle = low + (high - low) // step // 2 * step
            if middle == low:
                break
            verdict = within(middle)
            if verdict is None:
                return results
            low, high = (middle, high) if verdict else (low, middle)
            verdict = False
        best = high if verdict else low
        best_status = next(r for r in results if r.value == best)
        best_status.warnings.append(f"Binary search: {best:g} is the highest level within {threshold:g} msec.")
        return results

    def profile_level(self, value: float) -> PerfStatus:
        s = self.settings
        intervals = [int(g * 1000) for g in s.request_intervals_us] if s.request_intervals_us else None
        collector = None
        if s.metrics_url:
            from .metrics import MetricsCollector

            collector = MetricsCollector(s.metrics_url, s.metrics_interval_ms).start()
        try:
            status = self._profile_level(value, intervals)
        finally:
            metrics = collector.stop() if collector is not None else None
        status.metrics = metrics
        if collector is not None and collector.error:
            status.warnings.append(f"--collect-metrics: {collector.error}")
        return status

    def _profile_level(self, value: float, intervals: list[int] | None) -> PerfStatus:
        s = self.settings
        self.manager.set_load(s.mode, value, s.distribution, intervals)
        if s.warmup_request_count:
            self._warmup(s.warmup_request_count)
        start = time.monotonic_ns()
        self._take(self.manager.collect(start))  # requests finished before the first window do not count
        before = server_snapshot(self.client, self.models, s.timeout_s)
        windows: deque[Window] = deque(maxlen=STABILITY_WINDOW)
        metrics: list[tuple[float, float]] = []
        trial, stable = 0, False
        all_windows = []
        while trial < s.max_trials:
            window, before = self._window(start, before)
            start = window.end_ns
            windows.append(window)
            all_windows.append(window)
            metrics.append(_stability_metrics(window, s.batch_size, s.percentile))
            trial += 1
            stable = is_stable(metrics, s.stability_percentage)
            self.on_window({"mode": s.mode, "value": value, "trial": trial, "max_trials": s.max_trials,
                            "throughput": metrics[-1][0], "latency_us": metrics[-1][1] / 1000, "stable": stable,
                            "cpu_pct": max(window.cpu_s) / window.seconds * 100 if window.seconds else 0.0})
            if stable:
                break
            threshold = s.latency_threshold_ms
            if threshold is not None and len(metrics) >= STABILITY_WINDOW and all(
                m[1] / 1e6 >= threshold for m in metrics[-STABILITY_WINDOW:]):
                break  # perf_analyzer stops a level that is over the latency limit
        self.timeline.append({"mode": s.mode, "value": value, "windows": all_windows})
        status = PerfStatus(s.mode, value, s.batch_size, stable, list(windows), trial, self.info.name,
                            self.info.composing, s.percentile, protocol=self.protocol)
        self._keep_up_warnings(status)
        if not stable:
            unit = "--measurement-interval" if s.measurement_mode == "time_windows" else "--measurement-request-count"
            label = "concurrency" if s.mode == "concurrency" else "request rate"
            status.warnings.append(f"Failed to obtain stable measurement within {s.max_trials} measurement windows for "
                                   f"{label} {value:g}. Please try to increase the {unit}.")
        return status

    def _take(self, collected: Collected) -> Collected:
        if collected.error_count:
            raise PerfError(f"{collected.error_count} request(s) to {self.info.name!r} failed: {collected.errors[0]}")
        return collected

    def _warmup(self, count: int) -> None:
        done, last_progress = 0, time.monotonic()
        while done < count:
            time.sleep(COUNT_POLL_S)
            got = self._take(self.manager.collect(time.monotonic_ns()))
            done += len(got)
            if len(got):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.settings.timeout_s:
                raise PerfError(f"warm-up: no answer from {self.info.name!r} within {self.settings.timeout_s:g}s")

    def _window(self, start_ns: int, before: dict[str, ServerStats]) -> tuple[Window, dict[str, ServerStats]]:
        s = self.settings
        parts: list[Collected] = []
        last_progress = time.monotonic()
        if s.measurement_mode == "time_windows":
            end_ns = start_ns + s.measurement_interval_ms * 1_000_000
            while (now := time.monotonic_ns()) < end_ns:
                time.sleep(min((end_ns - now) / 1e9, 0.25))
                if now + 250_000_000 < end_ns:  # poll so errors and hangs surface within the window
                    parts.append(self._take(self.manager.collect(min(time.monotonic_ns(), end_ns))))
                    last_progress = self._check_progress(parts[-1], last_progress)
            parts.append(self._take(self.manager.collect(end_ns)))
        else:
            count = 0
            while count < s.measurement_request_count:
                time.sleep(COUNT_POLL_S)
                parts.append(self._take(self.manager.collect(time.monotonic_ns())))
                count += len(parts[-1])
                last_progress = self._check_progress(parts[-1], last_progress)
            end_ns = int(max(p.records[:, _COL["end_ns"]].max() for p in parts if len(p)))
        after = server_snapshot(self.client, self.models, s.timeout_s)
        records = np.concatenate([p.records for p in parts]) if parts else np.zeros((0, len(RECORD_FIELDS)), np.int64)
        cpu = np.sum([p.cpu_s for p in parts], axis=0).tolist() if parts else [0.0] * self.manager.workers
        window = Window(start_ns, end_ns, records, {m: after[m] - before[m] for m in self.models}, cpu,
                        sum(p.sent for p in parts))
        return window, after

    def _check_progress(self, collected: Collected, last_progress: float) -> float:
        if len(collected):
            return time.monotonic()
        if time.monotonic() - last_progress > self.settings.timeout_s + 1:
            raise PerfError(f"no answer from {self.info.name!r} for {self.settings.timeout_s:g}s "
                            f"({collected.outstanding} request(s) outstanding)")
        return last_progress

    def _keep_up_warnings(self, status: PerfStatus) -> None:
        busy = max(status.client_cpu_pct) if status.client_cpu_pct else 0.0
        reasons = []
        if busy >= KEEP_UP_FRACTION * 100:
            reasons.append(f"a load worker used {busy:.0f}% of a CPU core (use --workers)")
        if status.mode == "concurrency" and status.achieved_concurrency < KEEP_UP_FRACTION * status.value:
            reasons.append(f"only {status.achieved_concurrency:.2f} of {status.value:g} requests were outstanding on average")
        if status.mode == "request_rate":
            sent_rate = status.sent / status.duration_s if status.duration_s else 0.0
            if sent_rate < KEEP_UP_FRACTION * status.value:
                reasons.append(f"sent {sent_rate:.1f} of {status.value:g} requests/s")
            if status.delayed_request_count > (1 - KEEP_UP_FRACTION) * max(status.request_count, 1):
                reasons.append(f"{status.delayed_request_count} of {status.request_count} requests were sent late")
        if reasons:
            status.warnings.append("[WARNING] tritongen perf is not able to keep up with the desired load. The results "
                                   "may not be accurate. (" + "; ".join(reasons) + ")")
