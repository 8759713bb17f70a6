"""Exports that arrive already quantized (FastDeploy's ``*_ptq`` / ``*_qat`` archives, ACT output).

There is no FP32 model to compare a conversion with, and the FP32 check (elementwise, 1e-3
of the output's magnitude) does not fit an INT8 graph. What conversion can get wrong is the
graph; what it cannot avoid is rounding. So the served artifact is compared with Paddle
Inference running *the same quantized program* on photo-like sample images, output by
output, by cosine per image (and, for label maps, the share of equal pixels):

- an ONNX artifact (ONNX Runtime, TensorRT) is compared with the program in which PaddleSlim's
  observer-only Q/DQ pairs quantize like the others — paddle2onnx turns every pair into a
  QuantizeLinear/DequantizeLinear, while Paddle's own kernels treat ``only_observer`` pairs as
  scale annotations (measured: a classifier's scores 0.978 cosine against the unmodified
  program, 0.99999 against this one);
- the oneDNN INT8 runtime (python-paddle) is compared with the unmodified program, which
  oneDNN reads the same way. When oneDNN's INT8 kernels do not follow the program, the runtime
  runs the program in float kernels instead, with a note.

Detectors with ``multiclass_nms3`` in the graph are checked on the graph cut before the op:
NMS over near-tied scores reorders rows, the network before it is what conversion can break.
With the FP32 model at hand (a zoo INT8 model's original), INT8-vs-FP32 fidelity is measured
the way ``--int8`` builds measure it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ..intake.families import copy_deploy_files
from ..intake.program import load_program_desc, save_program_desc
from ..intake.spec import ModelSpec
from ..quantize.calibration import ImageSet, model_feeds
from ..quantize.fidelity import FidelityReport, Runner, compare

MIN_COSINE = 0.99  # worst image, per output: rounding moves scores by far less, a wrong graph by far more
MIN_PIXEL_AGREEMENT = 0.98  # label maps: near-tied logits may flip a few pixels
SAMPLE_IMAGES = 4
SAMPLE_KIND = "sample photos"  # FidelityReport.image_kind of these checks
PERTURBATION = 1e-4  # relative input nudge that measures how far rounding alone moves a program's outputs
ROUNDING_FACTOR = 3.0  # a conversion may differ from its reference by this multiple of that


def observers_applied(spec: ModelSpec, out_dir: Path) -> ModelSpec:
    """A copy of ``spec`` in ``out_dir`` whose observer-only Q/DQ pairs quantize: the program as
    paddle2onnx converts it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    program = load_program_desc(spec.model_file)
    for block in program.blocks:
        for op in block.ops:
            for attr in op.attrs:
                if attr.name == "only_observer" and attr.b:
                    attr.b = False
    save_program_desc(program, out_dir / spec.model_file.name)
    shutil.copy2(spec.params_file, out_dir / spec.params_file.name)
    copy_deploy_files(spec.source_dir, out_dir)
    return spec.relocated(out_dir)


def sample_images(spec: ModelSpec, count: int = SAMPLE_IMAGES) -> ImageSet:
    """Photo-like images (:func:`convert.onnx.synthetic_photo`) through the model's own preprocessing."""
    import cv2

    from ..processing.pipeline import Preprocessor
    from .onnx import synthetic_photo

    config = spec.pipeline_config()
    preprocess = Preprocessor(config)
    feeds = [model_feeds(preprocess, cv2.imencode(".png", synthetic_photo(seed=i))[1].tobytes()) for i in range(count)]
    return ImageSet([Path(f"sample-photo-{i}.png") for i in range(count)], feeds, config.image_feed)


class _Perturbed:
    """``runner`` on images nudged by a relative 1e-4 of their spread: how far the program's own
    rounding moves its outputs when inputs differ by no more than two implementations do."""

    def __init__(self, runner: Runner, image_feed: str, relative: float = PERTURBATION, seed: int = 0):
        self.runner, self.image_feed, self.relative = runner, image_feed, relative
        self.rng = np.random.default_rng(seed)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = feeds[self.image_feed]
        noise = self.rng.standard_normal(image.shape).astype(image.dtype)
        return self.runner.run({**feeds, self.image_feed: image + self.relative * float(np.std(image)) * noise})


def check_conversion(reference: Runner, candidate: Runner, spec: ModelSpec, candidate_name: str,
                     reference_name: str) -> FidelityReport:
    """Compare ``candidate`` with ``reference`` (the same quantized program) on sample photos;
    raise ConversionError when they disagree by more than INT8 rounding explains.

    Rounding explains a cosine >= MIN_COSINE (pixel agreement >= MIN_PIXEL_AGREEMENT). Deep
    networks with untrained weights amplify every flipped rounding (measured: a 1e-6 input
    nudge moves a random-weight ResNet50's scores to cosine 0.98 with themselves); there the
    reference's own sensitivity to a nudged input is the yardstick, and the report says so."""
    images = sample_images(spec)
    config = spec.pipeline_config()
    report = compare(reference, candidate, images, config, reference_name=reference_name, candidate_name=candidate_name)
    report.image_kind = SAMPLE_KIND
    problems = _problems(report)
    if problems:
        floor = compare(reference, _Perturbed(reference, images.image_feed), images, config)
        problems = _problems(report, floor)
        report.notes.append(_floor_note(floor))
    if problems:
        raise ConversionError(f"{candidate_name} disagrees with {reference_name} on {len(report.images)} sample "
                              "photos by more than INT8 rounding explains: " + "; ".join(problems))
    return report


def _problems(report: FidelityReport, floor: FidelityReport | None = None) -> list[str]:
    """What exceeds rounding: the fixed limits, or ``ROUNDING_FACTOR`` x the reference's own
    change under a nudged input (``floor``)."""
    def beyond(value: float, limit: float, floor_value: float | None) -> bool:
        return value < limit and (floor_value is None or 1 - value > ROUNDING_FACTOR * (1 - floor_value))

    if report.segmentation is not None:
        agreement = report.segmentation.pixel_agreement
        if beyond(agreement, MIN_PIXEL_AGREEMENT, floor and floor.segmentation.pixel_agreement):
            return [f"{100 * agreement:.2f} % of pixels get the same class (< {100 * MIN_PIXEL_AGREEMENT:g} %"
                    + (f", nudged inputs {100 * floor.segmentation.pixel_agreement:.2f} %)" if floor else ")")]
        return []
    floors = [o.cosine_min for o in floor.outputs] if floor else [None] * len(report.outputs)
    return [f"{o.name}: cosine {o.cosine_min:.4f} on the worst photo (< {MIN_COSINE:g}"
            + (f"; nudged inputs {f:.4f})" if f is not None else ")")
            for o, f in zip(report.outputs, floors) if beyond(o.cosine_min, MIN_COSINE, f)]


def _agreement(report: FidelityReport) -> str:
    """Worst cosine per output, or the pixel agreement of label maps."""
    if report.segmentation is not None:
        return f"pixel agreement {report.segmentation.pixel_agreement:.4f}"
    return ", ".join(f"{o.name} cosine {o.cosine_min:.5f}" for o in report.outputs)


def _floor_note(floor: FidelityReport) -> str:
    return (f"the program is sensitive to rounding (untrained weights?): inputs nudged by {PERTURBATION:g} of their "
            f"spread move its outputs to {_agreement(floor)}; the check allows {ROUNDING_FACTOR:g}x that")


def conversion_summary(report: FidelityReport) -> str:
    """One line: worst cosine per output (or pixel agreement) of a conversion check, and its notes."""
    return (f"{report.candidate} vs {report.reference}: {_agreement(report)} on the worst of {len(report.images)} "
            f"{report.image_kind}" + "".join(f"; {note}" for note in report.notes))


def checked_spec(spec: ModelSpec, work: Path) -> ModelSpec:
    """The program a check runs on: cut before multiclass_nms3 when the graph has it."""
    if not spec.nms_in_graph:
        return spec
    from .nms import cut_nms

    return cut_nms(spec, work / "check_nms_cut")


def onnx_runner(path: Path) -> Runner:
    from ..processing.runners import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=1)


def paddle_runner(spec: ModelSpec, int8: bool = False) -> Runner:
    from ..processing.runners import PaddleInferenceRunner

    return PaddleInferenceRunner(spec.model_file, spec.params_file, int8=int8)


def fidelity_to_fp32(fp32: ModelSpec, candidate: Runner, candidate_name: str) -> FidelityReport:
    """INT8 vs the FP32 original (Paddle Inference) on sample photos, through the FP32 pipeline."""
    report = compare(paddle_runner(fp32), candidate, sample_images(fp32), fp32.pipeline_config(),
                     reference_name="FP32 Paddle Inference", candidate_name=candidate_name)
    report.image_kind = SAMPLE_KIND
    return report
