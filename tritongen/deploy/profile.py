"""What a model repository asks of its host, read from its ``config.pbtxt`` files: a GPU or
not, which models to load, and how long the server may take to become ready."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..emit.pbtxt import read_configs
from .errors import DeployError

# Platforms/backends that only run on a GPU; instance groups of KIND_GPU need one too.
GPU_PLATFORMS = frozenset({"tensorrt_plan"})
GPU_BACKENDS = frozenset({"tensorrt"})
# Execution accelerators that build a TensorRT engine while the model loads.
ENGINE_ACCELERATORS = frozenset({"tensorrt"})


@dataclass(frozen=True)
class StartupBudget:
    """Seconds the startupProbe allows, summed from what the repository loads."""
    base_s: int = 60          # server start and a small repository
    per_model_s: int = 10     # each model's load
    engine_s: int = 600       # a TensorRT plan (deserialise) or a TensorRT accelerator (build) per repository
    warmup_s: int = 120       # model_warmup samples run before the model is ready


@dataclass(frozen=True)
class ModelProfile:
    name: str
    runtime: str              # platform or backend, as config.pbtxt names it
    needs_gpu: bool
    gpus: int                 # GPUs the instance groups address (device ids 0..gpus-1)
    builds_engine: bool
    warmup: bool


@dataclass(frozen=True)
class RepositoryProfile:
    models: tuple[ModelProfile, ...]
    budget: StartupBudget = StartupBudget()

    @property
    def needs_gpu(self) -> bool:
        return any(m.needs_gpu for m in self.models)

    @property
    def gpus(self) -> int:
        return max((m.gpus for m in self.models if m.needs_gpu), default=0)

    @property
    def startup_seconds(self) -> int:
        b = self.budget
        return (b.base_s + b.per_model_s * len(self.models)
                + (b.engine_s if any(m.builds_engine for m in self.models) else 0)
                + (b.warmup_s if any(m.warmup for m in self.models) else 0))

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def gpu_reasons(self) -> list[str]:
        return [f"{m.name} ({m.runtime})" for m in self.models if m.needs_gpu]


def model_profile(name: str, config) -> ModelProfile:
    """One parsed ``model_config_pb2.ModelConfig``'s demands."""
    from tritonclient.grpc import model_config_pb2

    runtime = config.platform or config.backend
    gpu_groups = [g for g in config.instance_group if g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU]
    needs_gpu = config.platform in GPU_PLATFORMS or config.backend in GPU_BACKENDS or bool(gpu_groups)
    device_ids = [gpu for g in config.instance_group for gpu in g.gpus]
    accelerators = {a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator}
    return ModelProfile(
        name=name, runtime=runtime, needs_gpu=needs_gpu,
        gpus=(max(device_ids) + 1 if device_ids else 1) if needs_gpu else 0,
        builds_engine=config.platform in GPU_PLATFORMS or config.backend in GPU_BACKENDS
        or bool(accelerators & ENGINE_ACCELERATORS),
        warmup=len(config.model_warmup) > 0,
    )


def read_profile(directory: Path, budget: StartupBudget = StartupBudget()) -> RepositoryProfile:
    """The profile of the repository in local ``directory``; DeployError if it holds no model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DeployError(f"model repository {directory} does not exist (or is not a directory)")
    configs = read_configs(directory)
    if not configs:
        raise DeployError(f"{directory} holds no model (no NAME/config.pbtxt)")
    return RepositoryProfile(tuple(model_profile(n, c) for n, c in configs.items()), budget)


def read_published_profile(uri: str, budget: StartupBudget = StartupBudget()) -> tuple[RepositoryProfile, str]:
    """The profile of the repository published at ``uri`` (``tritongen publish``: the version its
    CURRENT names, configs read from the store) and that version's URI, which the manifests
    serve: immutable, so every replica — and every later rollout — gets the same models."""
    from ..storage import StorageError, resolve

    try:
        published = resolve(uri)
        configs = published.read_configs()
    except StorageError as exc:
        raise DeployError(str(exc)) from None
    if not configs:
        raise DeployError(f"{published.describe()} holds no model (no NAME/config.pbtxt)")
    return RepositoryProfile(tuple(model_profile(n, c) for n, c in configs.items()), budget), published.location
