"""Runtime backends a repository can use, in one registry (one class per backend)."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import EmitError
from ..intake.spec import ModelSpec
from .pbtxt import template_path

BACKENDS: dict[str, type["Backend"]] = {}


def register_backend(cls: type["Backend"]) -> type["Backend"]:
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> "Backend":
    if name not in BACKENDS:
        raise EmitError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]()


@dataclass
class RuntimeOptions:
    """Settings of the runtime model that do not come from the model itself."""

    threads: int = 1
    max_batch_size: int = 8
    int8: bool = False  # the artifacts are quantized (Paddle QDQ program / INT8 ONNX)
    fp16: bool = False  # run what is not INT8 in FP16 where the backend can (TensorRT)


@dataclass
class RuntimeFiles:
    """What the runtime model's config and version directory need."""

    platform: str | None = None
    backend: str | None = None
    # file name in the version directory -> source path, or text to write
    files: dict[str, Path | str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    instance_kind: str | None = "KIND_CPU"  # None: let Triton choose (GPU when it has one)


class Backend(ABC):
    name: ClassVar[str]
    needs_onnx: ClassVar[bool]
    # The CPU-only tritonserver from the nvidia-pytriton wheel hosts python models and
    # ensembles only; other platforms need the official container (docker/).
    served_locally: ClassVar[bool]
    description: ClassVar[str]
    # Which INT8 ONNX graph pass chain prepares the model for this backend (convert.int8.TARGETS).
    onnx_target: ClassVar[str | None] = None

    @abstractmethod
    def runtime(self, spec: ModelSpec, onnx_path: Path | None, options: RuntimeOptions) -> RuntimeFiles:
        """Files and settings of the runtime model. ``spec`` is the (possibly quantized) Paddle
        model; ``onnx_path`` the ONNX prepared for this backend when ``needs_onnx``."""


def _runtime_json(runtime: str, files: list[str], **settings: object) -> str:
    return json.dumps({"runtime": runtime, "files": files, **settings}, indent=2) + "\n"


@register_backend
class OnnxRuntimePlatform(Backend):
    name = "onnxruntime"
    needs_onnx = True
    onnx_target = "onnxruntime"
    served_locally = False
    description = "platform onnxruntime_onnx (Triton's ONNX Runtime backend, official container)"

    def runtime(self, spec: ModelSpec, onnx_path: Path | None, options: RuntimeOptions) -> RuntimeFiles:
        assert onnx_path is not None
        return RuntimeFiles(
            platform="onnxruntime_onnx",
            files={"model.onnx": onnx_path},
            parameters={"intra_op_thread_count": str(options.threads)},
            instance_kind=None,
        )


@register_backend
class PythonOnnxRuntime(Backend):
    name = "python-onnxruntime"
    needs_onnx = True
    onnx_target = "onnxruntime"
    served_locally = True
    description = "Python backend running ONNX Runtime (CPU)"

    def runtime(self, spec: ModelSpec, onnx_path: Path | None, options: RuntimeOptions) -> RuntimeFiles:
        assert onnx_path is not None
        return RuntimeFiles(
            backend="python",
            files={
                "model.py": template_path("python/runtime.py"),
                "model.onnx": onnx_path,
                "runtime.json": _runtime_json("onnxruntime", ["model.onnx"], threads=options.threads),
            },
        )


@register_backend
class PythonPaddle(Backend):
    name = "python-paddle"
    needs_onnx = False
    served_locally = True
    description = "Python backend running Paddle Inference (CPU)"

    def runtime(self, spec: ModelSpec, onnx_path: Path | None, options: RuntimeOptions) -> RuntimeFiles:
        # Paddle runs quantized programs in INT8 on CPU only through oneDNN.
        mkldnn = options.int8 or bool(spec.runtime_options.get("enable_mkldnn", False))
        return RuntimeFiles(
            backend="python",
            files={
                "model.py": template_path("python/runtime.py"),
                "inference.pdmodel": spec.model_file,
                "inference.pdiparams": spec.params_file,
                "runtime.json": _runtime_json(
                    "paddle", ["inference.pdmodel", "inference.pdiparams"], threads=options.threads, enable_mkldnn=mkldnn,
                    int8=options.int8,
                ),
            },
        )
