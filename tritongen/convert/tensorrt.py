"""ONNX -> TensorRT 10 plan, for Triton's ``tensorrt_plan`` platform.

Plans are built as *strongly typed* networks: TensorRT takes every tensor type from the ONNX
graph, so FP16 and INT8 are properties of the ONNX model (``to_fp16_outside_qdq`` and Q/DQ
nodes), never builder flags (TensorRT rejects ``--fp16``/``--int8`` precision hints on a strongly
typed network). There is one optimization profile, on the batch axis only:
min 1, opt max(1, max_batch_size // 2), max max_batch_size; Triton uses profile 0 when
``instance_group.profile`` is not set, so the config does not name it.

A plan only runs with the TensorRT version and on the GPU model that built it. When
``tensorrt`` is importable here, ``build_plan`` builds it with the Python API; otherwise the
repository ships the ONNX model plus ``build_plan.sh``, which runs the equivalent
``trtexec_command`` inside the serving container. The official ``tritonserver:24.10-py3``
container runs TensorRT 10.5.
"""
from __future__ import annotations

import os
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConversionError
from .passes import PassReport

TRITON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where the NGC containers keep trtexec
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_TENSORRT_VERSION = "10.5"  # TensorRT inside TRITON_IMAGE
MIN_TENSORRT_MAJOR = 10


class TensorRTError(ConversionError):
    """A TensorRT plan cannot be built from this model."""


class TensorRTUnavailable(TensorRTError):
    """The TensorRT 10 Python package is not installed here."""


@dataclass
class PlanInfo:
    path: Path
    tensorrt_version: str
    size_bytes: int
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    fp16: bool
    int8: bool
    warnings: list[str] = field(default_factory=list)


def profile_shapes(chw_shape: Sequence[int], max_batch_size: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the single optimization profile."""
    chw = tuple(int(d) for d in chw_shape)
    if any(d < 1 for d in chw):
        raise TensorRTError(
            f"a TensorRT plan needs a fixed per-image input shape, got {list(chw)} "
            "(-1 = image-dependent size); give the model a fixed crop/resize size"
        )
    if max_batch_size < 1:
        raise TensorRTError("max_batch_size must be >= 1 for a TensorRT plan")
    opt = max(1, max_batch_size // 2)
    return (1, *chw), (opt, *chw), (max_batch_size, *chw)


def _shape_spec(name: str, shape: Sequence[int]) -> str:
    # trtexec reads NAME:DxDxD; names holding the separators are wrapped in single quotes.
    quoted = f"'{name}'" if any(c in name for c in ":,") else name
    return f"{quoted}:{'x'.join(str(d) for d in shape)}"


def all_profiles(
    input_name: str, chw_shape: Sequence[int], max_batch_size: int, extra_inputs: dict[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) per network input: the image, then e.g. PaddleDetection's scale_factor [2]."""
    shapes = {input_name: profile_shapes(chw_shape, max_batch_size)}
    for name, per_item in (extra_inputs or {}).items():
        shapes[name] = profile_shapes(per_item, max_batch_size)
    return shapes


def trtexec_command(
    onnx_path: str | Path,
    plan_path: str | Path,
    input_name: str,
    chw_shape: Sequence[int],
    max_batch_size: int,
    trtexec: str = "trtexec",
    extra_inputs: dict[str, Sequence[int]] | None = None,
) -> list[str]:
    """The trtexec (TensorRT 10) invocation equivalent to ``build_plan``, as an argument list.
    Every dynamic input needs its shapes, so ``extra_inputs`` (name -> per-item shape) join the image's."""
    shapes = all_profiles(input_name, chw_shape, max_batch_size, extra_inputs)

    def spec(i: int) -> str:
        return ",".join(_shape_spec(name, profile[i]) for name, profile in shapes.items())

    return [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        "--stronglyTyped",
        f"--minShapes={spec(0)}",
        f"--optShapes={spec(1)}",
        f"--maxShapes={spec(2)}",
        "--skipInference",
    ]


def shell_command(args: Sequence[str], substitutions: dict[str, str] | None = None) -> str:
    """``args`` quoted for bash; each key of ``substitutions`` (a shell-safe placeholder such as
    ``@ONNX@``) becomes its value (e.g. ``"$onnx"``) after quoting."""
    text = " ".join(shlex.quote(a) for a in args)
    for placeholder, replacement in (substitutions or {}).items():
        text = text.replace(placeholder, replacement)
    return text


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({exc}); install TensorRT {MIN_TENSORRT_MAJOR}.x on the GPU machine, "
            "or use the repository's build_plan.sh inside the Triton container"
        ) from None
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed; tritongen builds plans with TensorRT 10 or newer")
    return trt


def tensorrt_available() -> bool:
    """Whether the TensorRT (>= 10) Python package can be imported here."""
    try:
        _import_tensorrt()
    except TensorRTError:
        return False
    return True


def check_precision(model, fp16: bool, int8: bool) -> None:
    """A strongly typed build runs the types in the graph: make sure they are the ones asked for."""
    import onnx

    from .passes.tensorrt import QDQ_OPS, _constants, _is_int32_const_dequantize

    graph = model.graph
    ops = {n.op_type for n in graph.node}
    consts = _constants(graph)
    bad = [n.name or n.output[0] for n in graph.node if _is_int32_const_dequantize(n, consts)]
    if bad:
        raise TensorRTError(f"DequantizeLinear of int32 tensors (TensorRT rejects them): {', '.join(bad[:5])}; "
                            "run remove_int32_bias_dequantize first")
    if int8 and not ops & QDQ_OPS:
        raise TensorRTError("--int8 asks for a quantized model but the ONNX graph has no QuantizeLinear/DequantizeLinear "
                            "nodes; a strongly typed TensorRT network only runs INT8 where Q/DQ nodes say so")
    # TensorRT quantizes symmetrically to signed types only (zero points must be 0; no uint8).
    asymmetric = []
    for node in graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]:
            zero_point = consts.get(node.input[2])
            if zero_point is None or zero_point.dtype == np.uint8 or np.any(zero_point.astype(np.float64) != 0):
                asymmetric.append(node.name or node.output[0])
    if asymmetric:
        raise TensorRTError(
            f"{len(asymmetric)} Q/DQ node(s) are not symmetric signed int8 (e.g. {', '.join(asymmetric[:3])}); TensorRT "
            "needs zero points of 0 and int8 types (ONNX Runtime's uint8/zero point 128 recipes do not fit)"
        )
    if fp16:
        half = any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer) or any(
            any((a.name == "to" and a.i == onnx.TensorProto.FLOAT16) or (a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT16)
                for a in n.attribute)
            for n in graph.node if n.op_type in ("Cast", "Constant")
        )
        if not half:
            raise TensorRTError("--fp16 asks for FP16 but the ONNX graph has no float16 tensors; strongly typed "
                                "networks take precision from the graph: run to_fp16_outside_qdq first")


def tensorrt_passes(fp16: bool) -> tuple[str, ...]:
    """The pass chain that prepares an ONNX model for a TensorRT 10 strongly typed build."""
    return ("remove_int32_bias_dequantize", *(("to_fp16_outside_qdq",) if fp16 else ()))


def prepare_onnx(source: Path, target: Path, fp16: bool = False, int8: bool = False) -> list[PassReport]:
    """Write ``source`` prepared for a TensorRT 10 strongly typed build to ``target``."""
    import onnx

    from .passes import run_passes

    model, reports = run_passes(onnx.load(str(source)), tensorrt_passes(fp16))
    check_precision(model, fp16, int8)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return reports


def _write_atomically(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    input_name: str,
    chw_shape: Sequence[int],
    max_batch_size: int,
    fp16: bool = False,
    int8: bool = False,
    extra_inputs: dict[str, Sequence[int]] | None = None,
) -> PlanInfo:
    """Build a TensorRT 10 plan from ``onnx_path`` with the Python API (needs a GPU).

    ``fp16`` / ``int8`` state what the graph is expected to contain (checked); the network is
    strongly typed, so they set no builder flag.
    """
    import onnx

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    shapes = all_profiles(input_name, chw_shape, max_batch_size, extra_inputs)
    low, opt, high = shapes[input_name]
    check_precision(onnx.load(str(onnx_path)), fp16, int8)
    trt = _import_tensorrt()

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{severity.name}: {msg}")

    logger = _Logger()
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the EXPLICIT_BATCH flag is deprecated and
    # ignored); STRONGLY_TYPED makes the ONNX tensor types the engine's types.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT's ONNX parser rejected {onnx_path}:\n" + "\n".join(errors or logger.messages))
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(inputs) != set(shapes):
        raise TensorRTError(f"the network has inputs {sorted(inputs)}; the repository feeds {sorted(shapes)}")
    for name, (_, _, top) in shapes.items():
        dims = tuple(inputs[name].shape)
        if len(dims) != len(top) or dims[0] not in (-1,):
            raise TensorRTError(
                f"input {name!r} has shape {list(dims)}; a Triton max_batch_size > 0 plan needs a dynamic batch axis "
                f"and rank {len(top)}"
            )
        for got, want in zip(dims[1:], top[1:]):
            if got not in (-1, want):
                raise TensorRTError(f"input {name!r} has shape {list(dims)}, which does not fit the per-item shape {list(top[1:])}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, mid, top) in shapes.items():
        profile.set_shape(name, lo, mid, top)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError("TensorRT could not build the engine:\n" + "\n".join(logger.messages[-20:]))
    data = memoryview(serialized)
    _write_atomically(plan_path, data)
    return PlanInfo(
        path=plan_path, tensorrt_version=str(trt.__version__), size_bytes=plan_path.stat().st_size,
        input_name=input_name, min_shape=low, opt_shape=opt, max_shape=high, fp16=fp16, int8=int8,
        warnings=list(logger.messages),
    )


__all__ = [
    "PlanInfo", "TensorRTError", "TensorRTUnavailable", "TRITON_IMAGE", "TRITON_TENSORRT_VERSION", "TRITON_TRTEXEC",
    "all_profiles", "build_plan", "check_precision", "prepare_onnx", "tensorrt_passes", "profile_shapes", "shell_command", "tensorrt_available",
    "trtexec_command",
]
