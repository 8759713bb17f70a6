"""FP32 vs INT8 latency, measured side by side in one run, in FastDeploy's published tables' layout.

Runtime latency = the model alone (batch 1, 1 thread); end-to-end = decode + preprocess +
model + postprocess of one encoded image. FP32 and INT8 runs are interleaved (A, B, B, A,
...) so that load on a noisy machine hits both alike; the median is reported. The INT8
models are the ones ``build --int8`` serves: the same stage (:func:`convert.int8.to_int8`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from ..convert.int8 import Int8Artifact, get_int8_target, to_int8
from ..convert.onnx import paddle_to_onnx
from ..intake import load_model
from ..intake.spec import ModelSpec
from ..measure import CpuInfo, cpu_info, interleaved
from ..processing.pipeline import Preprocessor, postprocessor
from ..processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from ..quantize.config import QuantizeConfig, QuantMethod
from ..quantize.fidelity import Runner
from ..registry import Registry
from ..residue import owned_temp_dir

# ------------------------------------------------------------------------------ runtimes

RUNTIMES: Registry[type["BenchRuntime"]] = Registry("benchmark runtime", key="key")
register_runtime = RUNTIMES.register


class BenchRuntime(ABC):
    key: ClassVar[str]  # --backend value
    label: ClassVar[str]  # FastDeploy's "backend" column
    int8_target: ClassVar[str]  # convert.int8 target whose artifact is timed
    needs_onnx: ClassVar[bool]

    @abstractmethod
    def runners(self, fp32: ModelSpec, fp32_onnx: Path | None, int8: Int8Artifact) -> tuple[Runner, Runner]:
        """FP32 and INT8 runners on one CPU thread."""


@register_runtime
class OnnxRuntimeBench(BenchRuntime):
    key, label, int8_target, needs_onnx = "onnxruntime", "ONNX Runtime", "onnxruntime", True

    def runners(self, fp32: ModelSpec, fp32_onnx: Path | None, int8: Int8Artifact) -> tuple[Runner, Runner]:
        return OnnxRuntimeRunner(fp32_onnx, threads=1), OnnxRuntimeRunner(int8.onnx, threads=1)


@register_runtime
class PaddleBench(BenchRuntime):
    key, label, int8_target, needs_onnx = "paddle", "Paddle Inference", "paddle-onednn", False

    def runners(self, fp32: ModelSpec, fp32_onnx: Path | None, int8: Int8Artifact) -> tuple[Runner, Runner]:
        # Both on oneDNN so the comparison is INT8 vs FP32, not oneDNN vs Paddle's native kernels.
        return (PaddleInferenceRunner(fp32.model_file, fp32.params_file, threads=1, enable_mkldnn=True),
                PaddleInferenceRunner(int8.spec.model_file, int8.spec.params_file, threads=1, int8=True))


# ------------------------------------------------------------------------------ report


@dataclass
class BenchRow:
    model: str
    family: str
    backend: str
    latency: str  # "runtime" | "end2end"
    fp32_ms: float
    int8_ms: float
    agreement: float | None  # INT8 vs FP32 on held-out images (the fidelity headline)
    metric: str
    method: str
    hardware: str = "CPU"

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


@dataclass
class BenchReport:
    cpu: CpuInfo
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # runtime label -> why it has no rows


def end_to_end(spec: ModelSpec, runner: Runner, image: bytes) -> Callable[[], object]:
    config = spec.pipeline_config()
    preprocess, post = Preprocessor(config), postprocessor(config)

    def run() -> object:
        batch = preprocess([image])
        return post(runner.run({name: batch[name] for name in config.feeds}), batch)

    return run


def method_label(config: QuantizeConfig) -> str:
    if config.method is QuantMethod.PTQ:
        return f"ptq ({config.algo.value})"
    return "qat (ACT distillation)"


def run_benchmark(
    source: str | Path | ModelSpec,
    config: QuantizeConfig,
    runs: int = 30,
    warmup: int = 5,
    runtimes: tuple[str, ...] = ("onnxruntime", "paddle"),
    end2end: bool = True,
    step: Callable[[str], None] = lambda m: None,
) -> BenchReport:
    """Quantize ``source`` once (the build's INT8 stage) and time FP32 vs INT8 per runtime, side by side.
    A runtime whose INT8 artifact cannot be prepared is skipped with its reason."""
    fp32 = source if isinstance(source, ModelSpec) else load_model(source)
    chosen = [RUNTIMES[key]() for key in runtimes]
    report = BenchReport(cpu_info())
    report.notes.append(f"CPU: {report.cpu} — {report.cpu.int8_expectation()}")
    with owned_temp_dir("tritongen-bench-") as tmp:
        work = Path(tmp)
        fp32_onnx = None
        if any(r.needs_onnx for r in chosen):
            step("converting the FP32 model to ONNX")
            fp32_onnx = paddle_to_onnx(fp32, work / "fp32.onnx").path
        result = to_int8(fp32, config, [get_int8_target(r.int8_target) for r in chosen], work, fp32_onnx=fp32_onnx,
                         step=step, gate=False, keep_going=True)
        q = result.quantized
        sample = q.data.holdout.batch([0])  # every feed of one held-out image
        image = q.data.holdout.paths[0].read_bytes()
        method = method_label(q.config)
        for runtime in chosen:
            artifact = result.artifacts.get(runtime.int8_target)
            if artifact is None:
                report.skipped[runtime.label] = result.skipped[runtime.int8_target]
                report.notes.append(f"{runtime.label}: no INT8 rows: {result.skipped[runtime.int8_target]}")
                continue
            report.notes.extend(f"{runtime.label}: {note}" for note in artifact.notes)
            fp32_runner, int8_runner = runtime.runners(fp32, fp32_onnx, artifact)
            metric, value = artifact.fidelity.headline
            step(f"timing {runtime.label}: FP32 vs INT8 runtime, {runs} interleaved runs each")
            f_ms, i_ms = interleaved(lambda: fp32_runner.run(sample), lambda: int8_runner.run(sample), runs, warmup)
            report.rows.append(BenchRow(fp32.name, fp32.family, runtime.label, "runtime", f_ms, i_ms, value, metric, method))
            if end2end:
                step(f"timing {runtime.label}: FP32 vs INT8 end-to-end (decode, preprocess, model, postprocess)")
                f_ms, i_ms = interleaved(end_to_end(fp32, fp32_runner, image), end_to_end(artifact.spec, int8_runner, image),
                                         runs, warmup)
                report.rows.append(BenchRow(fp32.name, fp32.family, runtime.label, "end2end", f_ms, i_ms, value, metric,
                                            method))
    return report


__all__ = ["run_benchmark", "BenchRow", "BenchReport", "RUNTIMES", "BenchRuntime", "end_to_end", "method_label"]
