"""INT8 ONNX for each deployment target, from a PaddleSlim-quantized Paddle program.

ONNX Runtime (CPU): several recipes are built and *measured* on held-out images — fidelity
to the FP32 ONNX model and latency on this CPU — and the most faithful one wins (latency
breaks near-ties). Recipes:

- ``paddle-scales``: Paddle's QDQ graph (paddle2onnx) with activations moved to uint8
  (same scales, exact) so MLAS's u8s8 kernels fuse every conv;
- ``ort-placement``: ONNX Runtime's own QDQ placement on the FP32 graph, using Paddle's
  calibrated ranges wherever Paddle calibrated the tensor and ONNX Runtime's MinMax
  calibration on the same images elsewhere;
- ``ort-calibration``: ONNX Runtime's quantize_static (MinMax) alone, for reference.

Detectors: calibration, fidelity and latency feed every model input (image, scale_factor,
im_shape) one image at a time (paddle2onnx's NMS is batch 1); fidelity is the detection
agreement of the postprocessed detections, and ONNX Runtime's own placement leaves the
post-processing tail and the scale_factor / im_shape math in float (:class:`KeepFloat`).

TensorRT: Paddle's QDQ graph with the passes in ``passes.tensorrt`` (symmetric int8 is
what TensorRT's explicit quantization wants).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..bench.latency import Latency, measure
from ..errors import ConversionError
from ..intake.spec import ModelSpec
from ..processing.runners import OnnxRuntimeRunner
from ..quantize.calibration import CalibrationData, ImageSet
from ..quantize.fidelity import FidelityReport, compare
from .onnx import paddle_to_onnx
from .passes.onnxruntime import (COMPUTE_OPS, FusionReport, activation_ranges, activations_to_uint8, fusion_report,
                                 rename_outputs)

NEAR_TIE = 0.005  # fidelity differences below this are noise on a small held-out set


@dataclass
class Int8Candidate:
    recipe: str
    path: Path
    fusion: FusionReport
    fidelity: FidelityReport
    latency: Latency

    def row(self) -> dict:
        metric, value = self.fidelity.headline
        second, second_value = self.fidelity.secondary
        return {"recipe": self.recipe, metric: round(value, 4), second: round(second_value, 5),
                "fused": f"{self.fusion.fused}/{self.fusion.convs}", "latency_ms": round(self.latency.median_ms, 2)}


@dataclass
class Int8Choice:
    chosen: Int8Candidate
    candidates: list[Int8Candidate]
    fp32_latency: Latency
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.fp32_latency.median_ms / self.chosen.latency.median_ms

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.recipe, "speedup_vs_fp32": round(self.speedup, 3),
                "fp32_latency_ms": round(self.fp32_latency.median_ms, 2),
                "candidates": [c.row() for c in self.candidates], "notes": self.notes,
                "fidelity": self.chosen.fidelity.to_dict()}


def paddle_qdq_onnx(int8: ModelSpec, out: Path, opset: int = 13) -> Path:
    """paddle2onnx of the QDQ program, with the Paddle fetch names on the graph outputs."""
    result = paddle_to_onnx(int8, out, opset=opset, validate=False)
    model = rename_outputs(onnx.load(str(result.path)), [t.name for t in int8.outputs])
    onnx.save(model, str(out))
    return out


def _paddle_scales_recipe(paddle_qdq: Path, out: Path, **_) -> Path:
    model, _count = activations_to_uint8(onnx.load(str(paddle_qdq)))
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
    detection_image_input: str | None = None  # set for detectors

    @classmethod
    def for_model(cls, fp32: ModelSpec, int8: ModelSpec) -> "KeepFloat":
        from ..quantize import QUANT_FILE

        settings_file = int8.source_dir / QUANT_FILE
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        return cls(frozenset(settings.get("skip_tensors") or ()),
                   fp32.image_input.name if fp32.task == "detection" else None)

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

    with tempfile.TemporaryDirectory() as tmp:
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


ORT_RECIPES: dict[str, Callable[..., Path]] = {
    "paddle-scales": _paddle_scales_recipe,
    "ort-placement": _ort_placement_recipe,
    "ort-calibration": _ort_calibration_recipe,
}


def _latency(path: Path, sample: dict[str, np.ndarray], budget_s: float) -> Latency:
    runner = OnnxRuntimeRunner(path, threads=1)
    return measure(lambda: runner.run(sample), runs=15, warmup=2, budget_s=budget_s)


def int8_for_onnxruntime(
    fp32: ModelSpec, int8: ModelSpec, fp32_onnx: Path, data: CalibrationData, work_dir: Path,
    recipes: list[str] | None = None, latency_budget_s: float = 3.0, step: Callable[[str], None] = lambda m: None,
) -> Int8Choice:
    """Build each recipe, measure it against the FP32 ONNX on held-out images, choose one."""
    from .. bench.cpu import cpu_info

    config = fp32.pipeline_config()
    keep_float = KeepFloat.for_model(fp32, int8)
    paddle_qdq = paddle_qdq_onnx(int8, work_dir / "paddle_qdq.onnx")
    reference = OnnxRuntimeRunner(fp32_onnx, threads=1)
    sample = data.holdout.batch([0])  # every feed of one image
    fp32_latency = _latency(fp32_onnx, sample, latency_budget_s)
    candidates = []
    failures = []
    for recipe in recipes or list(ORT_RECIPES):
        step(f"INT8 recipe {recipe}: building, checking fidelity and speed")
        out = work_dir / f"int8_{recipe}.onnx"
        try:
            ORT_RECIPES[recipe](paddle_qdq=paddle_qdq, out=out, fp32_onnx=fp32_onnx, data=data, keep_float=keep_float)
            # One set of names whatever the recipe started from: the quantized program's fetch names.
            onnx.save(rename_outputs(onnx.load(str(out)), [t.name for t in int8.outputs]), str(out))
            runner = OnnxRuntimeRunner(out, threads=1)
        except Exception as exc:  # one recipe failing must not sink the others
            failures.append(f"{recipe}: {type(exc).__name__}: {exc}")
            continue
        report = compare(reference, runner, data.holdout, config, reference_name="FP32 ONNX Runtime",
                         candidate_name=f"INT8 ONNX Runtime ({recipe})")
        candidates.append(Int8Candidate(recipe, out, fusion_report(out), report, _latency(out, sample, latency_budget_s)))
    if not candidates:
        raise ConversionError("no INT8 ONNX recipe worked: " + "; ".join(failures))
    chosen = choose(candidates)
    choice = Int8Choice(chosen, candidates, fp32_latency, notes=[f"recipe failed: {f}" for f in failures])
    if choice.speedup < 1.0:
        choice.notes.append(
            f"INT8 ({chosen.latency.median_ms:.1f} ms) is not faster than FP32 ({fp32_latency.median_ms:.1f} ms) "
            f"on this CPU, {cpu_info()}: {cpu_info().int8_expectation()}"
        )
    return choice


def int8_for_tensorrt(int8: ModelSpec, work_dir: Path) -> tuple[Path, dict]:
    """Paddle's QDQ graph as it is: symmetric int8 with zero point 0 is TensorRT's explicit
    quantization. The tensorrt backend then runs passes.tensorrt on it (int32 bias DQ folded,
    FP16 outside Q/DQ with --fp16) before building or shipping the plan."""
    path = paddle_qdq_onnx(int8, work_dir / "paddle_qdq.onnx")
    model = onnx.load(str(path))
    q = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    return path, {"recipe": "paddle-qdq", "quantize_nodes": q}


def choose(candidates: list[Int8Candidate]) -> Int8Candidate:
    """Most faithful first (headline metric, then the secondary one: mean cosine, or mean IoU of
    matched detections); latency decides near-ties."""
    best_head = max(c.fidelity.headline[1] for c in candidates)
    faithful = [c for c in candidates if c.fidelity.headline[1] >= best_head - NEAR_TIE]
    best_second = max(c.fidelity.secondary[1] for c in faithful)
    contenders = [c for c in faithful if c.fidelity.secondary[1] >= best_second - NEAR_TIE]
    return min(contenders, key=lambda c: c.latency.median_ms)


def save_choice(choice: Int8Choice, path: Path) -> None:
    path.write_text(json.dumps(choice.to_dict(), indent=2) + "\n", encoding="utf-8")


__all__ = ["int8_for_onnxruntime", "int8_for_tensorrt", "paddle_qdq_onnx", "Int8Choice", "Int8Candidate", "ORT_RECIPES", "save_choice", "asdict"]
