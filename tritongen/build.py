"""The build pipeline: intake -> (quantize -> INT8 target) -> convert -> emit, one typed artifact per stage.

    ModelSpec --(cut_nms)--> ModelSpec --paddle_to_onnx--> OnnxModel --to_int8--> Int8Artifact
              --convert_for_runtime--> RuntimeArtifact --plan_models--> [ModelDir] --write_repository--> Repository
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .convert import OnnxModel, paddle_to_onnx
from .convert.onnx import DEFAULT_OPSET
from .convert.runtime import RuntimeArtifact, convert_for_runtime
from .emit import Repository, check_name, check_output, get_backend, plan_models, remove_residue, write_repository
from .emit.backends import Backend, RuntimeOptions
from .emit.repository import InstanceCounts, Layout, check_layout
from .errors import EmitError, TritongenError
from .intake import ModelSpec, load_model, zoo
from .intake.spec import QuantFormat
from .quantize.config import QuantizeConfig
from .residue import owned_temp_dir

DEFAULT_BACKEND = "python-onnxruntime"
FP16_BACKEND = "tensorrt"  # the one backend where --fp16 applies


@dataclass
class BuildResult:
    spec: ModelSpec  # the model the runtime runs (the INT8 export with --int8)
    onnx: OnnxModel | None  # the FP32 ONNX conversion
    repository: Repository
    int8: "Int8Artifact | None" = None  # noqa: F821  (convert.int8, imported only for --int8)
    notes: list[str] = field(default_factory=list)  # what must happen before Triton can serve it (e.g. build a plan)
    next_command: str | None = None  # the one command to run before Triton can load the repository


def build(
    source: str | Path,
    output: str | Path,
    backend: str | None = None,
    name: str | None = None,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    max_batch_size: int = 8,
    instances: InstanceCounts | int | str | None = None,
    threads: int | None = None,
    labels: str | Path | None = None,
    min_image_side: int | None = None,
    max_image_pixels: int | None = None,
    sha256: str | None = None,
    int8: QuantizeConfig | None = None,
    published_int8: bool = False,
    fp16: bool = False,
    step: Callable[[str], None] = lambda message: None,
    trt_accelerator: str | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    layout: Layout | str | None = None,
) -> BuildResult:
    """Build a Triton repository for ``source`` (export directory or zoo name) into ``output``.

    ``int8`` quantizes the FP32 model; ``published_int8`` takes the INT8 model the zoo publishes
    for a zoo name (an export directory must already be quantized). A model that arrives
    quantized builds for every backend (:func:`convert.int8.adopt_int8`). ``backend`` None:
    tensorrt with ``fp16`` (the only backend where FP16 applies), else python-onnxruntime.

    ``layout``: ``ensemble`` or ``fused`` (:class:`emit.repository.Layout`; None:
    ``default_layout(backend)``). ``instances``: per-step model instances (:class:`InstanceCounts`: a
    number for every step, ``"preprocess=2,runtime=1"``, or None for this machine's defaults: with the
    ensemble layout and a network on this CPU, split by each step's cost measured here);
    ``threads``: CPU threads per network instance (None: derived from the instances)."""
    if backend is None:
        backend = FP16_BACKEND if fp16 else DEFAULT_BACKEND
        if fp16:
            step(f"--fp16: building for the {FP16_BACKEND} backend, the one where FP16 applies (--backend chooses another)")
    runtime_backend = get_backend(backend)
    layout = check_layout(layout, backend)
    measure_steps = instances is None and _measures_step_costs(layout, runtime_backend, trt_accelerator)
    instances = InstanceCounts.parse(instances, layout)
    requested_threads = threads
    if threads is None:
        threads = instances.default_threads()
    output = Path(output)
    check_output(output)  # before the model is read or converted: a bad path or name fails in a second
    if name is not None:
        check_name(name, output)
    remove_residue(output)  # staging that builds killed in this repository left
    if fp16 and not runtime_backend.accepts_fp16:
        raise TritongenError(f"--fp16 applies to the {FP16_BACKEND} backend, not {backend}")
    if int8 is not None and published_int8:
        raise TritongenError("give either a quantization config (--calib-dir) or the zoo's published INT8 model, not both")
    if published_int8:
        source = _published_int8(source, step)
    step(f"reading {source}")
    spec = load_model(source, name=name, labels=labels, sha256=sha256, score_threshold=score_threshold,
                      max_detections=max_detections)
    check_name(spec.name, output)
    if not force and (output / spec.name).exists():  # before the conversion, not after it
        raise EmitError(f"{output} already holds {spec.name}; pass --force to replace it")
    if int8 is not None and spec.is_quantized:
        raise TritongenError(f"{spec.source_dir} is already quantized; build it without --calib-dir")
    if published_int8 and not spec.is_quantized:
        raise TritongenError(f"{source} is an FP32 export: --int8 needs --calib-dir DIR (images to calibrate on) "
                             "to quantize it")
    fp32 = _fp32_original(source, spec, step, score_threshold=score_threshold, max_detections=max_detections)
    notes: list[str] = []
    if isinstance(fp32, str):
        notes.append(fp32)
        fp32 = None
    with owned_temp_dir("tritongen-build-") as tmp:  # pid-named: the next build removes it after a SIGKILL
        work = Path(tmp)
        arrived_as = spec.quant_format
        if spec.quant_format is QuantFormat.LEGACY:
            from .convert.legacy_quant import legacy_to_qdq

            step(f"rewriting {spec.model_file.name}'s fake_quantize / fake_dequantize ops as quantize_linear / "
                 "dequantize_linear pairs (the format paddle2onnx and oneDNN take)")
            spec = legacy_to_qdq(spec, work / "qdq")
        if spec.nms_in_graph and not runtime_backend.runs_nms_graphs:
            from .convert.nms import cut_nms

            step(f"cutting multiclass_nms3 off {spec.model_file.name}: {backend} batches the network, "
                 "NMS runs batched in the postprocess model with the op's settings")
            spec = cut_nms(spec, work / "nms_cut")
            if fp32 is not None:
                fp32 = cut_nms(fp32, work / "fp32_nms_cut")
        onnx = None
        if runtime_backend.needs_onnx and not spec.is_quantized:
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
        elif spec.is_quantized:
            from .convert.int8 import adopt_int8, get_int8_target

            artifact = adopt_int8(spec, get_int8_target(runtime_backend.int8_target), work, fp32=fp32, step=step,
                                  arrived_as=arrived_as)
            runtime_spec, runtime_onnx = artifact.spec, artifact.onnx
            build_info["int8"] = artifact.to_dict()
        runs_int8 = artifact is not None and artifact.int8_kernels
        options = RuntimeOptions(threads=threads, max_batch_size=max_batch_size, int8=runs_int8, fp16=fp16,
                                 trt_accelerator=trt_accelerator)
        runtime = convert_for_runtime(
            runtime_spec, runtime_onnx, runtime_backend.onnx_passes(options), max_batch_size=max_batch_size,
            tensorrt_plan=runtime_backend.builds_tensorrt_plan, fp16=fp16, int8=runs_int8,
        )
        if measure_steps:
            instances, options.threads, build_info["step_costs"] = _instances_from_step_costs(
                runtime_spec, runtime, runtime_backend, options, instances, requested_threads, step)
        step(f"writing {backend} repository {spec.name!r} ({layout.value} layout) into {output}")
        models = plan_models(runtime_spec, backend, spec.name, runtime, max_batch_size=max_batch_size,
                             instances=instances, min_image_side=min_image_side, max_image_pixels=max_image_pixels, build_info=build_info, options=options,
                             layout=layout)
        write_repository(models, output, force=force)
    notes += [note for model in models for note in model.notes]
    for note in notes:
        step(note)
    next_command = next((m.next_command.format(repository=shlex.quote(str(output.resolve())))
                         for m in models if m.next_command), None)
    repository = Repository(
        path=output, ensemble=spec.name, models=[m.name for m in models], backend=backend,
        served_locally=runtime_backend.served_locally, layout=layout,
    )
    return BuildResult(spec=runtime_spec, onnx=onnx, repository=repository, int8=artifact, notes=notes,
                       next_command=next_command)


STEP_COST_PHOTOS = 3  # photo-like images the ensemble's step costs are measured on
STEP_COST_PHOTO_HW = (480, 640)  # a typical camera frame (VGA); the costs depend on the image size


def _measures_step_costs(layout: Layout, backend: Backend, trt_accelerator: str | None) -> bool:
    """Whether the ensemble's default instances come from step costs measured here: the network
    runs on this machine's CPU, not on a GPU (a TensorRT plan, ONNX Runtime's TensorRT provider)."""
    return layout is Layout.ENSEMBLE and not backend.builds_tensorrt_plan and trt_accelerator is None


def _instances_from_step_costs(spec: ModelSpec, runtime: RuntimeArtifact, backend: Backend, options: RuntimeOptions,
                               instances: InstanceCounts, threads: int | None,
                               step: Callable[[str], None]) -> tuple[InstanceCounts, int, dict[str, object]]:
    """The ensemble's default instances (and threads, unless ``threads`` was given) split by what
    decode + preprocess, the network the repository runs (one thread) and postprocess cost here on
    photo-like camera frames; the cores-only ``instances`` when that cannot be measured. Also what
    ``tritongen_build.json`` records of it. ``tritongen tune`` refines the counts under real load."""
    import cv2

    from .convert.onnx import synthetic_photo
    from .measure import measure_step_costs, usable_cores
    from .processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner

    cores = usable_cores()
    try:
        if backend.needs_onnx:
            runner = OnnxRuntimeRunner(runtime.onnx, threads=1)
        else:  # the Paddle program, run as emit.backends.PythonPaddle serves it
            runner = PaddleInferenceRunner(spec.model_file, spec.params_file, threads=1, int8=options.int8,
                                           enable_mkldnn=options.int8 or spec.runtime_options.enable_mkldnn)
        photos = [cv2.imencode(".jpg", synthetic_photo(*STEP_COST_PHOTO_HW, seed=i))[1].tobytes()
                  for i in range(STEP_COST_PHOTOS)]
        costs = measure_step_costs(spec.pipeline_config(), runner, photos, kind="JPEG photos")
    except Exception as exc:  # noqa: BLE001  (advisory: a build never fails for want of a default)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        step(f"ensemble instances from the {cores} cores only: the step costs could not be measured ({reason})")
        return instances, instances.default_threads(cores) if threads is None else threads, {"not_measured": reason}
    measured = InstanceCounts.parse(None, instances.layout, cores=cores, costs=costs)
    threads = measured.default_threads(cores) if threads is None else threads
    step(f"ensemble instances from step costs measured on {costs.images} ({costs}; {cores} cores): "
         f"preprocess={measured['preprocess']}, runtime={measured['runtime']} x {threads} "
         f"thread{'s' if threads > 1 else ''}, postprocess={measured['postprocess']}")
    return measured, threads, {**costs.to_dict(), "cores": cores, "instances": measured.to_dict(), "threads": threads}


def _published_int8(source: str | Path, step: Callable[[str], None]) -> str | Path:
    """``--int8`` without calibration images: a zoo name becomes the zoo's published INT8 model;
    a directory is taken as it is (it must be quantized already)."""
    if Path(source).exists() or str(source) not in zoo.ZOO:
        return source
    entry = zoo.published_int8(str(source))
    if entry.name != source:
        step(f"--int8: using {entry.name}, the INT8 model FastDeploy publishes for {source} ({entry.archive_name}); "
             f"--calib-dir DIR quantizes {source} yourself instead")
    return entry.name


def _fp32_original(source: str | Path, spec: ModelSpec, step: Callable[[str], None],
                   **options) -> ModelSpec | str | None:
    """The FP32 model a zoo INT8 model was quantized from, for the INT8-vs-FP32 report; a note
    (str) when it cannot be had; None when there is none to look for."""
    entry = zoo.ZOO.get(str(source)) if not Path(source).exists() else None
    if not spec.is_quantized or entry is None or entry.fp32 is None:
        return None
    step(f"reading {entry.fp32}, the FP32 original of {entry.name}, to measure INT8 against it")
    try:
        return load_model(entry.fp32, **options)
    except TritongenError as exc:
        return f"INT8 vs FP32 not measured: the FP32 original {entry.fp32} is not available ({exc})"
