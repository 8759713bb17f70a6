"""tritongen deploy: manifests for compose, Kubernetes and KServe, checked by the ecosystem's own
validators (kubernetes-validate, the compose schema, prometheus-operator CRD models, KServe's SDK
models, hadolint). Fast: no server, no cluster."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tritongen.deploy import (CapacityPlan, DeployError, DeploySpec, RepositoryLocation, Scaling, default_image, deploy,
                              read_profile, validate)
from tritongen.deploy.spec import TRITON_IMAGE
from tritongen.deploy.validators import kserve_python
from tritongen.testing.identity import write_identity_model

from .conftest import free_port, run_cli, start_serve_cli, stop_serve_cli

ROOT = Path(__file__).resolve().parents[1]
needs_kserve = pytest.mark.skipif(
    not kserve_python().exists(),
    reason=f"KServe's SDK venv ({kserve_python()}) is missing: python3.11 -m venv .venv-kserve && "
           ".venv-kserve/bin/pip install kserve==0.21.0 (it pins protobuf>=6.33, so not in the main venv)")

PLAN_CONFIG = """name: "plan"
platform: "tensorrt_plan"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
instance_group [{ kind: KIND_GPU count: 1 gpus: [0, 1] }]
model_warmup [{ name: "zeros" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [3] zero_data: true } } }]
"""


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(directory: Path) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in load(path):
            kinds.setdefault(doc.get("kind", path.name), []).append(doc)
    return kinds


@pytest.fixture
def cpu_repo(tmp_path) -> Path:
    write_identity_model(tmp_path / "cpu_repo", "identity")
    return tmp_path / "cpu_repo"


@pytest.fixture
def gpu_repo(tmp_path) -> Path:
    """A TensorRT plan on GPUs 0 and 1 with warmup (config only: deploy reads config.pbtxt, never the plan)."""
    model = tmp_path / "gpu_repo" / "plan"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(PLAN_CONFIG)
    return model.parent


def spec_for(repo: Path, source: RepositoryLocation | None = None, **kwargs) -> DeploySpec:
    profile = read_profile(repo)
    return DeploySpec("triton", source or RepositoryLocation(str(repo)), profile, default_image(profile), **kwargs)


# --- values come from the repository ---------------------------------------------------------------

def test_profile_reads_gpu_need_and_startup_from_config(cpu_repo, gpu_repo):
    cpu, gpu = read_profile(cpu_repo), read_profile(gpu_repo)
    assert not cpu.needs_gpu and cpu.gpus == 0
    assert gpu.needs_gpu and gpu.gpus == 2 and gpu.gpu_reasons() == ["plan (tensorrt_plan)"]
    b = gpu.budget
    assert gpu.startup_seconds == b.base_s + b.per_model_s + b.engine_s + b.warmup_s
    assert cpu.startup_seconds == b.base_s + b.per_model_s


def test_kind_gpu_instance_group_needs_a_gpu(tmp_path):
    model = write_identity_model(tmp_path / "repo", "identity")
    config = model / "config.pbtxt"
    assert "KIND_CPU" in config.read_text()
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    profile = read_profile(tmp_path / "repo")
    assert profile.needs_gpu and profile.gpus == 1


def test_compose_cpu_repository(cpu_repo, tmp_path):
    result = deploy(spec_for(cpu_repo), "compose", tmp_path / "out")
    assert [(p.name, v) for p, v in result.validated] == [("compose.yaml", "compose")]
    (service,) = load(tmp_path / "out" / "compose.yaml")[0]["services"].values()
    assert "deploy" not in service                      # no GPU reservation
    assert service["image"] == "tritongen-serving:24.10"  # python backend -> docker/Dockerfile's image
    assert service["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
    assert service["shm_size"] == "1g"
    assert "/v2/health/ready" in service["healthcheck"]["test"][-1]
    assert service["volumes"] == [f"{cpu_repo.resolve()}:/models:ro"]


def test_compose_gpu_repository(gpu_repo, tmp_path):
    spec = spec_for(gpu_repo)
    deploy(spec, "compose", tmp_path / "out")
    (service,) = load(tmp_path / "out" / "compose.yaml")[0]["services"].values()
    assert service["image"] == TRITON_IMAGE
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}
    assert service["healthcheck"]["start_period"] == f"{spec.profile.startup_seconds}s"


def test_kubernetes_s3_repository(cpu_repo, tmp_path):
    source = RepositoryLocation("s3://models/prod", region="eu-west-1")
    result = deploy(spec_for(cpu_repo, source, model_control_mode="explicit"), "kubernetes", tmp_path / "k8s")
    assert {v for _, v in result.validated} == {"kubernetes", "servicemonitor", "adapter-rules", "kustomization"}
    kinds = by_kind(tmp_path / "k8s")
    (deployment,) = kinds["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--model-repository=s3://models/prod" in container["args"]
    assert "--model-control-mode=explicit" in container["args"] and "--load-model=identity" in container["args"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"AWS_ACCESS_KEY_ID": "tritongen-s3", "AWS_SECRET_ACCESS_KEY": "tritongen-s3"}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    assert services["triton-headless"]["spec"]["clusterIP"] == "None"
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = load(tmp_path / "k8s" / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    assert kinds["PodDisruptionBudget"] and kinds["ServiceMonitor"]
    (kustomization,) = kinds["Kustomization"]
    assert sorted(kustomization["resources"]) == sorted(
        ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "servicemonitor.yaml"])


def test_kubernetes_gpu_repository_on_a_pvc(gpu_repo, cpu_repo, tmp_path):
    gpu = spec_for(gpu_repo, RepositoryLocation(str(gpu_repo), pvc="models"))
    deploy(gpu, "kubernetes", tmp_path / "gpu")
    deploy(spec_for(cpu_repo, RepositoryLocation(str(cpu_repo), pvc="models")), "kubernetes", tmp_path / "cpu")
    (gpu_dep,), (cpu_dep,) = by_kind(tmp_path / "gpu")["Deployment"], by_kind(tmp_path / "cpu")["Deployment"]
    gpu_pod, cpu_pod = gpu_dep["spec"]["template"]["spec"], cpu_dep["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in gpu_pod["volumes"]
    gpu_start = gpu_pod["containers"][0]["startupProbe"]
    cpu_start = cpu_pod["containers"][0]["startupProbe"]
    assert gpu_start["periodSeconds"] * gpu_start["failureThreshold"] >= gpu.profile.startup_seconds
    assert gpu_start["failureThreshold"] > cpu_start["failureThreshold"]   # TensorRT + warmup take longer


@needs_kserve
def test_kserve_inferenceservice(gpu_repo, tmp_path):
    spec = spec_for(gpu_repo, RepositoryLocation("s3://models/prod"), service_account="s3-reader")
    result = deploy(spec, "kserve", tmp_path / "ks")
    assert [v for _, v in result.validated] == ["inferenceservice", "kustomization"]
    (isvc,) = by_kind(tmp_path / "ks")["InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/prod" and model["runtimeVersion"] == "24.10-py3"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2"


# --- the validators reject broken files (so the tests above can fail) -----------------------------

def mutate(path: Path, change) -> Path:
    docs = load(path)
    change(docs[0])
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_kubernetes_validator_rejects_a_string_for_replicas(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo, RepositoryLocation(str(cpu_repo), pvc="models")), "kubernetes", tmp_path / "k8s")
    path = mutate(tmp_path / "k8s" / "deployment.yaml", lambda d: d["spec"].update(replicas="two"))
    with pytest.raises(DeployError, match=r"deployment.yaml: Deployment rejected by kubernetes-validate .* at spec.replicas"):
        validate(path, "kubernetes")


def test_kubernetes_validator_rejects_unknown_fields(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo, RepositoryLocation(str(cpu_repo), pvc="models")), "kubernetes", tmp_path / "k8s")
    path = mutate(tmp_path / "k8s" / "hpa.yaml", lambda d: d["spec"].update(targetQueue=5))
    with pytest.raises(DeployError, match="HorizontalPodAutoscaler rejected"):
        validate(path, "kubernetes")


def test_compose_validator_rejects_a_bad_port_list(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo), "compose", tmp_path / "c")
    path = mutate(tmp_path / "c" / "compose.yaml", lambda d: d["services"]["triton"].update(ports="8000"))
    with pytest.raises(DeployError, match="rejected by the compose schema at services.triton.ports"):
        validate(path, "compose")


def test_servicemonitor_validator_rejects_an_int_port(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo, RepositoryLocation(str(cpu_repo), pvc="models")), "kubernetes", tmp_path / "k8s")
    path = mutate(tmp_path / "k8s" / "servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(port=8002))
    with pytest.raises(DeployError, match="ServiceMonitor rejected at spec.endpoints.0.port"):
        validate(path, "servicemonitor")


def test_kustomization_validator_rejects_a_missing_resource(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo, RepositoryLocation(str(cpu_repo), pvc="models")), "kubernetes", tmp_path / "k8s")
    (tmp_path / "k8s" / "pdb.yaml").unlink()
    with pytest.raises(DeployError, match="resources not found beside it: pdb.yaml"):
        validate(tmp_path / "k8s" / "kustomization.yaml", "kustomization")


@needs_kserve
def test_kserve_validator_rejects_a_string_for_min_replicas(cpu_repo, tmp_path):
    deploy(spec_for(cpu_repo, RepositoryLocation("s3://m/r")), "kserve", tmp_path / "ks")
    path = mutate(tmp_path / "ks" / "inferenceservice.yaml", lambda d: d["spec"]["predictor"].update(minReplicas="2"))
    with pytest.raises(DeployError, match=r"spec.predictor.minReplicas: expected int"):
        validate(path, "inferenceservice")
    mutate(path, lambda d: d["spec"]["predictor"].update(minReplicas=2, modelFormat={"name": "triton"}))
    with pytest.raises(DeployError, match=r"predictor.modelFormat: unknown field"):
        validate(path, "inferenceservice")


def test_hadolint_accepts_the_project_dockerfile_and_rejects_a_bad_one(tmp_path):
    validate(ROOT / "docker" / "Dockerfile", "dockerfile")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\n")
    with pytest.raises(DeployError, match="hadolint rejects"):
        validate(bad, "dockerfile")


# --- capacity planning --------------------------------------------------------------------------

def test_capacity_arithmetic():
    plan = CapacityPlan(target_rps=500, replica_capacity=120, latency_budget_ms=50)
    assert plan.replicas == 6                     # ceil(500 / (120 x 0.7) = 5.95)
    assert plan.max_replicas == 12 and plan.queue_target_us == 10_000
    assert CapacityPlan(168, 120, 50).replicas == 2  # exactly 2 x 84: no spurious third replica
    assert CapacityPlan(1, 120, 50).replicas == 1
    assert "replicas: ceil(500 / 84) = 6" in plan.explain()
    scaling = Scaling.from_plan(plan)
    assert (scaling.replicas, scaling.max_replicas, scaling.queue_target_us) == (6, 12, 10_000)
    with pytest.raises(DeployError, match="--utilisation"):
        CapacityPlan(500, 120, 50, utilisation=1.5)


def test_cli_capacity_planning_sizes_the_hpa(cpu_repo, tmp_path):
    proc = run_cli("deploy", "s3://models/prod", "--repository-dir", cpu_repo, "--target", "kubernetes",
                   "-o", tmp_path / "k8s", "--target-rps", "500", "--latency-budget", "50", "--replica-capacity", "120")
    assert "replicas: ceil(500 / 84) = 6  (HPA minReplicas)" in proc.stdout
    assert "(valid: kubernetes)" in proc.stdout
    (hpa,) = by_kind(tmp_path / "k8s")["HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (6, 12)
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "10000"
    (deployment,) = by_kind(tmp_path / "k8s")["Deployment"]
    assert deployment["spec"]["replicas"] == 6


def test_cli_measures_the_replica_capacity_with_perf(tmp_path):
    """--capacity-model: one served replica is measured with tritongen perf (binary search on p99
    within the budget) and the plan uses what it sustained."""
    import re

    repo = tmp_path / "repo"
    write_identity_model(repo, "identity")
    served = start_serve_cli(repo, tmp_path)
    try:
        proc = run_cli("deploy", repo, "--target", "compose", "-o", tmp_path / "compose", "--target-rps", "100000",
                       "--latency-budget", "200", "--capacity-model", "identity", "--capacity-url", served.http_url,
                       "--capacity-max-concurrency", "4", "--capacity-interval", "500")
        measured = re.search(r"measured: identity at \S+: ([0-9.]+) infer/s at concurrency (\d) with p99 ([0-9.]+) ms",
                             proc.stdout)
        assert measured, proc.stdout
        rps, p99 = float(measured.group(1)), float(measured.group(3))
        assert rps > 0 and p99 <= 200 and 1 <= int(measured.group(2)) <= 4
        assert f"capacity: {rps:g} rps/replica" in proc.stdout  # the plan uses what was measured
        proc = run_cli("deploy", repo, "--target", "compose", "-o", tmp_path / "c2", "--target-rps", "10",
                       "--latency-budget", "0.001", "--capacity-model", "identity", "--capacity-url", served.http_url,
                       "--capacity-max-concurrency", "2", "--capacity-interval", "500", check=False)
        assert proc.returncode == 1 and "keeps no concurrency within the 0.001 ms p99 budget" in proc.stderr
    finally:
        stop_serve_cli(served)

# --- one-line errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["REPO", "--target", "swarm"], "error: unknown deploy target 'swarm'; choose one of: compose, kubernetes, kserve"),
    (["MISSING", "--target", "compose"], "error: model repository MISSING does not exist (or is not a directory)"),
    (["REPO", "--target", "kubernetes"], "error: --target kubernetes reads the repository from a cluster"),
    (["REPO", "--target", "compose", "--target-rps", "10"], "error: capacity planning needs all of"),
])
def test_cli_errors_are_one_line(cpu_repo, tmp_path, args, message):
    args = [str(cpu_repo) if a == "REPO" else str(tmp_path / "nope") if a == "MISSING" else a for a in args]
    message = message.replace("MISSING", str(tmp_path / "nope"))
    proc = run_cli("deploy", *args, "-o", tmp_path / "out", check=False, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


# --- a repository published to S3 (a moto S3 server on loopback: real HTTP, fake credentials) -----

@pytest.fixture
def s3_endpoint(monkeypatch):
    boto3 = pytest.importorskip("boto3", reason="reading s3:// repositories needs boto3 (extra s3)")
    moto_server = pytest.importorskip("moto.server", reason="the S3 test server is moto's (extra test)")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="models")
    yield f"127.0.0.1:{port}"
    server.stop()


def test_cli_deploys_the_published_version_read_from_the_store(s3_endpoint, gpu_repo, cpu_repo, tmp_path):
    """`tritongen publish` then `deploy`: the manifests serve the immutable version CURRENT names
    (not the moving prefix), and the GPU need is read from the configs in the store."""
    from tritongen.storage import publish

    for repo, prefix, gpus in ((gpu_repo, "gpu", "2"), (cpu_repo, "cpu", None)):
        uri = f"s3://{s3_endpoint}/models/{prefix}"
        published = publish(repo, uri)
        run_cli("deploy", uri, "--target", "kubernetes", "-o", tmp_path / prefix)
        (deployment,) = by_kind(tmp_path / prefix)["Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert f"--model-repository={published.triton_uri}" in container["args"]
        assert f"/versions/{published.version}" in published.triton_uri
        assert container["resources"]["limits"].get("nvidia.com/gpu") == gpus
        run_cli("deploy", uri, "--target", "kserve", "-o", tmp_path / f"{prefix}-kserve")
        (service,) = by_kind(tmp_path / f"{prefix}-kserve")["InferenceService"]
        assert service["spec"]["predictor"]["model"]["storageUri"] == f"s3://models/{prefix}/versions/{published.version}"
    proc = run_cli("deploy", f"s3://{s3_endpoint}/models/empty", "--target", "kubernetes", "-o", tmp_path / "e",
                   check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: nothing published at s3://{s3_endpoint}/models/empty")
