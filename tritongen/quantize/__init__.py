"""Quantization: ModelSpec + a folder of images -> an INT8 Paddle export with a fidelity report.

The output directory is a complete export (program, params, the deploy yaml and label file
of the source) that ``tritongen build`` accepts like any other, plus ``tritongen_quant.json``
(settings) and ``fidelity.json`` (FP32 vs INT8 on held-out images). It is written into a
temporary directory and renamed into place only when everything, including ``--max-drop``,
has passed.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import TritongenError
from ..intake import ModelSpec, load_model
from ..intake.families import copy_deploy_files
from ..processing.runners import PaddleInferenceRunner
from .calibration import CalibrationData, CalibrationError, load_calibration
from .fidelity import FIDELITY_FILE, FidelityError, FidelityReport, compare

QUANT_FILE = "tritongen_quant.json"
METHODS = ("ptq", "qat")

__all__ = ["quantize", "QuantizedModel", "CalibrationError", "FidelityError", "METHODS"]


@dataclass
class QuantizedModel:
    directory: Path
    spec: ModelSpec  # the INT8 export
    fp32: ModelSpec
    settings: dict[str, Any]
    data: CalibrationData
    fidelity: FidelityReport


def quantize(
    source: str | Path | ModelSpec,
    calib_dir: str | Path,
    output: str | Path,
    method: str = "ptq",
    algo: str = "hist",
    batch_size: int = 4,
    batch_nums: int | None = None,
    skip_tensors: Sequence[str] = (),
    act_config: str | Path | None = None,
    train_iters: int | None = None,
    max_drop: float | None = None,
    force: bool = False,
    holdout_fraction: float = 0.2,
    step: Callable[[str], None] = lambda message: None,
) -> QuantizedModel:
    if method not in METHODS:
        raise TritongenError(f"unknown --method {method!r}; choose ptq or qat")
    fp32 = source if isinstance(source, ModelSpec) else load_model(source)
    if fp32.is_quantized:
        raise TritongenError(f"{fp32.model_file} is already quantized (it has quantize_linear ops)")
    if method == "qat":
        from .qat import check_qat_supported

        check_qat_supported(fp32)
    output = Path(output)
    if output.exists() and not force:
        raise TritongenError(f"{output} exists; pass --force to replace it")
    step(f"preprocessing images in {calib_dir} with {fp32.name}'s own pipeline")
    data = load_calibration(fp32, calib_dir, holdout_fraction=holdout_fraction)
    step(f"{len(data.calibration)} calibration images, {len(data.holdout)} held out for the fidelity check"
         + (f", {len(data.skipped)} skipped" if data.skipped else ""))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.parent) as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        if method == "ptq":
            from .ptq import quantize_ptq

            step(f"post-training quantization (PaddleSlim quant_post_static, algo {algo})")
            settings = quantize_ptq(fp32, data, work, algo=algo, batch_size=batch_size, batch_nums=batch_nums,
                                    skip_tensors=skip_tensors)
        else:
            from .act_config import load_act_config
            from .qat import quantize_qat

            step("quant-aware distillation training (PaddleSlim ACT)")
            config = load_act_config(act_config) if act_config else None
            settings = {"method": "qat", **quantize_qat(fp32, data, work, config=config, batch_size=batch_size,
                                                        train_iters=train_iters)}
        copy_deploy_files(fp32.source_dir, work, exclude=(QUANT_FILE, FIDELITY_FILE))
        int8 = load_model(work)
        if not int8.is_quantized:
            raise TritongenError("the quantizer produced a program without quantize_linear ops")
        step("measuring FP32 vs INT8 (Paddle Inference, oneDNN INT8) on held-out images")
        report = compare(
            PaddleInferenceRunner(fp32.model_file, fp32.params_file),
            PaddleInferenceRunner(int8.model_file, int8.params_file, int8=True),
            data.holdout, fp32.pipeline_config(), reference_name="FP32 Paddle Inference",
            candidate_name="INT8 Paddle Inference (oneDNN)",
        )
        report.save(work / FIDELITY_FILE)
        settings = {**settings, "tritongen_version": __version__, "source": str(fp32.source_dir),
                    "skipped_images": [f"{p}: {why}" for p, why in data.skipped],
                    "holdout_images": [str(p) for p in data.holdout.paths]}
        (work / QUANT_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        report.check(max_drop)
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    spec = load_model(output)
    return QuantizedModel(output, spec, fp32, settings, data, report)
