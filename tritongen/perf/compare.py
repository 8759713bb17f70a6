"""``tritongen perf --compare-perf-analyzer``: the real perf_analyzer on the same model, server and
flags, interleaved level by level with ``tritongen perf`` (machines are noisy: side by side or not
at all), both throughputs and p99 latencies printed with their ratio. perf_analyzer gets the same
call mode (``--sync``/``--async``; its own default would be sync) and the same shared memory."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import PerfError
from . import run_perf
from .measure import PerfSettings
from .perf_analyzer import run_perf_analyzer


@dataclass(frozen=True)
class LevelComparison:
    concurrency: int
    tritongen: float  # infer/s
    tritongen_p99_us: float
    perf_analyzer: float | None  # None: perf_analyzer found no stable measurement (``problem`` says why)
    perf_analyzer_p99_us: float | None
    problem: str | None = None
    perf_analyzer_command: tuple[str, ...] = ()  # how perf_analyzer ran at this level

    @property
    def ratio(self) -> float | None:
        """tritongen perf's throughput over perf_analyzer's."""
        return self.tritongen / self.perf_analyzer if self.perf_analyzer else None


def compare_with_perf_analyzer(model: str, url: str, settings: PerfSettings, *, protocol: str = "http",
                               input_data: str = "random", images: str | Path | None = None,
                               version: str = "", headers: dict[str, str] | None = None) -> list[LevelComparison]:
    """For each concurrency level: ``tritongen perf``, then perf_analyzer with the same flags."""
    if settings.mode != "concurrency":
        raise PerfError("--compare-perf-analyzer compares concurrency levels (--concurrency-range)")
    extra = [*(["-x", version] if version else []), *(a for k, v in (headers or {}).items() for a in ("-H", f"{k}:{v}"))]
    rows = []
    for level in settings.levels:
        ours = run_perf(model, url, dataclasses.replace(settings, levels=[level]), input_data=input_data, images=images,
                        protocol=protocol, version=version, headers=headers).results[0]
        theirs = run_perf_analyzer(
            model, url, [int(level)], images=images, input_data=None if images is not None else input_data,
            measurement_interval_ms=settings.measurement_interval_ms, stability_percentage=settings.stability_percentage,
            max_trials=settings.max_trials, batch_size=settings.batch_size, protocol=protocol, extra_args=extra,
            sync=settings.sync, shared_memory=settings.shared_memory,
            output_shared_memory_size=settings.output_shared_memory_size if settings.shared_memory != "none" else None,
        )
        row = theirs.level(int(level))
        rows.append(LevelComparison(
            int(level), ours.infer_per_sec, ours.percentile_latency_ns[99] / 1000,
            row.throughput if row else None, row.p99_ms * 1000 if row else None,
            None if row else theirs.failures.get(int(level), "no result"), tuple(theirs.commands[-1]),
        ))
    return rows


def comparison_text(rows: list[LevelComparison], protocol: str) -> str:
    lines = [f"tritongen perf vs perf_analyzer ({protocol}, interleaved level by level)",
             f"{'concurrency':>11}  {'tritongen infer/s':>17}  {'perf_analyzer infer/s':>21}  {'ratio':>5}  "
             f"{'p99 us (tg / pa)':>17}"]
    for r in rows:
        theirs = f"{r.perf_analyzer:21.1f}" if r.perf_analyzer else f"{'-':>21}"
        ratio = f"{r.ratio:5.2f}" if r.ratio else f"{'-':>5}"
        p99 = f"{r.tritongen_p99_us:.0f} / {r.perf_analyzer_p99_us:.0f}" if r.perf_analyzer_p99_us else f"{r.tritongen_p99_us:.0f} / -"
        lines.append(f"{r.concurrency:>11}  {r.tritongen:17.1f}  {theirs}  {ratio}  {p99:>17}"
                     + (f"  ({r.problem})" if r.problem else ""))
    if rows and rows[0].perf_analyzer_command:
        lines.insert(1, "perf_analyzer " + " ".join(rows[0].perf_analyzer_command[1:]))
    return "\n".join(lines)
