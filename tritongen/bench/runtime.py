"""FP32 vs INT8 latency, measured side by side in one run, in the seeds' table layout.

Runtime latency = the model alone (batch 1, 1 thread); end-to-end = decode + preprocess +
model + postprocess of one encoded image. FP32 and INT8 runs are interleaved (A, B, A, B,
...) so that load on a noisy machine hits both alike; the median is reported.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..intake.spec import ModelSpec
from ..processing.pipeline import Preprocessor, postprocessor
from ..processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from .cpu import CpuInfo, cpu_info

CSV_COLUMNS = ["family", "model", "backend", "hardware", "latency", "fp32_ms", "int8_ms", "int8_fp16_ms",
               "int8_fp16_pm_ms", "max_speedup", "fp32_acc", "int8_acc", "metric", "method"]


@dataclass
class BenchRow:
    model: str
    family: str
    backend: str
    latency: str  # "runtime" | "end2end"
    fp32_ms: float
    int8_ms: float
    agreement: float | None  # INT8 vs FP32 on held-out images (top-1 agreement or cosine)
    metric: str
    method: str
    hardware: str = "CPU"

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    def csv_row(self) -> dict:
        return {"family": self.family, "model": self.model, "backend": self.backend, "hardware": self.hardware,
                "latency": self.latency, "fp32_ms": f"{self.fp32_ms:.2f}", "int8_ms": f"{self.int8_ms:.2f}",
                "int8_fp16_ms": "None", "int8_fp16_pm_ms": "None", "max_speedup": f"{self.speedup:.2f}",
                "fp32_acc": "None", "int8_acc": "None" if self.agreement is None else f"{self.agreement:.4f}",
                "metric": self.metric, "method": self.method}


@dataclass
class BenchReport:
    cpu: CpuInfo
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(row.csv_row())


def interleaved(a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``a`` and ``b`` timed alternately."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for i in range(runs):
        first, second, t_first, t_second = (a, b, ta, tb) if i % 2 == 0 else (b, a, tb, ta)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        t_first.append((t1 - t0) * 1000)
        t_second.append((t2 - t1) * 1000)
    return float(np.median(ta)), float(np.median(tb))


def end_to_end(spec: ModelSpec, runner, image: bytes) -> Callable[[], object]:
    config = spec.pipeline_config()
    preprocess, post = Preprocessor(config), postprocessor(config)

    def run() -> object:
        batch = preprocess([image])
        return post(runner.run({name: batch[name] for name in config.feeds}), batch)

    return run


def runtime_pair(
    label: str, fp32_runner, int8_runner, feeds: dict[str, np.ndarray], runs: int, warmup: int
) -> tuple[float, float]:
    """``feeds``: every model input of one sample (a detector's image and scale_factor, ...)."""
    return interleaved(lambda: fp32_runner.run(feeds), lambda: int8_runner.run(feeds), runs, warmup)


def paddle_runners(fp32: ModelSpec, int8: ModelSpec) -> tuple[PaddleInferenceRunner, PaddleInferenceRunner]:
    # Both on oneDNN so the comparison is INT8 vs FP32, not oneDNN vs Paddle's native kernels.
    return (PaddleInferenceRunner(fp32.model_file, fp32.params_file, threads=1, enable_mkldnn=True),
            PaddleInferenceRunner(int8.model_file, int8.params_file, threads=1, int8=True))


def ort_runners(fp32_onnx: Path, int8_onnx: Path) -> tuple[OnnxRuntimeRunner, OnnxRuntimeRunner]:
    return OnnxRuntimeRunner(fp32_onnx, threads=1), OnnxRuntimeRunner(int8_onnx, threads=1)


def run_benchmark(
    source: str | Path,
    calib_dir: str | Path,
    method: str = "ptq",
    algo: str = "hist",
    runs: int = 30,
    warmup: int = 5,
    backends: tuple[str, ...] = ("onnxruntime", "paddle"),
    end2end: bool = True,
    step: Callable[[str], None] = lambda m: None,
) -> BenchReport:
    """Quantize ``source`` and time FP32 vs INT8 for each runtime, side by side."""
    import tempfile

    from ..convert.int8 import int8_for_onnxruntime
    from ..convert.onnx import paddle_to_onnx
    from ..intake import load_model
    from ..quantize import quantize

    fp32 = load_model(source)
    report = BenchReport(cpu_info())
    report.notes.append(f"CPU: {report.cpu} — {report.cpu.int8_expectation()}")
    with tempfile.TemporaryDirectory(prefix="tritongen-bench-") as tmp:
        work = Path(tmp)
        q = quantize(fp32, calib_dir, work / "int8", method=method, algo=algo, step=step)
        sample = q.data.holdout.batch([0])  # every feed of one held-out image
        image = q.data.holdout.paths[0].read_bytes()
        method_name = f"{method} ({q.settings.get('algo', 'ACT')})" if method == "ptq" else "qat (ACT distillation)"
        pairs = []
        if "onnxruntime" in backends:
            step("ONNX Runtime: converting and choosing the INT8 recipe")
            fp32_onnx = paddle_to_onnx(fp32, work / "fp32.onnx").path
            choice = int8_for_onnxruntime(fp32, q.spec, fp32_onnx, q.data, work, step=step)
            report.notes.append(f"ONNX Runtime INT8 recipe {choice.chosen.recipe}: {choice.chosen.fusion}")
            report.notes.extend(choice.notes)
            pairs.append(("ONNX Runtime", *ort_runners(fp32_onnx, choice.chosen.path), choice.chosen.fidelity))
        if "paddle" in backends:
            pairs.append(("Paddle Inference", *paddle_runners(fp32, q.spec), q.fidelity))
        for backend, fp32_runner, int8_runner, fidelity in pairs:
            metric, value = fidelity.headline
            step(f"timing {backend}: FP32 vs INT8 runtime, {runs} interleaved runs each")
            f_ms, i_ms = runtime_pair(backend, fp32_runner, int8_runner, sample, runs, warmup)
            report.rows.append(BenchRow(fp32.name, fp32.family, backend, "runtime", f_ms, i_ms, value, metric, method_name))
            if end2end:
                step(f"timing {backend}: FP32 vs INT8 end-to-end (decode, preprocess, model, postprocess)")
                f_ms, i_ms = interleaved(end_to_end(fp32, fp32_runner, image), end_to_end(q.spec, int8_runner, image),
                                         runs, warmup)
                report.rows.append(BenchRow(fp32.name, fp32.family, backend, "end2end", f_ms, i_ms, value, metric, method_name))
    return report


__all__ = ["run_benchmark", "BenchRow", "BenchReport", "interleaved", "end_to_end", "runtime_pair", "paddle_runners", "ort_runners", "cpu_info"]
