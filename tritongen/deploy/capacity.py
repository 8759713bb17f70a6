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
