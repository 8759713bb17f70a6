"""The deploy stage: a model repository -> manifests for the official Triton container
(docker compose, Kubernetes + kustomize, KServe), each checked by the ecosystem's own validator."""
from __future__ import annotations

from pathlib import Path

from .capacity import CapacityPlan, MeasuredCapacity, measure_replica_capacity
from .errors import DeployError
from .profile import RepositoryProfile, StartupBudget, read_profile, read_published_profile
from .spec import DeploySpec, RepositoryLocation, Scaling, default_image
from .targets import TARGETS, DeployResult, Target
from .validators import KUBERNETES_VERSION, VALIDATORS, validate


def deploy(spec: DeploySpec, target: str, output: Path, kubernetes_version: str = KUBERNETES_VERSION) -> DeployResult:
    """Write ``target``'s manifests for ``spec`` into ``output`` and validate every file."""
    return TARGETS.lookup(target, DeployError)().write(spec, Path(output), kubernetes_version)


__all__ = ["CapacityPlan", "MeasuredCapacity", "measure_replica_capacity", "DeployError", "DeployResult", "DeploySpec", "KUBERNETES_VERSION", "RepositoryProfile",
           "RepositoryLocation", "Scaling", "StartupBudget", "TARGETS", "Target", "VALIDATORS", "default_image",
           "deploy", "read_profile", "read_published_profile", "validate"]
