"""Capacity planning: replicas from a target request rate and a measured per-replica capacity."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import DeployError


@dataclass(frozen=True)
class CapacityPlan:
    target_rps: float         # requests/s the service must sustain
    replica_capacity: float   # requests/s one replica sustains within the latency budget (measured)
    latency_budget_ms: float  # p99 latency the capacity was measured at
    utilisation: float = 0.7  # share of a replica's capacity the plan uses (headroom for bursts)
    burst: float = 2.0        # HPA maxReplicas = ceil(replicas x burst)
    queue_share: float = 0.2  # share of the latency budget that may be spent queueing (HPA target)

    def __post_init__(self):
        for name in ("target_rps", "replica_capacity", "latency_budget_ms"):
            if not getattr(self, name) > 0:
                raise DeployError(f"--{name.replace('_', '-')} must be > 0, not {getattr(self, name)}")
        if not 0 < self.utilisation <= 1:
            raise DeployError(f"--utilisation must be in (0, 1], not {self.utilisation}")
        if not 0 < self.queue_share < 1:
            raise DeployError(f"--queue-share must be in (0, 1), not {self.queue_share}")
        if self.burst < 1:
            raise DeployError(f"--burst must be >= 1, not {self.burst}")

    @property
    def replicas(self) -> int:
        return max(1, math.ceil(self.target_rps / (self.replica_capacity * self.utilisation) - 1e-9))

    @property
    def max_replicas(self) -> int:
        return max(self.replicas, math.ceil(self.replicas * self.burst))

    @property
    def queue_target_us(self) -> int:
        return max(1, round(self.latency_budget_ms * 1000 * self.queue_share))

    def explain(self) -> str:
        per = self.replica_capacity * self.utilisation
        return "\n".join([
            f"capacity: {self.replica_capacity:g} rps/replica x {self.utilisation:g} utilisation = {per:g} rps/replica",
            f"replicas: ceil({self.target_rps:g} / {per:g}) = {self.replicas}  (HPA minReplicas)",
            f"maxReplicas: ceil({self.replicas} x {self.burst:g} burst) = {self.max_replicas}",
            f"HPA target: {self.latency_budget_ms:g} ms budget x {self.queue_share:g} queue share"
            f" = {self.queue_target_us} us average queue time per request",
        ])


@dataclass(frozen=True)
class MeasuredCapacity:
    """What one served replica sustains within the latency budget, measured with ``tritongen perf``."""

    rps: float
    concurrency: int
    p99_ms: float
    url: str
    model: str

    def explain(self) -> str:
        return (f"measured: {self.model} at {self.url}: {self.rps:.1f} infer/s at concurrency {self.concurrency} "
                f"with p99 {self.p99_ms:.1f} ms (tritongen perf, concurrency doubled while the p99 fits)")


def measure_replica_capacity(model: str, url: str, latency_budget_ms: float, *, protocol: str = "http",
                             images=None, max_concurrency: int = 16, interval_ms: int = 2000,
                             stability_percentage: float = 20.0) -> MeasuredCapacity:
    """The highest throughput one replica at ``url`` keeps while its p99 stays within the budget:
    ``tritongen perf`` at concurrency 1, 2, 4, ... up to ``max_concurrency``, until the p99 leaves
    the budget or the throughput stops growing. Levels stabilise on the average latency (a p99
    over a few windows of a shared machine rarely settles); the budget is checked on the p99.
    Measure one replica, on hardware like production's."""
    from ..errors import PerfError
    from ..perf import PerfSettings, run_perf

    levels = sorted({min(2**i, max_concurrency) for i in range(max_concurrency.bit_length() + 1)})
    measured = []
    for level in levels:
        settings = PerfSettings(mode="concurrency", levels=[level], measurement_interval_ms=interval_ms,
                                stability_percentage=stability_percentage)
        try:
            status = run_perf(model, url, settings, images=images, protocol=protocol).results[0]
        except PerfError as exc:
            raise DeployError(f"measuring the capacity of {model!r} at {url}: {exc}") from None
        p99_ms = status.percentile_latency_ns[99] / 1e6
        if not status.stable or p99_ms > latency_budget_ms:
            break
        measured.append(MeasuredCapacity(status.infer_per_sec, level, p99_ms, url, model))
        if len(measured) > 1 and measured[-1].rps < 1.05 * measured[-2].rps:
            break  # saturated: more requests in flight only queue
    if not measured:
        why = ("did not stabilise within {:g} %".format(stability_percentage) if not status.stable
               else f"has p99 {p99_ms:.1f} ms")
        raise DeployError(f"{model!r} at {url} keeps no concurrency within the {latency_budget_ms:g} ms p99 budget "
                          f"(concurrency 1 {why}): raise --latency-budget, measure on a quiet machine, "
                          "or give --replica-capacity")
    return max(measured, key=lambda m: m.rps)
