"""Quantization: ModelSpec + QuantizeConfig -> QuantizedModel (an INT8 Paddle export + fidelity).

The output directory is a complete export (program, params, the deploy yaml and label file
of the source) that ``tritongen build`` accepts like any other, plus ``tritongen_quant.json``
(:class:`QuantizationRecord`) and ``fidelity.json`` (FP32 vs INT8 Paddle Inference on
held-out images). It is written into a temporary directory and renamed into place only when
everything has passed.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import TritongenError
from ..intake import ModelSpec, load_model
from ..intake.families import copy_deploy_files
from ..intake.program import read_program
from ..intake.spec import QDQ_OPS
from ..processing.runners import PaddleInferenceRunner
from .calibration import CalibrationData, CalibrationError, load_calibration
from .config import QUANT_FILE, CalibrationAlgo, OrtRecipe, QuantizationRecord, QuantizeConfig, QuantMethod
from .fidelity import FIDELITY_FILE, FidelityError, FidelityReport, compare

__all__ = ["quantize", "QuantizedModel", "QuantizeConfig", "QuantizationRecord", "QuantMethod", "CalibrationAlgo",
           "OrtRecipe", "CalibrationError", "FidelityError", "QUANT_FILE"]


@dataclass
class QuantizedModel:
    directory: Path
    spec: ModelSpec  # the INT8 export
    fp32: ModelSpec
    record: QuantizationRecord
    data: CalibrationData
    fidelity: FidelityReport  # INT8 vs FP32, both in Paddle Inference (oneDNN INT8), on held-out images

    @property
    def config(self) -> QuantizeConfig:
        """The settings as they ran."""
        return self.record.config


def quantize(
    source: str | Path | ModelSpec,
    config: QuantizeConfig,
    output: str | Path,
    force: bool = False,
    gate: bool = True,
    step: Callable[[str], None] = lambda message: None,
) -> QuantizedModel:
    """Quantize ``source``; with ``gate`` (``tritongen quantize``) ``config.max_drop`` applies to the
    Paddle INT8 fidelity here, otherwise the caller gates the artifact it serves (convert.int8)."""
    fp32 = source if isinstance(source, ModelSpec) else load_model(source)
    if fp32.is_quantized:
        raise TritongenError(f"{fp32.model_file} is already quantized ({fp32.quant_format.value} ops); "
                             "build it as it is: tritongen build DIR")
    if config.method is QuantMethod.QAT:
        from .qat import check_qat_supported

        check_qat_supported(fp32)
    output = Path(output)
    if output.exists() and not force:
        raise TritongenError(f"{output} exists; pass --force to replace it")
    step(f"preprocessing images in {config.calib_dir} with {fp32.name}'s own pipeline")
    data = load_calibration(fp32, config.calib_dir, holdout_fraction=config.holdout_fraction)
    step(f"{len(data.calibration)} calibration images, {len(data.holdout)} held out for the fidelity check"
         + (f", {len(data.skipped)} skipped" if data.skipped else ""))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.parent) as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        record = _run_quantizer(fp32, config, data, work, step)
        copy_deploy_files(fp32.source_dir, work, exclude=(QUANT_FILE, FIDELITY_FILE))
        int8 = _int8_spec(fp32, work)
        step("measuring FP32 vs INT8 (Paddle Inference, oneDNN INT8) on held-out images")
        report = compare(
            PaddleInferenceRunner(fp32.model_file, fp32.params_file),
            PaddleInferenceRunner(int8.model_file, int8.params_file, int8=True),
            data.holdout, fp32.pipeline_config(), reference_name="FP32 Paddle Inference",
            candidate_name="INT8 Paddle Inference (oneDNN)",
        )
        report.save(work / FIDELITY_FILE)
        record.save(work)
        if gate:
            report.check(config.max_drop)
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    return QuantizedModel(output, _int8_spec(fp32, output), fp32, record, data, report)


def _run_quantizer(fp32: ModelSpec, config: QuantizeConfig, data: CalibrationData, work: Path,
                   step: Callable[[str], None]) -> QuantizationRecord:
    common = dict(source=fp32.source_dir, calibration_images=list(data.calibration.paths),
                  holdout_images=list(data.holdout.paths), skipped_images=[f"{p}: {why}" for p, why in data.skipped],
                  tritongen_version=__version__)
    if config.method is QuantMethod.PTQ:
        from .ptq import quantize_ptq

        step(f"post-training quantization (PaddleSlim quant_post_static, algo {config.algo.value})")
        used = quantize_ptq(fp32, data, work, algo=config.algo.value, batch_size=config.batch_size,
                            batch_nums=config.batch_nums, skip_tensors=config.skip_tensors,
                            keep_tail_float=fp32.task_kind.keeps_tail_float)
        effective = replace(config, algo=CalibrationAlgo(used.algo), batch_size=used.batch_size, batch_nums=used.batch_nums)
        return QuantizationRecord(config=effective, float_tensors=tuple(used.float_tensors), notes=list(used.notes),
                                  **common)
    from .act_config import load_act_config
    from .qat import quantize_qat

    step("quant-aware distillation training (PaddleSlim ACT)")
    act = load_act_config(config.act_config) if config.act_config else None
    effective_act = quantize_qat(fp32, data, work, config=act, batch_size=config.batch_size, train_iters=config.train_iters)
    return QuantizationRecord(config=config, act_config=effective_act, **common)


def _int8_spec(fp32: ModelSpec, directory: Path) -> ModelSpec:
    """The FP32 spec with the quantized program's files: same deploy knowledge, no second intake."""
    model_file, params_file = directory / fp32.model_file.name, directory / fp32.params_file.name
    if not model_file.is_file() or not params_file.is_file():
        raise TritongenError(f"the quantizer wrote no {model_file.name} / {params_file.name} into {directory}")
    program = read_program(model_file)
    if not program.op_types & QDQ_OPS:
        raise TritongenError("the quantizer produced a program without quantize_linear ops")
    if [t.name for t in program.inputs] != [t.name for t in fp32.inputs] or len(program.outputs) != len(fp32.outputs):
        raise TritongenError(f"the quantized program's feeds/fetches {[t.name for t in program.inputs]} -> "
                             f"{[t.name for t in program.outputs]} do not match the FP32 model's")
    return fp32.relocated(directory, program)  # PaddleSlim may rename a fetched variable
