"""Deploy targets, one class each: which templates it renders, to which files, checked by which
validator. Adding a target is one class (and its templates)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jinja2

from ..registry import Registry
from .errors import DeployError
from .spec import TRITON_IMAGE, DeploySpec
from .validators import KUBERNETES_VERSION, validate

TARGETS: Registry[type["Target"]] = Registry("deploy target")

# The Pods metric the HPA scales on; the prometheus-adapter rule defines it.
QUEUE_METRIC = "triton_queue_avg_us"


@dataclass(frozen=True)
class Manifest:
    template: str       # under templates/
    filename: str       # under the output directory
    validator: str      # a name in validators.VALIDATORS
    kustomize: bool = True  # listed in kustomization.yaml's resources (Kubernetes objects only)


@dataclass(frozen=True)
class DeployResult:
    target: str
    files: tuple[Path, ...]
    validated: tuple[tuple[Path, str], ...]   # (file, validator) pairs that passed


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tritongen.deploy", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda value: json.dumps(value if not isinstance(value, Path) else str(value))  # JSON is YAML
    return env


class Target:
    name: ClassVar[str]
    manifests: ClassVar[tuple[Manifest, ...]]

    def check_source(self, spec: DeploySpec) -> None:
        """DeployError if this target cannot reach the repository as given."""

    def context(self, spec: DeploySpec, output: Path) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/component": "tritonserver"}
        requests = {"cpu": spec.cpu, "memory": spec.memory}
        limits = dict(requests, **({"nvidia.com/gpu": str(spec.profile.gpus)} if spec.profile.needs_gpu else {}))
        return {"spec": spec, "labels": labels, "requests": requests, "limits": limits, "queue_metric": QUEUE_METRIC,
                "output_hint": str(output),
                "resources": [m.filename for m in self.manifests if m.kustomize and m.validator != "kustomization"]}

    def write(self, spec: DeploySpec, output: Path, kubernetes_version: str = KUBERNETES_VERSION) -> DeployResult:
        """Render every manifest into ``output``, then check each with its validator."""
        self.check_source(spec)
        env, context = _environment(), self.context(spec, output)
        texts = {m.filename: env.get_template(m.template).render(**context) for m in self.manifests}
        try:
            output.mkdir(parents=True, exist_ok=True)
            for filename, text in texts.items():
                (output / filename).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise DeployError(f"cannot write to {output}: {exc.strerror or exc}") from None
        validated = []
        for m in self.manifests:
            validate(output / m.filename, m.validator, kubernetes_version)
            validated.append((output / m.filename, m.validator))
        return DeployResult(self.name, tuple(output / m.filename for m in self.manifests), tuple(validated))


@TARGETS.register
class Compose(Target):
    name = "compose"
    manifests = (Manifest("compose/compose.yaml.j2", "compose.yaml", "compose", kustomize=False),)


def _needs_storage(spec: DeploySpec, target: str) -> None:
    if not spec.source.is_s3 and not spec.source.pvc:
        raise DeployError(f"--target {target} reads the repository from a cluster: give an s3:// REPO_URI "
                          "or --pvc NAME (a PersistentVolumeClaim holding it)")


@TARGETS.register
class Kubernetes(Target):
    name = "kubernetes"
    manifests = (
        Manifest("kubernetes/deployment.yaml.j2", "deployment.yaml", "kubernetes"),
        Manifest("kubernetes/service.yaml.j2", "service.yaml", "kubernetes"),
        Manifest("kubernetes/hpa.yaml.j2", "hpa.yaml", "kubernetes"),
        Manifest("kubernetes/pdb.yaml.j2", "pdb.yaml", "kubernetes"),
        Manifest("kubernetes/servicemonitor.yaml.j2", "servicemonitor.yaml", "servicemonitor"),
        Manifest("kubernetes/prometheus-adapter-values.yaml.j2", "prometheus-adapter-values.yaml", "adapter-rules",
                 kustomize=False),  # helm values for the adapter, installed in its own namespace
        Manifest("kubernetes/kustomization.yaml.j2", "kustomization.yaml", "kustomization"),
    )

    def check_source(self, spec: DeploySpec) -> None:
        _needs_storage(spec, self.name)


@TARGETS.register
class KServe(Target):
    name = "kserve"
    manifests = (
        Manifest("kserve/inferenceservice.yaml.j2", "inferenceservice.yaml", "inferenceservice"),
        Manifest("kserve/kustomization.yaml.j2", "kustomization.yaml", "kustomization"),
    )

    def check_source(self, spec: DeploySpec) -> None:
        _needs_storage(spec, self.name)

    def context(self, spec: DeploySpec, output: Path) -> dict[str, Any]:
        # KServe's triton runtime sets the repository and ports itself; it takes the rest as args.
        args = [a for a in spec.server_args if a.startswith(("--model-control-mode", "--load-model", "--repository-poll"))]
        return {**super().context(spec, output), "kserve_args": args,
                "runtime_version": spec.image.rsplit(":", 1)[-1], "custom_image": not spec.image.startswith(TRITON_IMAGE.split(":")[0])}
