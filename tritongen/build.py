"""The build pipeline: intake -> convert -> emit, one typed artifact per stage."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .convert import OnnxModel, paddle_to_onnx
from .convert.onnx import DEFAULT_OPSET
from .emit import Repository, check_name, get_backend, plan_models, write_repository
from .emit.backends import RuntimeOptions
from .intake import ModelSpec, load_model


@dataclass
class BuildResult:
    spec: ModelSpec
    onnx: OnnxModel | None
    repository: Repository


def build(
    source: str | Path,
    output: str | Path,
    backend: str = "python-onnxruntime",
    name: str | None = None,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    max_batch_size: int = 8,
    instances: int = 1,
    threads: int = 1,
    labels: str | Path | None = None,
    min_image_side: int | None = None,
    sha256: str | None = None,
    step: Callable[[str], None] = lambda message: None,
) -> BuildResult:
    """Build a Triton repository for ``source`` (export directory or zoo name) into ``output``."""
    runtime_backend = get_backend(backend)
    output = Path(output)
    step(f"reading {source}")
    spec = load_model(source, name=name, labels=labels, sha256=sha256)
    check_name(spec.name)
    with tempfile.TemporaryDirectory(prefix="tritongen-build-") as work:
        onnx = None
        if runtime_backend.needs_onnx:
            step(f"converting {spec.model_file.name} to ONNX (opset {opset}) and checking it against Paddle")
            onnx = paddle_to_onnx(spec, Path(work) / "model.onnx", opset=opset)
        step(f"writing {backend} repository {spec.name!r} into {output}")
        build_info = {"onnx": {"opset": onnx.opset, "max_abs_diff_vs_paddle": onnx.validation}} if onnx else {}
        models = plan_models(
            spec, backend, spec.name, onnx.path if onnx else None, max_batch_size=max_batch_size,
            instances=instances, min_image_side=min_image_side, build_info=build_info,
            options=RuntimeOptions(threads=threads),
        )
        write_repository(models, output, force=force)
    repository = Repository(
        path=output, ensemble=spec.name, models=[m.name for m in models], backend=backend,
        served_locally=runtime_backend.served_locally,
    )
    return BuildResult(spec=spec, onnx=onnx, repository=repository)
