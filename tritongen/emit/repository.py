"""Write a Triton model repository: ensemble NAME = NAME_preprocess -> NAME_runtime -> NAME_postprocess.

Everything is rendered and proto-validated in memory first, written into a staging
directory inside the output, and only then renamed into place, so a failure leaves the
repository as it was.
"""
from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..convert.runtime import RuntimeArtifact
from ..errors import EmitError
from ..intake.spec import ModelSpec
from ..processing.pipeline import PIPELINE_FILE
from .backends import RuntimeOptions, get_backend
from .pbtxt import NUMPY_TO_TRITON, parse_config, render_config, template_path

PROCESSING_PACKAGE = "tritongen_processing"  # the name tritongen.processing gets inside a model
BUILD_INFO_FILE = "tritongen_build.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelDir:
    name: str
    config_text: str
    files: dict[str, Path | str] = field(default_factory=dict)  # path in the model dir -> source file or text
    config: Any = None  # parsed ModelConfig
    executable: set[str] = field(default_factory=set)  # paths in the model dir written with mode 0755
    notes: list[str] = field(default_factory=list)  # what the user must know about this model
    next_command: str | None = None  # what the user runs before Triton can load it ("{repository}" = its quoted path)


@dataclass
class Repository:
    path: Path
    ensemble: str
    models: list[str]
    backend: str
    served_locally: bool


def _tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    if dtype not in NUMPY_TO_TRITON:
        raise EmitError(f"tensor {name!r} has dtype {dtype}, which Triton configs cannot express")
    return {"name": name, "data_type": NUMPY_TO_TRITON[dtype], "dims": list(dims)}


def plan_models(
    spec: ModelSpec,
    backend_name: str,
    name: str,
    runtime: RuntimeArtifact | None,
    max_batch_size: int = 8,
    instances: int = 1,
    min_image_side: int | None = None,
    build_info: dict[str, Any] | None = None,
    options: RuntimeOptions | None = None,
) -> list[ModelDir]:
    """The four model directories, rendered and validated, nothing written yet."""
    backend = get_backend(backend_name)
    options = options or RuntimeOptions()
    options.max_batch_size = max_batch_size
    runtime = runtime or RuntimeArtifact(None)
    if backend.needs_onnx and runtime.onnx is None:
        raise EmitError(f"backend {backend_name} needs an ONNX model")
    if max_batch_size < 1:
        raise EmitError("max_batch_size must be >= 1")
    if options.trt_accelerator is not None and not backend.accepts_trt_accelerator:
        raise EmitError(f"the TensorRT accelerator option applies to --backend onnxruntime, not {backend_name}")
    pipeline = spec.pipeline_config(min_image_side)
    pipeline_json = pipeline.to_json()
    names = {step: f"{name}_{step}" for step in ("preprocess", "runtime", "postprocess")}
    options.model_name = names["runtime"]
    image = _tensor("IMAGE", "bytes", [1])
    declared = {t.name: t for t in spec.inputs}
    feeds = [
        _tensor(feed, declared[feed].dtype, spec.preprocessed_shape if source == "image" else list(declared[feed].shape[1:]))
        for feed, source in pipeline.feeds.items()
    ]
    raw_outputs = [_tensor(t.name, t.dtype, list(t.shape[1:])) for t in spec.outputs]
    side = [_tensor(s, "int32", [2]) for s in pipeline.side]  # ORIG_SIZE: (height, width)
    results = _task_outputs(spec)

    common = {"max_batch_size": max_batch_size, "parameters": {}, "platform": None, "backend": "python",
              "preferred_batch_sizes": [], "max_queue_delay_us": 0, "gpu_accelerators": []}
    python_files = {"1/" + PIPELINE_FILE: pipeline_json}
    models = [
        ModelDir(
            names["preprocess"],
            render_config("model/config.pbtxt.j2", name=names["preprocess"], inputs=[image], outputs=feeds + side,
                          instance_count=instances, instance_kind="KIND_CPU", dynamic_batching=False, **common),
            {"1/model.py": template_path("python/preprocess.py"), **python_files},
        ),
    ]
    files = backend.runtime(spec, runtime, options)
    runtime_ctx = {**common, "platform": files.platform, "backend": files.backend, "parameters": files.parameters,
                   "gpu_accelerators": files.gpu_accelerators}
    models.append(
        ModelDir(
            names["runtime"],
            render_config("model/config.pbtxt.j2", name=names["runtime"], inputs=feeds, outputs=raw_outputs,
                          instance_count=instances if files.instance_kind else 0, instance_kind=files.instance_kind,
                          dynamic_batching=True, **runtime_ctx),
            {**{f"1/{k}": v for k, v in files.files.items()}, **files.model_files},
            executable={f"1/{k}" for k in files.executable},
            notes=list(files.notes),
            next_command=files.next_command,
        )
    )
    models.append(
        ModelDir(
            names["postprocess"],
            render_config("model/config.pbtxt.j2", name=names["postprocess"], inputs=raw_outputs + side, outputs=results,
                          instance_count=1, instance_kind="KIND_CPU", dynamic_batching=False, **common),
            {"1/model.py": template_path("python/postprocess.py"), **python_files},
        )
    )
    # Ensemble-internal tensor names: what each step hands to the next.
    fed = {t["name"]: f"preprocessed/{t['name']}" for t in feeds}
    raw = {t["name"]: f"raw/{t['name']}" for t in raw_outputs}
    passed = {t["name"]: f"side/{t['name']}" for t in side}
    steps = [
        {"model": names["preprocess"], "inputs": {"IMAGE": "IMAGE"}, "outputs": {**fed, **passed}},
        {"model": names["runtime"], "inputs": fed, "outputs": raw},
        {"model": names["postprocess"], "inputs": {**raw, **passed}, "outputs": {t["name"]: t["name"] for t in results}},
    ]
    info = {"tritongen_version": __version__, "backend": backend_name, "family": spec.family, "task": spec.task,
            "source": str(spec.source_dir), "composing_models": list(names.values()), **(build_info or {})}
    models.append(
        ModelDir(
            name,
            render_config("ensemble/config.pbtxt.j2", name=name, max_batch_size=max_batch_size, inputs=[image],
                          outputs=results, steps=steps),
            {"1/.keep": "", BUILD_INFO_FILE: json.dumps(info, indent=2) + "\n"},
        )
    )
    for model in models:
        model.config = parse_config(model.config_text, model.name)
        if model.config.backend == "python":  # generated Python models import only their own copy
            model.files[f"1/{PROCESSING_PACKAGE}"] = _processing_package()
    return models


def _task_outputs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The ensemble's result tensors, as the task's own processing module declares them."""
    from ..processing.pipeline import task_module

    try:
        declared = task_module(spec.task).outputs(spec.pipeline_config())
    except ValueError as exc:
        raise EmitError(str(exc)) from None
    return [_tensor(name, dtype, dims) for name, dtype, dims in declared]


def _processing_package() -> Path:
    return Path(__file__).resolve().parents[1] / "processing"


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise EmitError(f"model name {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")


def write_repository(models: list[ModelDir], output: Path, force: bool = False) -> None:
    """Stage every model directory, then rename them into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    existing = [m.name for m in models if (output / m.name).exists()]
    if existing and not force:
        raise EmitError(f"{output} already holds {', '.join(existing)}; pass --force to replace them")
    staging = output / f".tritongen-staging-{uuid.uuid4().hex[:8]}"
    try:
        for model in models:
            root = staging / model.name
            root.mkdir(parents=True)
            (root / "config.pbtxt").write_text(model.config_text, encoding="utf-8")
            for rel, source in model.files.items():
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, Path):
                    if source.is_dir():
                        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                    else:
                        shutil.copyfile(source, dest)
                else:
                    dest.write_text(source, encoding="utf-8")
                if rel in model.executable:
                    dest.chmod(0o755)
        trash = staging / ".replaced"
        for model in models:
            target = output / model.name
            if target.exists():
                trash.mkdir(exist_ok=True)
                target.rename(trash / model.name)
            (staging / model.name).rename(target)
    except OSError as exc:
        raise EmitError(f"cannot write the repository at {output}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
