"""INT8 targets: a quantized Paddle program -> the INT8 artifact one kind of runtime serves.

One registry, one class per target; backends name theirs (``Backend.int8_target``):

- ``paddle-onednn``: Paddle Inference runs the PaddleSlim QDQ program itself (oneDNN INT8).
- ``onnxruntime``: several recipes are built and *measured* on held-out images — fidelity to
  the FP32 ONNX model and latency on this CPU — and the most faithful one wins (latency breaks
  near-ties). Recipes: ``paddle-scales`` (Paddle's QDQ graph from paddle2onnx with
  activations moved to uint8, same scales, so MLAS's u8s8 kernels fuse every conv);
  ``ort-placement`` (ONNX Runtime's own QDQ placement on the FP32 graph with Paddle's
  calibrated ranges where Paddle calibrated the tensor, ORT MinMax elsewhere);
  ``ort-calibration`` (ORT's quantize_static alone, for reference). A recipe that cannot run
  on a model is skipped with its reason.
- ``tensorrt``: Paddle's QDQ graph (symmetric int8 = TensorRT's explicit quantization); the
  tensorrt backend's pass chain prepares it further.

Detectors: calibration, fidelity and latency feed every model input (image, scale_factor,
im_shape) one image at a time (paddle2onnx's NMS is batch 1); fidelity is the detection
agreement of the postprocessed detections, and ONNX Runtime's own placement leaves the
post-processing tail and the scale_factor / im_shape math in float (:class:`KeepFloat`).

:func:`to_int8` is the stage: quantize once, prepare each requested target, gate each
artifact's fidelity on ``QuantizeConfig.max_drop`` — the only place the gate runs for builds
and benchmarks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import onnx

from ..errors import ConversionError, TritongenError
from ..intake.spec import ModelSpec, QuantFormat
from ..measure import Latency, cpu_info, measure
from ..processing.runners import OnnxRuntimeRunner
from ..quantize import OrtRecipe, QuantizedModel, QuantizeConfig, quantize
from ..quantize.calibration import CalibrationData, ImageSet
from ..quantize.fidelity import FidelityReport, compare
from ..registry import Registry
from ..residue import owned_temp_dir
from . import quantized as quantized_check
from .onnx import paddle_to_onnx
from .passes.onnxruntime import (COMPUTE_OPS, FusionReport, activation_ranges, activations_to_uint8, fusion_report,
                                 fuse_relu_requantization, rename_outputs)

NEAR_TIE = 0.005  # fidelity differences below this are noise on a small held-out set
POOR_FIDELITY = 0.9  # a headline below this is worth a note even when no --max-drop gates it
Step = Callable[[str], None]


# ------------------------------------------------------------------------------ artifacts


class Int8Report(ABC):
    """What a target did, for ``tritongen_build.json`` and the console."""

    @abstractmethod
    def to_dict(self) -> dict: ...

    def lines(self) -> list[str]:
        return []


@dataclass
class Int8Artifact:
    target: str
    spec: ModelSpec  # the INT8 Paddle program everything starts from
    onnx: Path | None  # the INT8 ONNX the runtime runs (None: Paddle runs ``spec`` itself)
    fidelity: FidelityReport | None  # this artifact vs FP32: what the gate checks (None: no FP32 model at hand)
    report: Int8Report
    quantized: QuantizedModel | None = None  # set when tritongen quantized the model (None: it arrived quantized)
    conversion: FidelityReport | None = None  # arrived quantized: the artifact vs Paddle on the same program
    int8_kernels: bool = True  # False: the runtime runs the program in float kernels (see PaddleOneDnn.adopt)
    notes: list[str] = field(default_factory=list)
    arrived_as: QuantFormat | None = None  # arrived quantized: the format it came in (legacy ones are rewritten)

    def to_dict(self) -> dict:
        origin = ({"quantization": self.quantized.record.to_dict(), "paddle_fidelity": self.quantized.fidelity.to_dict()}
                  if self.quantized else {"quantization": {"pre_quantized": True,
                                                           "format": (self.arrived_as or self.spec.quant_format).value}})
        return {"target": self.target, **origin, "fidelity": self.fidelity.to_dict() if self.fidelity else None,
                "conversion_check": self.conversion.to_dict() if self.conversion else None,
                "int8_kernels": self.int8_kernels, self.target: self.report.to_dict(), "notes": list(self.notes)}


@dataclass
class PaddleInt8Report(Int8Report):
    engine: str = "Paddle Inference, oneDNN INT8"

    def to_dict(self) -> dict:
        return {"engine": self.engine}


@dataclass
class Int8Candidate:
    recipe: OrtRecipe
    path: Path
    fusion: FusionReport
    fidelity: FidelityReport
    latency: Latency

    def row(self) -> dict:
        metric, value = self.fidelity.headline
        second, second_value = self.fidelity.secondary
        return {"recipe": self.recipe.value, metric: round(value, 4), second: round(second_value, 5),
                "fused": f"{self.fusion.fused}/{self.fusion.convs}", "latency_ms": round(self.latency.median_ms, 2)}


@dataclass
class OrtInt8Report(Int8Report):
    chosen: Int8Candidate
    candidates: list[Int8Candidate]
    fp32_latency: Latency
    skipped: list[str] = field(default_factory=list)  # "recipe: why" for recipes that could not run

    @property
    def speedup(self) -> float:
        return self.fp32_latency.median_ms / self.chosen.latency.median_ms

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.recipe.value, "speedup_vs_fp32": round(self.speedup, 3),
                "fp32_latency_ms": round(self.fp32_latency.median_ms, 2),
                "candidates": [c.row() for c in self.candidates], "skipped": list(self.skipped)}

    def lines(self) -> list[str]:
        rows = [f"  {c.recipe.value}: {c.fidelity.summary()}; {c.fusion}; {c.latency}" for c in self.candidates]
        rows += [f"  skipped {why}" for why in self.skipped]
        return rows + [f"chose {self.chosen.recipe.value}: {self.speedup:.2f}x FP32 speed "
                       f"({self.fp32_latency.median_ms:.1f} ms FP32)"]


@dataclass
class TensorRTInt8Report(Int8Report):
    quantize_nodes: int
    recipe: str = "paddle-qdq"

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "quantize_nodes": self.quantize_nodes}


# ------------------------------------------------------------------------------ registry

INT8_TARGETS: Registry[type["Int8Target"]] = Registry("INT8 target")
register_int8_target = INT8_TARGETS.register


def get_int8_target(name: str) -> "Int8Target":
    return INT8_TARGETS.lookup(name, TritongenError)()


class Int8Target(ABC):
    name: ClassVar[str]
    needs_onnx: ClassVar[bool]  # whether prepare() needs the FP32 ONNX conversion

    @abstractmethod
    def prepare(self, quantized: QuantizedModel, fp32_onnx: Path | None, work: Path, step: Step) -> Int8Artifact:
        """The artifact this target serves, with its fidelity to FP32 measured."""

    @abstractmethod
    def adopt(self, spec: ModelSpec, work: Path, step: Step) -> Int8Artifact:
        """The artifact this target serves for a program that arrived quantized, checked against
        Paddle Inference on the same program (:mod:`convert.quantized`); no FP32 fidelity yet."""


@register_int8_target
class PaddleOneDnn(Int8Target):
    name = "paddle-onednn"
    needs_onnx = False

    def prepare(self, quantized: QuantizedModel, fp32_onnx: Path | None, work: Path, step: Step) -> Int8Artifact:
        return Int8Artifact(self.name, quantized.spec, None, quantized.fidelity, PaddleInt8Report(), quantized=quantized)

    def adopt(self, spec: ModelSpec, work: Path, step: Step) -> Int8Artifact:
        """oneDNN reads observer-only Q/DQ pairs as Paddle's kernels do: checked against the program
        as it is. oneDNN's INT8 passes do not follow every program; then the runtime runs it in
        Paddle's float kernels (the same answers, no INT8 speed) rather than answer differently."""
        step("checking oneDNN INT8 against the program in Paddle's own kernels on sample photos")
        check = quantized_check.checked_spec(spec, work)
        try:
            conversion = quantized_check.check_conversion(
                quantized_check.paddle_runner(check), quantized_check.paddle_runner(check, int8=True), check,
                candidate_name="INT8 Paddle Inference (oneDNN)", reference_name="the program in Paddle's float kernels")
        except ConversionError as exc:
            note = (f"{exc}. The python-paddle runtime runs the program in Paddle's float kernels instead: the same "
                    "answers as the program, without INT8 speed; python-onnxruntime serves it in INT8")
            return Int8Artifact(self.name, spec, None, None, PaddleInt8Report("Paddle Inference, float kernels"),
                                int8_kernels=False, notes=[note])
        return Int8Artifact(self.name, spec, None, None, PaddleInt8Report(), conversion=conversion)


@register_int8_target
class TensorRTInt8(Int8Target):
    """Paddle's QDQ graph as it is: symmetric int8 with zero point 0 is TensorRT's explicit
    quantization. The tensorrt backend's pass chain (int32 bias DQ folded, FP16 outside Q/DQ with
    --fp16) runs on it before the plan is built or shipped. TensorRT cannot run here, so the
    fidelity reported is Paddle's INT8 program (the same scales)."""

    name = "tensorrt"
    needs_onnx = True

    def prepare(self, quantized: QuantizedModel, fp32_onnx: Path | None, work: Path, step: Step) -> Int8Artifact:
        path = paddle_qdq_onnx(quantized.spec, work / "tensorrt_qdq.onnx")
        return Int8Artifact(self.name, quantized.spec, path, quantized.fidelity, TensorRTInt8Report(_quantize_nodes(path)),
                            quantized=quantized)

    def adopt(self, spec: ModelSpec, work: Path, step: Step) -> Int8Artifact:
        """TensorRT cannot run here: the Q/DQ ONNX it will build from is checked in ONNX Runtime."""
        path, conversion = _convert_and_check(spec, work / "tensorrt", paddle_qdq_onnx, "INT8 Q/DQ ONNX (ONNX Runtime)", step)
        return Int8Artifact(self.name, spec, path, None, TensorRTInt8Report(_quantize_nodes(path)), conversion=conversion)


@register_int8_target
class OnnxRuntimeInt8(Int8Target):
    name = "onnxruntime"
    needs_onnx = True
    latency_budget_s: float = 3.0

    def prepare(self, quantized: QuantizedModel, fp32_onnx: Path | None, work: Path, step: Step) -> Int8Artifact:
        """Build each recipe, measure it against the FP32 ONNX on held-out images, choose one."""
        if fp32_onnx is None:
            raise ConversionError("the onnxruntime INT8 target needs the FP32 ONNX model")
        fp32, int8, data = quantized.fp32, quantized.spec, quantized.data
        config = fp32.pipeline_config()
        keep = KeepFloat.for_model(quantized)
        reference = OnnxRuntimeRunner(fp32_onnx, threads=1)
        sample = data.holdout.batch([0])  # every feed of one image
        fp32_latency = _latency(fp32_onnx, sample, self.latency_budget_s)
        candidates, skipped = [], []
        paddle_qdq: Path | None = None
        for recipe in quantized.config.recipes:
            step(f"INT8 recipe {recipe.value}: building, checking fidelity and speed")
            out = work / f"int8_{recipe.value}.onnx"
            try:  # a recipe that cannot run on this model is skipped with its reason, never fatal alone
                if paddle_qdq is None:
                    paddle_qdq = paddle_qdq_onnx(int8, work / "paddle_qdq.onnx")
                ORT_RECIPES[recipe](paddle_qdq=paddle_qdq, out=out, fp32_onnx=fp32_onnx, data=data, keep_float=keep)
                # One set of names whatever the recipe started from: the quantized program's fetch names.
                onnx.save(rename_outputs(onnx.load(str(out)), [t.name for t in int8.outputs]), str(out))
                runner = OnnxRuntimeRunner(out, threads=1)
                report = compare(reference, runner, data.holdout, config, reference_name="FP32 ONNX Runtime",
                                 candidate_name=f"INT8 ONNX Runtime ({recipe.value})")
                latency = _latency(out, sample, self.latency_budget_s)
            except Exception as exc:  # noqa: BLE001  onnx/ORT/paddle2onnx raise anything; the reason is kept
                skipped.append(f"{recipe.value}: {_one_line(exc)}")
                continue
            candidates.append(Int8Candidate(recipe, out, fusion_report(out), report, latency))
        if not candidates:
            raise ConversionError(f"no ONNX Runtime INT8 recipe runs on {fp32.name}: " + "; ".join(skipped))
        report = OrtInt8Report(choose(candidates), candidates, fp32_latency, skipped)
        notes = [f"INT8 recipe skipped: {why}" for why in skipped]
        if report.speedup < 1.0:
            cpu = cpu_info()
            notes.append(f"INT8 ({report.chosen.latency.median_ms:.1f} ms) is not faster than FP32 "
                         f"({fp32_latency.median_ms:.1f} ms) on this CPU, {cpu}: {cpu.int8_expectation()}")
        return Int8Artifact(self.name, quantized.spec, report.chosen.path, report.chosen.fidelity, report,
                            quantized=quantized, notes=notes)


    def adopt(self, spec: ModelSpec, work: Path, step: Step) -> Int8Artifact:
        """The program's own scales with uint8 activations (the paddle-scales recipe): the only
        recipe that needs no FP32 model and no calibration images."""
        def convert(program: ModelSpec, out: Path) -> Path:
            qdq = paddle_qdq_onnx(program, out.with_name(f"{out.stem}.qdq.onnx"))
            return _paddle_scales_recipe(qdq, out)

        path, conversion = _convert_and_check(spec, work / "onnxruntime", convert,
                                              f"INT8 ONNX Runtime ({OrtRecipe.PADDLE_SCALES.value})", step)
        return Int8Artifact(self.name, spec, path, None, OrtAdoptedReport(OrtRecipe.PADDLE_SCALES, fusion_report(path)),
                            conversion=conversion)


@dataclass
class OrtAdoptedReport(Int8Report):
    recipe: OrtRecipe
    fusion: FusionReport

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.value, "fused": f"{self.fusion.fused}/{self.fusion.convs}"}

    def lines(self) -> list[str]:
        return [f"ONNX Runtime INT8 ({self.recipe.value}): {self.fusion}"]


def _quantize_nodes(path: Path) -> int:
    return sum(1 for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear")


def _convert_and_check(spec: ModelSpec, work: Path, convert: Callable[[ModelSpec, Path], Path], name: str,
                       step: Step) -> tuple[Path, FidelityReport]:
    """``convert`` the quantized program to ONNX; check the result (the graph cut before NMS for
    detectors that have it) against Paddle Inference on the same program."""
    work.mkdir(parents=True, exist_ok=True)
    step(f"converting the quantized {spec.model_file.name} to ONNX for {name}")
    path = convert(spec, work / "model.int8.onnx")
    check, check_path = spec, path
    if spec.nms_in_graph:
        check = quantized_check.checked_spec(spec, work)
        check_path = convert(check, work / "check.int8.onnx")
    step(f"checking {name} against the same program in Paddle Inference on sample photos")
    reference = quantized_check.observers_applied(check, work / "reference")
    conversion = quantized_check.check_conversion(
        quantized_check.paddle_runner(reference), quantized_check.onnx_runner(check_path), check,
        candidate_name=name, reference_name="the same INT8 program in Paddle Inference")
    return path, conversion


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


# ------------------------------------------------------------------------------ the stage


@dataclass
class Int8Result:
    quantized: QuantizedModel
    artifacts: dict[str, Int8Artifact]  # target name -> artifact
    skipped: dict[str, str] = field(default_factory=dict)  # target name -> why it could not be prepared


def to_int8(
    fp32: ModelSpec, config: QuantizeConfig, targets: Sequence[Int8Target], work: Path,
    fp32_onnx: Path | None = None, step: Step = lambda message: None, gate: bool = True, keep_going: bool = False,
) -> Int8Result:
    """Quantize ``fp32`` once, prepare every target's artifact, gate each on ``config.max_drop``.
    ``keep_going`` (benchmarks): a target that fails is recorded in ``skipped``, the others go on."""
    quantized = quantize(fp32, config, work / "int8_export", gate=False, step=step)
    step(f"Paddle INT8 vs FP32: {quantized.fidelity.summary()}")
    result = Int8Result(quantized, {})
    for target in targets:
        try:
            artifact = target.prepare(quantized, fp32_onnx, work, step)
        except TritongenError as exc:
            if not keep_going:
                raise
            result.skipped[target.name] = str(exc)
            continue
        for line in artifact.report.lines():
            step(line)
        if gate:
            artifact.fidelity.check(config.max_drop)
        metric, value = artifact.fidelity.headline
        if value < POOR_FIDELITY and config.max_drop is None:
            artifact.notes.append(
                f"INT8 follows FP32 poorly here ({metric} {value:.3f} on {len(artifact.fidelity.images)} held-out "
                "images): try another --algo (abs_max, mse, KL), more calibration images or --skip-tensors, and "
                "gate builds with --max-drop")
        result.artifacts[target.name] = artifact
    return result


def adopt_int8(spec: ModelSpec, target: Int8Target, work: Path, fp32: ModelSpec | None = None,
               step: Step = lambda message: None, arrived_as: QuantFormat | None = None) -> Int8Artifact:
    """The stage for a program that arrived quantized (Q/DQ; legacy programs are rewritten to Q/DQ
    first, ``convert.legacy_quant``): ``target``'s artifact, checked against Paddle on the same
    program; with its FP32 original at hand, the INT8-vs-FP32 fidelity on sample photos."""
    artifact = target.adopt(spec, work, step)
    artifact.arrived_as = arrived_as or spec.quant_format
    for line in artifact.report.lines():
        step(line)
    if fp32 is not None:
        step(f"measuring INT8 vs the FP32 original {fp32.name} on sample photos")
        candidate = (quantized_check.onnx_runner(artifact.onnx) if artifact.onnx is not None
                     else quantized_check.paddle_runner(artifact.spec, int8=artifact.int8_kernels))
        name = artifact.conversion.candidate if artifact.conversion else f"INT8 ({target.name})"
        artifact.fidelity = quantized_check.fidelity_to_fp32(fp32, candidate, name)
    return artifact


# ------------------------------------------------------------------------------ ONNX Runtime recipes


def paddle_qdq_onnx(int8: ModelSpec, out: Path, opset: int = 13) -> Path:
    """paddle2onnx of the QDQ program, with the Paddle fetch names on the graph outputs."""
    result = paddle_to_onnx(int8, out, opset=opset, validate=False)
    model = rename_outputs(onnx.load(str(result.path)), [t.name for t in int8.outputs])
    onnx.save(model, str(out))
    return out


def _paddle_scales_recipe(paddle_qdq: Path, out: Path, **_) -> Path:
    model, _count = activations_to_uint8(onnx.load(str(paddle_qdq)))
    model, _count = fuse_relu_requantization(model)  # Relu folds into the uint8 requantization
    onnx.save(model, str(out))
    return out


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed images: every model feed, one image
    at a time (as ORT calibrates, and as paddle2onnx's NMS runs)."""

    def __init__(self, images: ImageSet):
        self.images, self.i = images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return self.images.batch([self.i - 1])

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class KeepFloat:
    """What ONNX Runtime's own Q/DQ placement must leave in float — the same tensors the Paddle
    program keeps float (``quantize.ptq.keep_float``): the ``--skip-tensors``, and for a
    detector its post-processing (box decoding, scores, NMS) and all math on its non-image
    inputs (``scale_factor``, ``im_shape``), which ORT's op list (Mul, Add, Concat, Split,
    Reshape, ...) would otherwise quantize."""

    tensors: frozenset[str] = frozenset()
    detection_image_input: str | None = None  # set for models whose tail stays float (detectors)

    @classmethod
    def for_model(cls, quantized: QuantizedModel) -> "KeepFloat":
        fp32 = quantized.fp32
        return cls(frozenset(quantized.config.skip_tensors),
                   fp32.image_input.name if fp32.task_kind.keeps_tail_float else None)

    def nodes(self, model: onnx.ModelProto) -> list[str]:
        """Names of the nodes ORT must not quantize (nodes producing or reading a kept tensor;
        a detector's nodes from which no Conv/MatMul/Gemm is reachable, or that compute on a
        non-image input)."""
        nodes = list(model.graph.node)
        keep = {n.name for n in nodes if set(n.input) & self.tensors or set(n.output) & self.tensors}
        if self.detection_image_input is not None:
            reaches_compute: set[str] = set()
            for node in reversed(nodes):
                if node.op_type in COMPUTE_OPS or set(node.output) & reaches_compute:
                    reaches_compute |= set(node.input)
                else:
                    keep.add(node.name)
            side = {i.name for i in model.graph.input} - {self.detection_image_input}
            for node in nodes:
                if set(node.input) & side:
                    side |= set(node.output)
                    keep.add(node.name)
        return sorted(name for name in keep if name)


def _ort_quantize(fp32_onnx: Path, out: Path, data: CalibrationData, overrides: dict | None,
                  keep_float: KeepFloat = KeepFloat()) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with owned_temp_dir("tritongen-int8-") as tmp:  # pid-named: a SIGKILLed build's is removed later
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        calibrator = create_calibrator(pre, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(_Reader(data.calibration))
        ranges = calibrator.compute_data()
        for name, (lo, hi) in (overrides or {}).items():
            merged = _merge_range(ranges.data.get(name), lo, hi)
            if merged is not None:
                ranges[name] = TensorData(lowest=np.array(merged[0], np.float32), highest=np.array(merged[1], np.float32))
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges.data), cache)
        quantize_static(str(pre), str(out), None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cache), op_types_to_quantize=_ort_op_types(),
                        nodes_to_exclude=keep_float.nodes(onnx.load(str(pre))) or None)
    return out


def _merge_range(observed, paddle_lo: float, paddle_hi: float) -> tuple[float, float] | None:
    """Paddle's clipping threshold on ORT's observed range, or None when they cannot be the
    same tensor. Names are shared by the two graphs, but after ORT folds BatchNorm into Conv a
    name can denote a different computation; a threshold far outside the observed range
    means exactly that. Paddle's ranges are symmetric; keeping the observed sign gives a
    post-ReLU tensor all 256 uint8 levels instead of 128."""
    if observed is None:
        return None
    o_lo, o_hi = (float(np.asarray(v).reshape(-1)[0]) for v in observed.range_value)
    observed_abs = max(abs(o_lo), abs(o_hi))
    if observed_abs == 0 or not 0.25 * observed_abs <= paddle_hi <= 1.05 * observed_abs:
        return None
    return max(paddle_lo, o_lo), min(paddle_hi, o_hi)


def _ort_op_types() -> list[str]:
    """ORT's default op list minus Softmax: ORT gives a quantized Softmax the fixed output range
    [0, 1], one step = 1/255, which flattens the probabilities of a 1000-class head to zero
    (measured on ResNet50_vd: cosine to FP32 0.39 with Softmax quantized, 0.99 without)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"Softmax"})


def _ort_placement_recipe(paddle_qdq: Path, out: Path, fp32_onnx: Path, data: CalibrationData,
                          keep_float: KeepFloat) -> Path:
    return _ort_quantize(fp32_onnx, out, data, activation_ranges(onnx.load(str(paddle_qdq))), keep_float)


def _ort_calibration_recipe(paddle_qdq: Path, out: Path, fp32_onnx: Path, data: CalibrationData,
                            keep_float: KeepFloat) -> Path:
    return _ort_quantize(fp32_onnx, out, data, None, keep_float)


ORT_RECIPES: dict[OrtRecipe, Callable[..., Path]] = {
    OrtRecipe.PADDLE_SCALES: _paddle_scales_recipe,
    OrtRecipe.ORT_PLACEMENT: _ort_placement_recipe,
    OrtRecipe.ORT_CALIBRATION: _ort_calibration_recipe,
}


def _latency(path: Path, sample: dict[str, np.ndarray], budget_s: float) -> Latency:
    runner = OnnxRuntimeRunner(path, threads=1)
    return measure(lambda: runner.run(sample), runs=15, warmup=2, budget_s=budget_s)


def choose(candidates: list[Int8Candidate]) -> Int8Candidate:
    """Most faithful first (headline metric, then the secondary one: mean cosine, or mean IoU of
    matched detections); latency decides near-ties. A headline that counts items (top-1 over
    held-out images, detections) is tied within one item: on 5 images, 0.8 vs 0.6 top-1 is one
    image, not a better recipe."""
    best_head = max(c.fidelity.headline[1] for c in candidates)
    faithful = [c for c in candidates
                if c.fidelity.headline[1] >= best_head - max(NEAR_TIE, c.fidelity.resolution) - 1e-12]
    best_second = max(c.fidelity.secondary[1] for c in faithful)
    contenders = [c for c in faithful if c.fidelity.secondary[1] >= best_second - NEAR_TIE]
    return min(contenders, key=lambda c: c.latency.median_ms)


__all__ = ["to_int8", "adopt_int8", "OrtAdoptedReport", "Int8Result", "Int8Target", "Int8Artifact", "INT8_TARGETS", "get_int8_target", "register_int8_target",
           "OnnxRuntimeInt8", "TensorRTInt8", "PaddleOneDnn", "OrtInt8Report", "TensorRTInt8Report",
           "PaddleInt8Report", "Int8Candidate", "KeepFloat", "ORT_RECIPES", "paddle_qdq_onnx", "choose"]
