"""``--collect-metrics``: Triton's Prometheus endpoint, polled while a level is measured.

perf_analyzer reads the GPU gauges (``nv_gpu_utilization``, ``nv_gpu_power_usage``,
``nv_gpu_memory_used_bytes``, ``nv_gpu_memory_total_bytes``) every ``--metrics-interval`` ms and
reports per GPU the average utilisation and power, the largest memory use and the total memory;
this does the same, and adds the CPU gauges Triton reports where there is no GPU
(``nv_cpu_utilization``, ``nv_cpu_memory_used_bytes``, ``nv_cpu_memory_total_bytes``).
"""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ..errors import PerfError

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

GPU_GAUGES = ("nv_gpu_utilization", "nv_gpu_power_usage", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes")
CPU_GAUGES = ("nv_cpu_utilization", "nv_cpu_memory_used_bytes", "nv_cpu_memory_total_bytes")


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Gauges by name, then by their ``gpu_uuid`` label ("" without one)."""
    values: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        gpu = dict(_LABEL.findall(labels or "")).get("gpu_uuid", "")
        values.setdefault(name, {})[gpu] = number
    return values


def read_metrics(url: str, timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return parse_prometheus(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as exc:
        raise PerfError(f"cannot read Triton's metrics at {url}: {getattr(exc, 'reason', exc)}") from None


@dataclass
class LevelMetrics:
    """What the metrics endpoint reported while one level was measured (per GPU uuid)."""

    samples: int = 0
    gpu_utilization: dict[str, float] = field(default_factory=dict)  # average, 0..1
    gpu_power_usage: dict[str, float] = field(default_factory=dict)  # average, W
    gpu_memory_used_max: dict[str, float] = field(default_factory=dict)  # bytes
    gpu_memory_total: dict[str, float] = field(default_factory=dict)  # bytes
    cpu_utilization: float | None = None  # average, 0..1
    cpu_memory_used_max: float | None = None  # bytes
    cpu_memory_total: float | None = None  # bytes

    @classmethod
    def from_samples(cls, samples: list[dict[str, dict[str, float]]]) -> "LevelMetrics":
        def mean(name: str) -> dict[str, float]:
            seen: dict[str, list[float]] = {}
            for sample in samples:
                for gpu, value in sample.get(name, {}).items():
                    seen.setdefault(gpu, []).append(value)
            return {gpu: sum(v) / len(v) for gpu, v in seen.items()}

        def largest(name: str) -> dict[str, float]:
            seen: dict[str, float] = {}
            for sample in samples:
                for gpu, value in sample.get(name, {}).items():
                    seen[gpu] = max(value, seen.get(gpu, value))
            return seen

        return cls(
            samples=len(samples),
            gpu_utilization=mean("nv_gpu_utilization"), gpu_power_usage=mean("nv_gpu_power_usage"),
            gpu_memory_used_max=largest("nv_gpu_memory_used_bytes"), gpu_memory_total=largest("nv_gpu_memory_total_bytes"),
            cpu_utilization=mean("nv_cpu_utilization").get(""), cpu_memory_used_max=largest("nv_cpu_memory_used_bytes").get(""),
            cpu_memory_total=largest("nv_cpu_memory_total_bytes").get(""),
        )

    def csv_values(self) -> list[str]:
        """perf_analyzer's verbose CSV cells: ``uuid:value;`` per GPU (utilisation in %, memory in bytes)."""
        def cells(values: dict[str, float], scale: float = 1.0) -> str:
            return "".join(f"{gpu}:{value * scale:g};" for gpu, value in values.items())

        return [cells(self.gpu_utilization, 100.0), cells(self.gpu_power_usage), cells(self.gpu_memory_used_max),
                cells(self.gpu_memory_total)]

    def text_lines(self) -> list[str]:
        lines = []
        for title, values, unit, scale in (("Avg GPU Utilization", self.gpu_utilization, "%", 100.0),
                                           ("Avg GPU Power Usage", self.gpu_power_usage, " watts", 1.0),
                                           ("Max GPU Memory Usage", self.gpu_memory_used_max, " bytes", 1.0),
                                           ("Total GPU Memory", self.gpu_memory_total, " bytes", 1.0)):
            if values:
                lines.append(f"    {title}:")
                lines += [f"      {gpu} : {value * scale:g}{unit}" for gpu, value in values.items()]
        if self.cpu_utilization is not None:
            lines.append(f"    Avg CPU Utilization: {self.cpu_utilization * 100:.1f}%")
        if self.cpu_memory_used_max is not None:
            total = f" of {self.cpu_memory_total:.0f}" if self.cpu_memory_total is not None else ""
            lines.append(f"    Max CPU Memory Usage: {self.cpu_memory_used_max:.0f}{total} bytes")
        return lines or [f"    (the metrics endpoint reported no GPU or CPU gauges in {self.samples} samples)"]


CSV_COLUMNS = ["Avg GPU Utilization", "Avg GPU Power Usage", "Max GPU Memory Usage", "Total GPU Memory"]


class MetricsCollector:
    """Polls ``url`` every ``interval_ms`` on a thread between ``start()`` and ``stop()``."""

    def __init__(self, url: str, interval_ms: int):
        if interval_ms <= 0:
            raise PerfError("--metrics-interval must be > 0 ms")
        self.url, self.interval_s = url, interval_ms / 1000
        self.samples: list[dict[str, dict[str, float]]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "MetricsCollector":
        self.samples, self.error = [read_metrics(self.url)], None  # fails fast on a wrong URL
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tritongen-metrics", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(read_metrics(self.url))
            except PerfError as exc:
                self.error = str(exc)

    def stop(self) -> LevelMetrics:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return LevelMetrics.from_samples(self.samples)
