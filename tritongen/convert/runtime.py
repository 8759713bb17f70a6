"""The last conversion step: the ONNX model a backend ships, after the pass chain it names, and
a TensorRT plan where the backend wants one and TensorRT is installed. Emit only writes what
this returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..intake.spec import ModelSpec
from .passes import PassReport, run_passes
from .tensorrt import PlanInfo, TensorRTError, build_plan, check_precision, profile_shapes, tensorrt_available


@dataclass
class TensorRTInputs:
    """The plan's inputs: the image at a fixed per-image shape, other feeds (scale_factor, im_shape)
    at their declared shapes; one optimization profile on the batch axis."""

    image: str
    chw: list[int]
    extra: dict[str, list[int]]
    max_batch_size: int
    fp16: bool
    int8: bool

    @property
    def profile(self) -> tuple[tuple[int, ...], ...]:
        return profile_shapes(self.chw, self.max_batch_size)

    @property
    def precision(self) -> str:
        return " + ".join(p for p, on in (("INT8 Q/DQ", self.int8), ("FP16", self.fp16)) if on) or "FP32"


@dataclass
class RuntimeArtifact:
    onnx: Path | None  # the ONNX the runtime model ships (None: the backend runs the Paddle program)
    reports: list[PassReport] = field(default_factory=list)
    tensorrt: TensorRTInputs | None = None  # set for plan-building backends
    plan: PlanInfo | None = None  # built here when TensorRT is installed


def convert_for_runtime(
    spec: ModelSpec, onnx_path: Path | None, passes: Sequence[str], *, tensorrt_plan: bool = False,
    max_batch_size: int = 8, fp16: bool = False, int8: bool = False,
) -> RuntimeArtifact:
    """Run ``passes`` on ``onnx_path`` (written beside it as ``<stem>.<runtime>.onnx``); with
    ``tensorrt_plan`` check the precision a strongly typed build will run and build the plan
    when TensorRT is importable (raises TensorRTError when the model cannot have one)."""
    if onnx_path is None:
        return RuntimeArtifact(None)
    if not passes and not tensorrt_plan:
        return RuntimeArtifact(onnx_path)
    import onnx

    model, reports = run_passes(onnx.load(str(onnx_path)), passes)
    trt = None
    if tensorrt_plan:
        chw = list(spec.preprocessed_shape)
        if any(d < 1 for d in chw):
            raise TensorRTError(
                f"--backend tensorrt needs a fixed per-image input shape; {spec.name} preprocesses to {chw} "
                "(-1 = depends on the image). Use a fixed crop/resize, or another backend"
            )
        # PaddleDetection graphs also take scale_factor / im_shape: every input needs a profile.
        extra = {t.name: list(t.shape[1:]) for t in spec.inputs if t.name != spec.image_input.name}
        trt = TensorRTInputs(spec.image_input.name, chw, extra, max_batch_size, fp16, int8)
        check_precision(model, fp16, int8)
    prepared = onnx_path.with_name(f"{onnx_path.stem}.prepared.onnx")
    onnx.save(model, str(prepared))
    plan = None
    if trt is not None and tensorrt_available():
        plan = build_plan(prepared, prepared.with_name("model.plan"), trt.image, trt.chw, max_batch_size,
                          fp16=fp16, int8=int8, extra_inputs=trt.extra)
    return RuntimeArtifact(prepared, reports, trt, plan)
