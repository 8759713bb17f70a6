"""The build pipeline: intake -> (quantize) -> convert -> emit, one typed artifact per stage."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .convert import OnnxModel, paddle_to_onnx
from .convert.onnx import DEFAULT_OPSET
from .emit import Repository, check_name, get_backend, plan_models, write_repository
from .emit.backends import RuntimeOptions
from .errors import TritongenError
from .intake import ModelSpec, load_model


@dataclass
class Int8Options:
    """How ``--int8`` quantizes: the ``tritongen quantize`` settings plus the fidelity gate."""

    calib_dir: Path
    method: str = "ptq"
    algo: str = "hist"
    batch_size: int = 4
    batch_nums: int | None = None
    skip_tensors: Sequence[str] = ()
    act_config: Path | None = None
    train_iters: int | None = None
    max_drop: float | None = None
    recipes: list[str] | None = None  # ONNX Runtime INT8 recipes to try (default: all)


@dataclass
class BuildResult:
    spec: ModelSpec  # the model the runtime runs (the INT8 export with --int8)
    onnx: OnnxModel | None  # the FP32 ONNX conversion
    repository: Repository
    int8: dict[str, Any] = field(default_factory=dict)  # quantization + per-target INT8 report
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
    int8: Int8Options | None = None,
    fp16: bool = False,
    step: Callable[[str], None] = lambda message: None,
    trt_accelerator: str | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> BuildResult:
    """Build a Triton repository for ``source`` (export directory or zoo name) into ``output``."""
    runtime_backend = get_backend(backend)
    output = Path(output)
    step(f"reading {source}")
    spec = load_model(source, name=name, labels=labels, sha256=sha256, score_threshold=score_threshold,
                      max_detections=max_detections)
    check_name(spec.name)
    if int8 is not None and spec.is_quantized:
        raise TritongenError(f"{spec.source_dir} is already quantized; build it without --int8")
    if fp16 and runtime_backend.onnx_target != "tensorrt":
        raise TritongenError(f"--fp16 applies to the tensorrt backend, not {backend}")
    with tempfile.TemporaryDirectory(prefix="tritongen-build-") as tmp:
        work = Path(tmp)
        if spec.postprocess.get("nms_in_graph") and not runtime_backend.runs_nms_graphs:
            from .convert.nms import cut_nms

            step(f"cutting multiclass_nms3 off {spec.model_file.name}: {backend} batches the network, "
                 "NMS runs batched in the postprocess model with the op's settings")
            spec = cut_nms(spec, work / "nms_cut")
        onnx = None
        if runtime_backend.needs_onnx:
            step(f"converting {spec.model_file.name} to ONNX (opset {opset}) and checking it against Paddle")
            onnx = paddle_to_onnx(spec, work / "model.onnx", opset=opset)
        build_info: dict[str, Any] = {"onnx": {"opset": onnx.opset, "max_abs_diff_vs_paddle": onnx.validation}} if onnx else {}
        runtime_spec, runtime_onnx, int8_report = spec, onnx.path if onnx else None, {}
        if int8 is not None:
            runtime_spec, runtime_onnx, int8_report = _int8(spec, onnx, runtime_backend.onnx_target, int8, fp16, work, step)
            build_info["int8"] = int8_report
        step(f"writing {backend} repository {spec.name!r} into {output}")
        models = plan_models(
            runtime_spec, backend, spec.name, runtime_onnx, max_batch_size=max_batch_size,
            instances=instances, min_image_side=min_image_side, build_info=build_info,
            options=RuntimeOptions(threads=threads, int8=int8 is not None, fp16=fp16, trt_accelerator=trt_accelerator),
        )
        write_repository(models, output, force=force)
    notes = [note for model in models for note in model.notes]
    for note in notes:
        step(note)
    repository = Repository(
        path=output, ensemble=spec.name, models=[m.name for m in models], backend=backend,
        served_locally=runtime_backend.served_locally,
    )
    return BuildResult(spec=runtime_spec, onnx=onnx, repository=repository, int8=int8_report, notes=notes)


def _int8(
    spec: ModelSpec, onnx: OnnxModel | None, target: str | None, opts: Int8Options, fp16: bool, work: Path,
    step: Callable[[str], None],
) -> tuple[ModelSpec, Path | None, dict[str, Any]]:
    """Quantize, then prepare the INT8 artifact the backend runs; gate on held-out fidelity."""
    from .quantize import quantize

    quantized = quantize(
        spec, opts.calib_dir, work / "int8_export", method=opts.method, algo=opts.algo, batch_size=opts.batch_size,
        batch_nums=opts.batch_nums, skip_tensors=opts.skip_tensors, act_config=opts.act_config,
        train_iters=opts.train_iters, step=step,
    )
    report: dict[str, Any] = {"quantization": quantized.settings, "paddle_fidelity": quantized.fidelity.to_dict()}
    step(f"Paddle INT8 vs FP32: {quantized.fidelity.summary()}")
    if target is None:  # Paddle Inference runs the quantized program itself (oneDNN INT8)
        quantized.fidelity.check(opts.max_drop)
        return quantized.spec, None, report
    assert onnx is not None
    if target == "onnxruntime":
        from .convert.int8 import int8_for_onnxruntime

        choice = int8_for_onnxruntime(spec, quantized.spec, onnx.path, quantized.data, work, recipes=opts.recipes, step=step)
        report["onnxruntime"] = choice.to_dict()
        for candidate in choice.candidates:
            step(f"  {candidate.recipe}: {candidate.fidelity.summary()}; {candidate.fusion}; {candidate.latency}")
        step(f"chose {choice.chosen.recipe}: {choice.speedup:.2f}x FP32 speed ({choice.fp32_latency.median_ms:.1f} ms FP32)")
        choice.chosen.fidelity.check(opts.max_drop)
        return quantized.spec, choice.chosen.path, report
    if target == "tensorrt":
        from .convert.int8 import int8_for_tensorrt

        path, trt_report = int8_for_tensorrt(quantized.spec, work)
        report["tensorrt"] = trt_report
        quantized.fidelity.check(opts.max_drop)
        return quantized.spec, path, report
    raise TritongenError(f"no INT8 conversion for target {target!r}")
