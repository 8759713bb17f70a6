"""What a deployment is made of: where the repository lives, the server's image and ports,
resources and scaling. Every field comes from the repository (profile) or a CLI flag."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .capacity import CapacityPlan
from .errors import DeployError
from .profile import RepositoryProfile

# docker/Dockerfile's base: NGC 24.10 is Triton 2.51.0, the version tritongen pins (tritonclient, pytriton).
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# The image docker/Dockerfile builds: the official one plus what Python-backend models import.
PROJECT_IMAGE = "tritongen-serving:24.10"
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")


@dataclass(frozen=True)
class RepositoryLocation:
    """REPO_URI: a local directory (compose mounts it; Kubernetes needs a PVC holding it) or s3://
    (for a published prefix, the version its CURRENT names: ``storage.resolve``)."""
    uri: str
    pvc: Optional[str] = None                 # PersistentVolumeClaim holding the repository (Kubernetes, KServe)
    pvc_path: str = ""                        # the repository's path inside the PVC
    credentials_secret: str = "tritongen-s3"  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (s3://)
    region: Optional[str] = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def local_dir(self) -> Optional[Path]:
        return None if self.is_s3 else Path(self.uri).resolve()

    @property
    def model_repository(self) -> str:
        """What tritonserver's --model-repository gets (Triton reads s3://host:port/bucket/path too)."""
        return self.uri if self.is_s3 else "/models"

    @property
    def s3_endpoint(self) -> Optional[str]:
        """``host:port`` of an S3-compatible endpoint named in the URI (None: AWS)."""
        from ..storage import StoreURI

        return StoreURI.parse(self.uri).endpoint if self.is_s3 else None

    @property
    def storage_uri(self) -> str:
        """KServe's storageUri: ``s3://bucket/path`` (its storage initializer takes a custom endpoint
        from the S3 credentials' ``serving.kserve.io/s3-endpoint`` annotation, not from the URI)."""
        if self.is_s3:
            from ..storage import StoreURI

            parsed = StoreURI.parse(self.uri)
            return f"s3://{parsed.bucket}/{parsed.prefix}".rstrip("/")
        if not self.pvc:
            raise DeployError("KServe reads the repository from storage: give an s3:// REPO_URI or --pvc NAME")
        return f"pvc://{self.pvc}/{self.pvc_path.strip('/')}".rstrip("/")


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    max_replicas: int = 4
    queue_target_us: int = 10_000             # HPA target: average queue time per request (µs)
    plan: Optional[CapacityPlan] = None

    def __post_init__(self):
        if self.replicas < 1 or self.max_replicas < self.replicas:
            raise DeployError(f"need 1 <= --replicas ({self.replicas}) <= --max-replicas ({self.max_replicas})")
        if self.queue_target_us < 1:
            raise DeployError(f"--queue-target-us must be >= 1, not {self.queue_target_us}")

    @classmethod
    def from_plan(cls, plan: CapacityPlan) -> "Scaling":
        return cls(plan.replicas, plan.max_replicas, plan.queue_target_us, plan)


@dataclass(frozen=True)
class DeploySpec:
    name: str
    source: RepositoryLocation
    profile: RepositoryProfile
    image: str
    scaling: Scaling = field(default_factory=Scaling)
    namespace: str = "default"
    model_control_mode: str = "none"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    cpu: str = "2"
    memory: str = "8Gi"
    shm_size: str = "1Gi"
    probe_period_s: int = 10
    prometheus_url: str = "http://prometheus-operated.monitoring.svc"  # prometheus-adapter's Prometheus
    prometheus_port: int = 9090
    service_account: Optional[str] = None     # KServe: the ServiceAccount carrying the s3 credentials Secret

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise DeployError(f"--name {self.name!r}: use lowercase letters, digits and '-' (a DNS label, <= 52 chars)")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise DeployError(f"--model-control-mode {self.model_control_mode!r}: choose one of {', '.join(MODEL_CONTROL_MODES)}")
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise DeployError("--http-port, --grpc-port and --metrics-port must differ")

    @property
    def startup_failure_threshold(self) -> int:
        """startupProbe failures allowed: the repository's startup budget in probe periods."""
        return -(-self.profile.startup_seconds // self.probe_period_s)

    @property
    def server_args(self) -> list[str]:
        args = [f"--model-repository={self.source.model_repository}",
                f"--model-control-mode={self.model_control_mode}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--allow-metrics=true"]
        if self.model_control_mode == "explicit":
            args += [f"--load-model={m}" for m in self.profile.model_names]
        if self.model_control_mode == "poll":
            args.append("--repository-poll-secs=30")
        return args

    @property
    def compose_shm(self) -> str:
        """compose's shm_size wants docker units (1g), not Kubernetes quantities (1Gi)."""
        return self.shm_size.removesuffix("i").lower()


def default_image(profile: RepositoryProfile) -> str:
    """Python-backend models import numpy/cv2/onnxruntime/paddle: they need the project's image."""
    return PROJECT_IMAGE if any(m.runtime == "python" for m in profile.models) else TRITON_IMAGE
