"""Runtime backends a repository can use, in one registry (one class per backend)."""
from __future__ import annotations

import json
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import __version__
from ..errors import EmitError
from ..convert.runtime import RuntimeArtifact
from ..intake.spec import ModelSpec
from ..registry import Registry
from .pbtxt import render_config, template_path

BACKENDS: Registry[type["Backend"]] = Registry("backend")
register_backend = BACKENDS.register


def get_backend(name: str) -> "Backend":
    return BACKENDS.lookup(name, EmitError)()


@dataclass
class RuntimeOptions:
    """Settings of the runtime model that do not come from the model itself."""

    threads: int = 1
    max_batch_size: int = 8
    int8: bool = False  # the artifacts are quantized (Paddle QDQ program / INT8 ONNX)
    fp16: bool = False  # run what is not INT8 in FP16 where the backend can (TensorRT)
    # onnxruntime backend: ONNX Runtime's TensorRT execution provider with this precision_mode
    # (None = not used; "FP32" | "FP16" | "INT8")
    trt_accelerator: str | None = None
    model_name: str = ""  # name of the runtime model; set by plan_models


@dataclass
class RuntimeFiles:
    """What the runtime model's config and version directory need."""

    platform: str | None = None
    backend: str | None = None
    # file name in the version directory -> source path, or text to write
    files: dict[str, Path | str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    instance_kind: str | None = "KIND_CPU"  # None: let Triton choose (GPU when it has one)
    executable: set[str] = field(default_factory=set)  # version-directory files to mark executable
    model_files: dict[str, Path | str] = field(default_factory=dict)  # files next to config.pbtxt
    notes: list[str] = field(default_factory=list)  # what the user must know (printed by `build`)
    # the command the user runs next before Triton can load the model; "{repository}" = the repository's
    # path, shell-quoted
    next_command: str | None = None
    # optimization.execution_accelerators.gpu_execution_accelerator entries: {"name", "parameters"}
    gpu_accelerators: list[dict] = field(default_factory=list)


class Backend(ABC):
    name: ClassVar[str]
    needs_onnx: ClassVar[bool]
    # The CPU-only tritonserver from the nvidia-pytriton wheel hosts python models and
    # ensembles only; other platforms need the official container (docker/).
    served_locally: ClassVar[bool]
    description: ClassVar[str]
    # The INT8 target (convert.int8.INT8_TARGETS) whose artifact this backend's runtime serves.
    int8_target: ClassVar[str]
    # Whether --fp16 (run what is not INT8 in half precision) applies.
    accepts_fp16: ClassVar[bool] = False
    # Whether RuntimeOptions.trt_accelerator (ONNX Runtime's TensorRT execution provider) applies.
    accepts_trt_accelerator: ClassVar[bool] = False
    # Whether the runtime model can run a graph ending in multiclass_nms3 (the Python models
    # make its outputs batch-major); other backends get the graph with the op cut off.
    runs_nms_graphs: ClassVar[bool] = False
    # Whether the network runs in a Python model (processing.runners.Network), so the fused layout
    # (one Python model: decode, preprocess, network, postprocess) can serve it.
    runs_fused: ClassVar[bool] = False

    # Whether the convert stage builds a TensorRT plan for this backend (convert.runtime).
    builds_tensorrt_plan: ClassVar[bool] = False

    def onnx_passes(self, options: RuntimeOptions) -> tuple[str, ...]:
        """The graph passes (convert.passes names) the convert stage runs on the ONNX this backend ships."""
        return ()

    @abstractmethod
    def runtime(self, spec: ModelSpec, artifact: RuntimeArtifact, options: RuntimeOptions) -> RuntimeFiles:
        """Files and settings of the runtime model. ``spec`` is the (possibly quantized) Paddle
        model; ``artifact`` what the convert stage prepared (the ONNX after ``onnx_passes``, a plan)."""


def _runtime_json(runtime: str, files: list[str], **settings: object) -> str:
    return json.dumps({"runtime": runtime, "files": files, **settings}, indent=2) + "\n"


def _python_network(runtime_json: str, **files: Path) -> dict[str, Path | str]:
    """Version-directory files of a network run by Python (``processing.runners.Network`` reads
    runtime.json): the runtime model's model.py, which the fused layout replaces with its own."""
    return {"model.py": template_path("python/runtime.py"), **files, "runtime.json": runtime_json}


def _nms_outputs(spec: ModelSpec, one_image_per_run: bool) -> dict[str, object]:
    """runtime.json ``nms_outputs`` for a detector with multiclass_nms3 inside the graph: the
    runtime model (tritongen/templates/python/runtime.py) returns its rows + counts batch-major."""
    if not spec.nms_in_graph:
        return {}
    rows, counts = (t.name for t in spec.outputs)
    return {"nms_outputs": {"rows": rows, "counts": counts, "keep_top_k": spec.postprocess.graph_keep_top_k,
                            "one_image_per_run": one_image_per_run}}


def _refuse_nms_in_graph(spec: ModelSpec, backend: str) -> None:
    if spec.nms_in_graph:
        raise EmitError(
            f"--backend {backend} cannot serve {spec.name} as it is: its graph ends in multiclass_nms3, whose outputs "
            "are not batch-major (rows of all images + per-image counts) and whose ONNX form runs one image at a time. "
            "Cut the op off first (tritongen.convert.nms.cut_nms; `tritongen build` does) so NMS runs batched in "
            "the postprocess model"
        )


@register_backend
class OnnxRuntimePlatform(Backend):
    name = "onnxruntime"
    needs_onnx = True
    int8_target = "onnxruntime"
    served_locally = False
    description = "platform onnxruntime_onnx (Triton's ONNX Runtime backend, official container)"

    accepts_trt_accelerator = True

    def runtime(self, spec: ModelSpec, artifact: RuntimeArtifact, options: RuntimeOptions) -> RuntimeFiles:
        assert artifact.onnx is not None
        _refuse_nms_in_graph(spec, self.name)
        accelerators = []
        if options.trt_accelerator is not None:
            accelerators.append(ort_tensorrt_accelerator(options, artifact.onnx))
        return RuntimeFiles(
            platform="onnxruntime_onnx",
            files={"model.onnx": artifact.onnx},
            parameters={"intra_op_thread_count": str(options.threads)},
            instance_kind=None,
            gpu_accelerators=accelerators,
        )


TRT_PRECISION_MODES = ("FP32", "FP16", "INT8")
ORT_TRT_WORKSPACE_BYTES = 1 << 30
ORT_TRT_CACHE_PREFIX = "/tmp/tritongen_trt_cache_"  # + runtime model name


def ort_tensorrt_accelerator(options: RuntimeOptions, onnx_path: Path | None = None) -> dict:
    """The ``gpu_execution_accelerator`` entry that runs an ONNX model through ONNX Runtime's
    TensorRT execution provider (parameter names from Triton's onnxruntime_backend README).

    The engine cache lives in the container's /tmp (the repository is mounted read-only), in one
    directory per model: ONNX Runtime creates only the last path component.
    """
    mode = str(options.trt_accelerator).upper()
    if mode not in TRT_PRECISION_MODES:
        raise EmitError(f"TensorRT accelerator precision {options.trt_accelerator!r}: choose one of {', '.join(TRT_PRECISION_MODES)}")
    if mode == "INT8":
        if not options.int8:
            raise EmitError(
                "TensorRT accelerator precision INT8 needs a quantized (Q/DQ) ONNX model; without Q/DQ nodes ONNX Runtime's "
                "TensorRT provider asks for a calibration table. Build an INT8 model, or use FP16"
            )
        if onnx_path is not None:  # TensorRT's explicit quantization: symmetric int8 Q/DQ, no int32 DQ
            import onnx

            from ..convert.tensorrt import TensorRTError, check_precision

            try:
                check_precision(onnx.load(str(onnx_path)), fp16=False, int8=True)
            except TensorRTError as exc:
                raise EmitError(f"TensorRT accelerator precision INT8: {exc}") from None
    return {
        "name": "tensorrt",
        "parameters": {
            "precision_mode": mode,
            "max_workspace_size_bytes": str(ORT_TRT_WORKSPACE_BYTES),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{ORT_TRT_CACHE_PREFIX}{options.model_name or 'model'}",
        },
    }


@register_backend
class PythonOnnxRuntime(Backend):
    name = "python-onnxruntime"
    needs_onnx = True
    int8_target = "onnxruntime"
    served_locally = True
    runs_nms_graphs = True
    runs_fused = True
    description = "Python backend running ONNX Runtime (CPU)"

    def runtime(self, spec: ModelSpec, artifact: RuntimeArtifact, options: RuntimeOptions) -> RuntimeFiles:
        assert artifact.onnx is not None
        return RuntimeFiles(
            backend="python",
            files=_python_network(
                _runtime_json("onnxruntime", ["model.onnx"], threads=options.threads,
                              **_nms_outputs(spec, one_image_per_run=True)),
                **{"model.onnx": artifact.onnx},
            ),
        )


@register_backend
class PythonPaddle(Backend):
    name = "python-paddle"
    needs_onnx = False
    int8_target = "paddle-onednn"
    served_locally = True
    runs_nms_graphs = True
    runs_fused = True
    description = "Python backend running Paddle Inference (CPU)"

    def runtime(self, spec: ModelSpec, artifact: RuntimeArtifact, options: RuntimeOptions) -> RuntimeFiles:
        # Paddle runs quantized programs in INT8 on CPU only through oneDNN.
        mkldnn = options.int8 or spec.runtime_options.enable_mkldnn
        return RuntimeFiles(
            backend="python",
            files=_python_network(
                _runtime_json("paddle", ["inference.pdmodel", "inference.pdiparams"], threads=options.threads,
                              enable_mkldnn=mkldnn, int8=options.int8, **_nms_outputs(spec, one_image_per_run=False)),
                **{"inference.pdmodel": spec.model_file, "inference.pdiparams": spec.params_file},
            ),
        )


@register_backend
class TensorRTPlan(Backend):
    name = "tensorrt"
    needs_onnx = True
    int8_target = "tensorrt"
    accepts_fp16 = True
    builds_tensorrt_plan = True
    served_locally = False
    description = "platform tensorrt_plan (TensorRT 10 plan built on the serving GPU, official container)"

    def onnx_passes(self, options: RuntimeOptions) -> tuple[str, ...]:
        from ..convert.tensorrt import tensorrt_passes

        return tensorrt_passes(options.fp16)

    def runtime(self, spec: ModelSpec, artifact: RuntimeArtifact, options: RuntimeOptions) -> RuntimeFiles:
        from ..convert import tensorrt as trt_convert

        model = options.model_name or "runtime"
        _refuse_nms_in_graph(spec, self.name)
        trt, prepared = artifact.tensorrt, artifact.onnx
        assert trt is not None and prepared is not None, "the convert stage prepares tensorrt runtimes"
        if artifact.plan is not None:
            return RuntimeFiles(
                platform="tensorrt_plan", files={"model.plan": artifact.plan.path}, instance_kind=None,
                notes=[
                    f"{model}/1/model.plan was built here with TensorRT {artifact.plan.tensorrt_version}; it loads only "
                    "with that TensorRT version and on this GPU model (tritonserver 24.10 runs TensorRT "
                    f"{trt_convert.TRITON_TENSORRT_VERSION}). Otherwise rebuild the repository on the serving GPU."
                ],
            )
        chw, extra = trt.chw, trt.extra
        low, opt, high = trt.profile
        try:
            args = trt_convert.trtexec_command("@ONNX@", "@PLAN@", spec.image_input.name, chw, options.max_batch_size,
                                               extra_inputs=extra)
        except trt_convert.TensorRTError as exc:  # e.g. an extra input with an image-dependent shape
            raise EmitError(f"{model}: {exc}") from None
        precision = trt.precision
        script = render_config(
            "tensorrt/build_plan.sh.j2",
            model=model, version=__version__, image=trt_convert.TRITON_IMAGE,
            image_tag=trt_convert.TRITON_IMAGE.rsplit(":", 1)[1],
            tensorrt_version=trt_convert.TRITON_TENSORRT_VERSION, onnx_file="model.onnx", plan_file="model.plan",
            precision=precision, input_name=_comment_safe(spec.image_input.name),
            min_shape="x".join(map(str, low)), opt_shape="x".join(map(str, opt)), max_shape="x".join(map(str, high)),
            triton_trtexec=trt_convert.TRITON_TRTEXEC, triton_trtexec_sh=shlex.quote(trt_convert.TRITON_TRTEXEC),
            trtexec_args=trt_convert.shell_command(args[1:], {"@ONNX@": '"$onnx"', "@PLAN@": '"$tmp"'}),
        )
        must_build = (
            f"{model}/1/model.plan is NOT built: TensorRT is not installed here. Triton cannot load {model} "
            f"(nor the ensemble) until you run {model}/1/build_plan.sh on the serving GPU inside "
            f"{trt_convert.TRITON_IMAGE} with the repository mounted read-write (see {model}/README.md)."
        )
        command = trt_convert.trtexec_command(
            "1/model.onnx", "1/model.plan", spec.image_input.name, chw, options.max_batch_size, extra_inputs=extra)
        readme = render_config("tensorrt/README.md.j2", model=model, image=trt_convert.TRITON_IMAGE,
                               tensorrt_version=trt_convert.TRITON_TENSORRT_VERSION, precision=precision,
                               command=shlex.join(command))
        return RuntimeFiles(
            platform="tensorrt_plan",
            files={"model.onnx": prepared, "build_plan.sh": script},
            executable={"build_plan.sh"},
            model_files={"README.md": readme},
            instance_kind=None,
            notes=[must_build],
            next_command=f"docker run --rm --gpus all -v {{repository}}:/models {trt_convert.TRITON_IMAGE} "
                         f"bash /models/{model}/1/build_plan.sh",
        )


def _comment_safe(text: str) -> str:
    if any(ord(c) < 0x20 for c in text):
        raise EmitError(f"control character in tensor name {text!r}")
    return text
