"""The search: hill-climb from the served config, each step measured with ``tritongen perf``.

From the current configuration, the neighbours, most promising first:

1. one more instance of the composing model where requests waited longest in its queue
   (Triton's statistics over the measurement), the next-longest when that one is at the limit;
2. per model with dynamic batching: max_queue_delay doubled (0 -> 100 µs) and halved (-> 0);
   with a delay, a preferred batch size of the load one instance sees (concurrency ÷ instances);
3. max_batch_size doubled when executions ran full batches (average ≥ ¾ of it), halved when
   they ran a quarter of it or less (never below the ensemble's max_batch_size).

The first neighbour that beats the current configuration by more than ``min_gain`` becomes the
current one (first improvement: fewer trials than a full neighbourhood); the search stops when
no neighbour improves or ``max_trials`` configurations have been measured. The chosen one is
the best trial by the objective: the highest throughput with p99 within the latency budget, or
the lowest p99 at the minimum throughput. It is loaded last, so the server ends serving it
(with no trial meeting the objective, the server is put back to the configuration it served).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import PerfError
from ..measure import usable_cores
from .candidate import Candidate, TuneError, short_name
from .control import ModelControl, TuneTarget

DELAY_START_US = 100  # the first non-zero max_queue_delay tried
MAX_BATCH_SIZE_LIMIT = 64


def default_concurrency() -> int:
    return 2 * usable_cores()


@dataclass
class TuneSettings:
    latency_budget_ms: float | None = None  # highest throughput with p99 <= this ...
    min_throughput: float | None = None  # ... or lowest p99 with throughput >= this (infer/s)
    concurrency: int | None = None  # outstanding requests while measuring (default 2 x cores)
    max_trials: int = 8  # configurations measured, the served one included
    measurement_interval_ms: int = 2000  # perf window length
    max_windows: int = 6  # perf windows per measurement before it is taken as unstable
    stability_percentage: float = 10.0
    max_instances: int | None = None  # per model (default 2 x cores)
    min_gain: float = 0.02  # a neighbour must beat the current configuration by this fraction
    timeout_s: float = 60.0  # one request

    def validate(self) -> None:
        budget, floor = self.latency_budget_ms, self.min_throughput
        if (budget is None) == (floor is None):
            raise TuneError("give exactly one objective: --latency-budget MS (highest throughput within it) or "
                            "--min-throughput N (lowest p99 at that throughput)")
        for flag, value in (("--latency-budget", budget), ("--min-throughput", floor)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                raise TuneError(f"{flag} must be a positive number (got {shown})")
        if self.concurrency is not None and self.concurrency < 1:
            raise TuneError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.max_trials < 1:
            raise TuneError(f"--max-trials must be >= 1, got {self.max_trials}")
        if self.measurement_interval_ms <= 0:
            raise TuneError(f"--measurement-interval must be > 0 ms, got {self.measurement_interval_ms}")
        if self.max_windows < 3:
            raise TuneError("at least 3 measurement windows per trial")
        if self.max_instances is not None and self.max_instances < 1:
            raise TuneError("max_instances must be >= 1")
        if self.min_gain < 0:
            raise TuneError("min_gain must be >= 0")

    @property
    def load(self) -> int:
        return self.concurrency or default_concurrency()

    @property
    def instance_limit(self) -> int:
        return self.max_instances or default_concurrency()


@dataclass
class Trial:
    """One measured configuration (or one Triton refused: ``error``)."""

    index: int  # 1-based, in the order measured
    candidate: Candidate
    change: str  # what differs from the parent ("served config" for the first)
    parent: int | None
    throughput: float = 0.0  # infer/s
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    avg_ms: float = 0.0
    queue_us: dict[str, float] = field(default_factory=dict)  # per tuned model, average per request
    compute_us: dict[str, float] = field(default_factory=dict)
    batch: dict[str, float] = field(default_factory=dict)  # average batch per execution
    stable: bool = True
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    feasible: bool = False  # meets the objective (set by the search)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def busiest(self) -> str | None:
        """The model where requests waited longest."""
        return max(self.queue_us, key=self.queue_us.get) if self.queue_us else None


@dataclass(frozen=True)
class Objective:
    latency_budget_ms: float | None = None
    min_throughput: float | None = None

    def feasible(self, t: Trial) -> bool:
        if not t.ok:
            return False
        if self.latency_budget_ms is not None:
            return t.p99_ms <= self.latency_budget_ms
        return t.throughput >= self.min_throughput

    def key(self, t: Trial) -> tuple:
        """Larger is better: feasible before infeasible; within each, the objective's metric
        (infeasible: the one that brings the objective closer)."""
        if not t.ok:
            return (-1, 0.0)
        feasible = self.feasible(t)
        by_throughput = feasible == (self.latency_budget_ms is not None)
        return (int(feasible), t.throughput if by_throughput else -t.p99_ms)

    def better(self, a: Trial, b: Trial, margin: float = 0.0) -> bool:
        """``a`` beats ``b`` (by more than ``margin`` when both are on the same side of the objective)."""
        ka, kb = self.key(a), self.key(b)
        if ka[0] != kb[0]:
            return ka[0] > kb[0]
        if ka[0] < 0:
            return False
        return ka[1] - kb[1] > margin * abs(kb[1])

    def describe(self) -> str:
        if self.latency_budget_ms is not None:
            return f"highest throughput with p99 <= {self.latency_budget_ms:g} ms"
        return f"lowest p99 with throughput >= {self.min_throughput:g} infer/s"


@dataclass
class TuneResult:
    model: str
    url: str
    objective: Objective
    concurrency: int
    target: TuneTarget
    baseline: Candidate
    trials: list[Trial]
    chosen: Trial | None  # None: no trial met the objective (the server serves the baseline again)
    stop_reason: str
    served: Candidate  # what the server serves now

    @property
    def prefix(self) -> str:
        return self.target.prefix

    def changes(self) -> dict[str, tuple[Any, Any]]:
        """Tuned models whose chosen settings differ from the served ones: name -> (before, after)."""
        if self.chosen is None:
            return {}
        return {name: (self.baseline[name], self.chosen.candidate[name])
                for name in self.chosen.candidate.changed_models(self.baseline)}


def neighbours(current: Candidate, trial: Trial, settings: TuneSettings, floor: int, prefix: str = "") -> list[tuple[str, Candidate]]:
    """The configurations one step from ``current``, most promising first (see the module doc)."""
    out: list[tuple[str, Candidate]] = []
    by_queue = sorted(current.names, key=lambda n: -trial.queue_us.get(n, 0.0))
    for name in by_queue:
        s = current[name]
        if s.instances < settings.instance_limit:
            out.append((f"+1 {short_name(name, prefix)} instance ({s.instances}→{s.instances + 1}; "
                        f"queue {trial.queue_us.get(name, 0.0):.0f} µs)", current.with_model(name, instances=s.instances + 1)))
            break
    for name in by_queue:
        s = current[name]
        if not s.dynamic_batching:
            continue
        label = short_name(name, prefix)
        delay = s.max_queue_delay_us
        up = max(DELAY_START_US, 2 * delay)
        out.append((f"{label} delay {delay}→{up} µs", current.with_model(name, max_queue_delay_us=up)))
        if delay > 0:
            down = 0 if delay <= DELAY_START_US else delay // 2
            out.append((f"{label} delay {delay}→{down} µs", current.with_model(name, max_queue_delay_us=down)))
            preferred = (max(1, min(s.max_batch_size or 1, settings.load // s.instances)),)
            if preferred != s.preferred_batch_sizes:
                out.append((f"{label} preferred batch {list(s.preferred_batch_sizes)}→{list(preferred)}",
                            current.with_model(name, preferred_batch_sizes=preferred)))
    for name in by_queue:
        s = current[name]
        if not s.dynamic_batching or s.max_batch_size <= 0:
            continue
        average = trial.batch.get(name, 0.0)
        for size in ((s.max_batch_size * 2,) if average >= 0.75 * s.max_batch_size else ()) + \
                    ((s.max_batch_size // 2,) if 0 < average <= s.max_batch_size / 4 else ()):
            if not max(1, floor) <= size <= MAX_BATCH_SIZE_LIMIT:
                continue
            preferred = tuple(p for p in s.preferred_batch_sizes if p <= size)
            if s.preferred_batch_sizes == (s.max_batch_size,):
                preferred = (size,)
            out.append((f"{short_name(name, prefix)} max_batch_size {s.max_batch_size}→{size} "
                        f"(average batch {average:.1f})",
                        current.with_model(name, max_batch_size=size, preferred_batch_sizes=preferred)))
    return [(change, c) for change, c in out if not c.problems(floor)]


def measure(model: str, url: str, candidate: Candidate, settings: TuneSettings, index: int, change: str,
            parent: int | None, tuned: list[str], images: str | Path | None = None, input_data: str = "random",
            shapes: dict[str, list[int]] | None = None) -> Trial:
    """One ``tritongen perf`` measurement at the tune concurrency (perf errors become the trial's error)."""
    from ..perf import PerfSettings, run_perf

    perf_settings = PerfSettings(
        levels=[settings.load], measurement_interval_ms=settings.measurement_interval_ms,
        max_trials=settings.max_windows, stability_percentage=settings.stability_percentage,
        warmup_request_count=2 * settings.load, timeout_s=settings.timeout_s,
    )
    trial = Trial(index, candidate, change, parent)
    try:
        run = run_perf(model, url, perf_settings, input_data=input_data, shapes=shapes, images=images)
    except PerfError as exc:
        trial.error = str(exc)
        return trial
    status = run.results[0]
    trial.throughput = status.infer_per_sec
    trial.p50_ms = status.percentile_latency_ns[50] / 1e6
    trial.p99_ms = status.percentile_latency_ns[99] / 1e6
    trial.avg_ms = status.avg_latency_ns / 1e6
    trial.stable = status.stable
    trial.warnings = list(status.warnings)
    for name in tuned:
        stats = status.server.get(name)
        if stats is None:
            continue
        trial.queue_us[name] = stats.avg_us("queue")
        trial.compute_us[name] = stats.compute_us
        trial.batch[name] = stats.inference_count / stats.execution_count if stats.execution_count else 0.0
    return trial


def tune(model: str, url: str = "127.0.0.1:8001", settings: TuneSettings | None = None,
         images: str | Path | None = None, input_data: str = "random", shapes: dict[str, list[int]] | None = None,
         on_event: Callable[[dict[str, Any]], None] = lambda event: None) -> TuneResult:
    """Tune ``model`` on the explicit-mode server at ``url``; the server ends serving the chosen config.

    ``on_event`` gets ``{"event": "loading"|"measuring"|"trial", ...}`` as the search goes: "loading"
    before a candidate is loaded, "measuring" (with the ``candidate``, now served) before perf
    runs, "trial" (with the ``trial``) after it."""
    settings = settings or TuneSettings()
    settings.validate()
    objective = Objective(settings.latency_budget_ms, settings.min_throughput)
    if images is not None and not Path(images).is_dir():
        raise TuneError(f"--images {images}: not a directory")
    with ModelControl(url) as control:
        target = control.inspect(model)
        if target.string_inputs and images is None and input_data in ("random", "zero"):
            raise TuneError(f"{model} takes encoded images ({', '.join(target.string_inputs)}, BYTES): "
                            "give --images DIR to measure it with real ones")
        control.require_explicit(model)
        baseline = target.baseline()
        trials: list[Trial] = []

        def run(candidate: Candidate, change: str, parent: int | None) -> Trial:
            index = len(trials) + 1
            if parent is not None:  # the first trial measures what the server serves
                on_event({"event": "loading", "index": index, "max_trials": settings.max_trials, "change": change})
                try:
                    control.load(target, candidate)
                except TuneError as exc:
                    trial = Trial(index, candidate, change, parent, error=str(exc))
                    trials.append(trial)
                    on_event({"event": "trial", "trial": trial})
                    return trial
            on_event({"event": "measuring", "index": index, "max_trials": settings.max_trials, "change": change,
                      "candidate": candidate})
            trial = measure(model, url, candidate, settings, index, change, parent, target.tuned, images, input_data, shapes)
            trial.feasible = objective.feasible(trial)
            trials.append(trial)
            on_event({"event": "trial", "trial": trial})
            return trial

        try:
            current = run(baseline, "served config", None)
            if not current.ok:
                raise TuneError(f"measuring {model} as served failed: {current.error}")
            tried = {baseline}
            stop_reason = f"trial budget reached ({settings.max_trials})"
            while len(trials) < settings.max_trials:
                options = [(change, c) for change, c in neighbours(current.candidate, current, settings,
                                                                   target.floor_batch_size, target.prefix)
                           if c not in tried]
                if not options:
                    stop_reason = f"no untried neighbour of #{current.index}"
                    break
                improved = None
                for change, candidate in options:
                    if len(trials) >= settings.max_trials:
                        break
                    tried.add(candidate)
                    trial = run(candidate, change, current.index)
                    if objective.better(trial, current, settings.min_gain):
                        improved = trial
                        break
                if improved is None:
                    if len(trials) < settings.max_trials:
                        stop_reason = f"no neighbour improves on #{current.index}"
                    break
                current = improved
            feasible = [t for t in trials if t.feasible]
            chosen = max(feasible, key=objective.key) if feasible else None  # max keeps the earliest of equals
            final = chosen.candidate if chosen else baseline
            on_event({"event": "loading", "index": None, "max_trials": settings.max_trials,
                      "change": f"serving #{chosen.index}" if chosen else "restoring the served config"})
            control.load(target, final)  # loads only the models not serving it already
        except BaseException:
            try:  # best effort: leave the server as it was
                control.load(target, baseline)
            except Exception:
                pass
            raise
    return TuneResult(model, url, objective, settings.load, target, baseline, trials, chosen, stop_reason, final)
