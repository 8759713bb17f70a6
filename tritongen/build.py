"""The build pipeline: intake -> (quantize -> INT8 target) -> convert -> emit, one typed artifact per stage.

    ModelSpec --(cut_nms)--> ModelSpec --paddle_to_onnx--> OnnxModel --to_int8--> Int8Artifact
              --convert_for_runtime--> RuntimeArtifact --plan_models--> [ModelDir] --write_repository--> Repository
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .convert import OnnxModel, paddle_to_onnx
from .convert.onnx import DEFAULT_OPSET
from .convert.runtime import convert_for_runtime
from .emit import Repository, check_name, get_backend, plan_models, write_repository
from .emit.backends import RuntimeOptions
from .errors import TritongenError
from .intake import ModelSpec, load_model
from .quantize.config import QuantizeConfig


@dataclass
class BuildResult:
    spec: ModelSpec  # the model the runtime runs (the INT8 export with --int8)
    onnx: OnnxModel | None  # the FP32 ONNX conversion
    repository: Repository
    int8: "Int8Artifact | None" = None  # noqa: F821  (convert.int8, imported only for --int8)
    notes: list[str] = field(default_factory=list)  # what must happen before Triton can serve it (e.g. build a plan)


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
    int8: QuantizeConfig | None = None,
    fp16: bool = False,
    step: Callable[[str], None] = lambda message: None,
    trt_accelerator: str | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> BuildResult:
    """Build a Triton repository for ``source`` (export directory or zoo name) into ``output``."""
    runtime_backend = get_backend(backend)
    output = Path(output)
    if fp16 and not runtime_backend.accepts_fp16:
        raise TritongenError(f"--fp16 applies to the tensorrt backend, not {backend}")
    step(f"reading {source}")
    spec = load_model(source, name=name, labels=labels, sha256=sha256, score_threshold=score_threshold,
                      max_detections=max_detections)
    check_name(spec.name)
    if int8 is not None and spec.is_quantized:
        raise TritongenError(f"{spec.source_dir} is already quantized; build it without --int8")
    with tempfile.TemporaryDirectory(prefix="tritongen-build-") as tmp:
        work = Path(tmp)
        if spec.nms_in_graph and not runtime_backend.runs_nms_graphs:
            from .convert.nms import cut_nms

            step(f"cutting multiclass_nms3 off {spec.model_file.name}: {backend} batches the network, "
                 "NMS runs batched in the postprocess model with the op's settings")
            spec = cut_nms(spec, work / "nms_cut")
        onnx = None
        if runtime_backend.needs_onnx:
            step(f"converting {spec.model_file.name} to ONNX (opset {opset}) and checking it against Paddle")
            onnx = paddle_to_onnx(spec, work / "model.onnx", opset=opset)
        build_info: dict[str, object] = {"onnx": {"opset": onnx.opset, "max_abs_diff_vs_paddle": onnx.validation}} if onnx else {}
        runtime_spec, runtime_onnx, artifact = spec, onnx.path if onnx else None, None
        if int8 is not None:
            from .convert.int8 import get_int8_target, to_int8

            target = get_int8_target(runtime_backend.int8_target)
            artifact = to_int8(spec, int8, [target], work, fp32_onnx=runtime_onnx, step=step).artifacts[target.name]
            runtime_spec, runtime_onnx = artifact.spec, artifact.onnx
            build_info["int8"] = artifact.to_dict()
        options = RuntimeOptions(threads=threads, max_batch_size=max_batch_size, int8=int8 is not None, fp16=fp16,
                                 trt_accelerator=trt_accelerator)
        runtime = convert_for_runtime(
            runtime_spec, runtime_onnx, runtime_backend.onnx_passes(options), max_batch_size=max_batch_size,
            tensorrt_plan=runtime_backend.builds_tensorrt_plan, fp16=fp16, int8=int8 is not None,
        )
        step(f"writing {backend} repository {spec.name!r} into {output}")
        models = plan_models(runtime_spec, backend, spec.name, runtime, max_batch_size=max_batch_size,
                             instances=instances, min_image_side=min_image_side, build_info=build_info, options=options)
        write_repository(models, output, force=force)
    notes = [note for model in models for note in model.notes]
    for note in notes:
        step(note)
    repository = Repository(
        path=output, ensemble=spec.name, models=[m.name for m in models], backend=backend,
        served_locally=runtime_backend.served_locally,
    )
    return BuildResult(spec=runtime_spec, onnx=onnx, repository=repository, int8=artifact, notes=notes)
