"""Validators for written manifests, one class per kind of file, each the ecosystem's own:
Kubernetes kinds -> kubernetes-validate (the API's OpenAPI schemas, strict, offline);
compose -> the compose specification's JSON schema (shipped in the docker-compose 1.29.2 wheel);
ServiceMonitor -> cloudcoil's models generated from the prometheus-operator CRDs;
InferenceService -> KServe's generated SDK models, run in a separate interpreter (kserve_check.py);
Dockerfile -> hadolint. Each ``check(path)`` raises DeployError with one line naming the file."""
from __future__ import annotations

import abc
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..registry import Registry
from .errors import DeployError

VALIDATORS: Registry[type["Validator"]] = Registry("validator")

# The Kubernetes release whose API schemas the manifests are checked against (kubernetes-validate).
KUBERNETES_VERSION = "1.33.0"


def _documents(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as exc:
        raise DeployError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise DeployError(f"{path}: expected one or more YAML mappings")
    return docs


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Validator(abc.ABC):
    name = ""
    kubernetes_version: str = KUBERNETES_VERSION

    @abc.abstractmethod
    def check(self, path: Path) -> None:
        """DeployError (one line, naming ``path``) if the file is rejected."""


@VALIDATORS.register
class KubernetesValidator(Validator):
    """Built-in Kubernetes kinds against the release's OpenAPI schemas; strict: unknown fields fail."""
    name = "kubernetes"

    def check(self, path: Path) -> None:
        import kubernetes_validate

        for doc in _documents(path):
            try:
                kubernetes_validate.validate(doc, self.kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                raise DeployError(f"{path}: {doc.get('kind')} rejected by kubernetes-validate "
                                  f"({self.kubernetes_version}) at {where or '/'}: {_one_line(exc.message)}") from None
            except kubernetes_validate.utils.SchemaNotFoundError as exc:
                raise DeployError(f"{path}: kubernetes-validate has no schema for {_one_line(exc)}") from None


def compose_schema() -> dict:
    """The compose specification's JSON schema, as shipped in the docker-compose 1.29.2 wheel."""
    import importlib.resources

    try:
        source = importlib.resources.files("compose") / "config" / "compose_spec.json"
        return json.loads(source.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError):
        raise DeployError("the compose validator needs the compose schema from docker-compose 1.29.2: "
                          "pip install --no-deps docker-compose==1.29.2") from None


@VALIDATORS.register
class ComposeValidator(Validator):
    name = "compose"

    def check(self, path: Path) -> None:
        import jsonschema

        (doc,) = _documents(path)[:1]
        schema = compose_schema()
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            raise DeployError(f"{path}: rejected by the compose schema at {where or '/'}: {_one_line(error.message)}")


@VALIDATORS.register
class ServiceMonitorValidator(Validator):
    """monitoring.coreos.com/v1 ServiceMonitor against models generated from prometheus-operator's CRD."""
    name = "servicemonitor"

    def check(self, path: Path) -> None:
        import pydantic
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

        for doc in _documents(path):
            if (doc.get("apiVersion"), doc.get("kind")) != ("monitoring.coreos.com/v1", "ServiceMonitor"):
                raise DeployError(f"{path}: expected a monitoring.coreos.com/v1 ServiceMonitor")
            try:
                ServiceMonitor.model_validate(doc)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise DeployError(f"{path}: ServiceMonitor rejected at {where}: {first['msg']}") from None


def kserve_python() -> Path:
    """The interpreter that has KServe's SDK: $TRITONGEN_KSERVE_PYTHON, else .venv-kserve beside this venv."""
    if os.environ.get("TRITONGEN_KSERVE_PYTHON"):
        return Path(os.environ["TRITONGEN_KSERVE_PYTHON"])
    return Path(sys.prefix).parent / ".venv-kserve" / "bin" / "python"


@VALIDATORS.register
class InferenceServiceValidator(Validator):
    """serving.kserve.io/v1beta1 InferenceService against KServe 0.21's generated SDK models. The
    SDK pins protobuf>=6.33 (tritongen runs 4.x), so it lives in its own venv and runs as a child."""
    name = "inferenceservice"

    def check(self, path: Path) -> None:
        python = kserve_python()
        if not python.exists():
            raise DeployError(f"the InferenceService validator needs KServe's SDK in its own venv ({python} is missing): "
                              "python3.11 -m venv .venv-kserve && .venv-kserve/bin/pip install kserve==0.21.0 "
                              "(or set TRITONGEN_KSERVE_PYTHON)")
        script = Path(__file__).with_name("kserve_check.py")
        run = subprocess.run([str(python), str(script), str(path)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            lines = (run.stdout.strip() or run.stderr.strip() or "failed").splitlines()
            raise DeployError(f"rejected by KServe's SDK models: {lines[0] if run.stdout.strip() else lines[-1]}")


@VALIDATORS.register
class KustomizationValidator(Validator):
    """No schema for kustomize's Kustomization ships offline: check its kind and that every
    listed resource is a file beside it (what `kubectl apply -k` reads first)."""
    name = "kustomization"

    def check(self, path: Path) -> None:
        (doc,) = _documents(path)[:1]
        if (doc.get("apiVersion"), doc.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
            raise DeployError(f"{path}: expected a kustomize.config.k8s.io/v1beta1 Kustomization")
        resources = doc.get("resources")
        if not isinstance(resources, list) or not resources:
            raise DeployError(f"{path}: resources must be a non-empty list of files")
        missing = [r for r in resources if not (path.parent / str(r)).is_file()]
        if missing:
            raise DeployError(f"{path}: resources not found beside it: {', '.join(map(str, missing))}")


@VALIDATORS.register
class AdapterRulesValidator(Validator):
    """prometheus-adapter chart values: no schema ships offline; check each custom rule has the
    fields the adapter requires (seriesQuery, metricsQuery, resources, name.as)."""
    name = "adapter-rules"

    def check(self, path: Path) -> None:
        (doc,) = _documents(path)[:1]
        rules = (doc.get("rules") or {}).get("custom")
        if not isinstance(rules, list) or not rules:
            raise DeployError(f"{path}: rules.custom must list at least one rule")
        for i, rule in enumerate(rules):
            for key in ("seriesQuery", "metricsQuery", "resources", "name"):
                if key not in rule:
                    raise DeployError(f"{path}: rules.custom[{i}] has no {key}")
            if not isinstance(rule["name"], dict) or not isinstance(rule["name"].get("as"), str):
                raise DeployError(f"{path}: rules.custom[{i}].name.as must be the metric's name")


@VALIDATORS.register
class DockerfileValidator(Validator):
    name = "dockerfile"

    def check(self, path: Path) -> None:
        hadolint = Path(sys.executable).with_name("hadolint")
        run = subprocess.run([str(hadolint) if hadolint.exists() else "hadolint", "--no-color", str(path)],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            lines = (run.stdout.strip() or run.stderr.strip()).splitlines()
            raise DeployError(f"hadolint rejects {path}: {lines[0] if lines else 'exit ' + str(run.returncode)}"
                              + (f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""))


def validate(path: Path, validator: str, kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Check ``path`` with the named validator; DeployError (one line) if it is rejected."""
    VALIDATORS.lookup(validator, DeployError)(kubernetes_version=kubernetes_version).check(Path(path))
