"""Paddle -> ONNX with paddle2onnx, checked against Paddle Inference on generated inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ..intake.spec import ModelSpec
from ..processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from ..residue import describe_exit, die_with_parent, last_error_line, owned_temp_dir

DEFAULT_OPSET = 13
# FP32 ONNX Runtime vs Paddle Inference on the same input, as a fraction of the output's
# magnitude: kernel libraries differ by ~1e-4 of it in deep networks (PP-YOLOE, BiSeNetV2);
# a wrong conversion is off by far more.
VALIDATION_ATOL = 1e-3
# Label maps (argmax inside the graph): a near-tie may flip a pixel, a wrong conversion flips many.
LABEL_AGREEMENT = 0.999

# paddle2onnx is a C++ extension that may abort() the process on an unsupported graph, so it
# runs in a child process whose failure becomes a ConversionError instead of killing us.
_EXPORT_SCRIPT = """
import json, sys, zlib
import paddle2onnx
args = json.loads(sys.argv[1])
paddle2onnx.export(args["model"], args["params"], args["out"], opset_version=args["opset"],
                   auto_upgrade_opset=True, verbose=False, enable_onnx_checker=True,
                   deploy_backend="onnxruntime")
"""


@dataclass
class OnnxModel:
    path: Path
    opset: int
    input_names: list[str]
    output_names: list[str]
    validation: dict[str, float] = field(default_factory=dict)  # output name -> max |onnx - paddle|


def paddle_to_onnx(spec: ModelSpec, out_path: Path, opset: int = DEFAULT_OPSET, validate: bool = True) -> OnnxModel:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = {"model": str(spec.model_file), "params": str(spec.params_file), "out": str(out_path), "opset": opset}
    proc = subprocess.run(  # dies with us, even when we are SIGKILLed; killed by run() on an exception
        [sys.executable, "-c", _EXPORT_SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=1800,
        preexec_fn=die_with_parent(),
    )
    if proc.returncode != 0 or not out_path.is_file():
        detail = last_error_line(proc.stderr or proc.stdout)  # its traceback is paddle2onnx's, not the user's
        if detail.endswith("is undefined!"):  # a weight the program names is not in the params file
            detail += f" ({spec.params_file.name} is incomplete or belongs to another model)"
        raise ConversionError(f"paddle2onnx failed on {spec.model_file} ({describe_exit(proc.returncode)}): {detail}")
    import onnx

    from .passes.onnxruntime import fix_nms_squeeze

    # paddle2onnx's multiclass_nms3 squeezes without axes: 0-D ids when one box survives (see the pass).
    model, fixed = fix_nms_squeeze(onnx.load(str(out_path)))
    if fixed:
        onnx.save(model, str(out_path))
    result = OnnxModel(
        path=out_path,
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset),
        input_names=[i.name for i in model.graph.input],
        output_names=[o.name for o in model.graph.output],
    )
    expected_in = [t.name for t in spec.inputs]
    if result.input_names != expected_in:
        raise ConversionError(f"ONNX inputs {result.input_names} differ from the Paddle feeds {expected_in}")
    if validate:
        if spec.nms_in_graph:
            result.validation = _compare_nms_graph(spec, out_path, opset)
        else:
            result.validation = compare_with_paddle(spec, out_path)
    return result


def _compare_nms_graph(spec: ModelSpec, onnx_path: Path, opset: int) -> dict[str, float]:
    """A graph ending in multiclass_nms3: ONNX's NonMaxSuppression orders tied scores its own
    way, so the rows cannot be compared one to one. The network up to NMS is what conversion
    can get wrong: convert the graph cut before the op and compare that elementwise; of the
    full graph, check that it runs and returns well-formed rows and counts."""
    from .nms import cut_nms

    with owned_temp_dir("tritongen-nms-check-") as tmp:
        cut = cut_nms(spec, tmp / "cut")
        diffs = paddle_to_onnx(cut, tmp / "cut.onnx", opset=opset).validation
    outputs = _run_onnx(onnx_path, sample_inputs(spec, batch=1))
    rows, counts = (outputs[t.name] for t in spec.outputs)
    if rows.ndim != 2 or rows.shape[-1] != 6 or int(np.sum(counts)) != len(rows):
        raise ConversionError(f"{onnx_path.name}: the NMS outputs are malformed (rows {rows.shape}, counts {counts.tolist()})")
    return {f"{name} (before NMS)": value for name, value in diffs.items()}


def synthetic_photo(height: int = 360, width: int = 480, seed: int = 0) -> np.ndarray:
    """A photo-like BGR image: smooth colour gradients with a few filled shapes and mild noise."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([
        128 + 100 * np.sin(x / width * np.pi * (1 + c) + rng.uniform(0, np.pi)) * np.cos(y / height * np.pi * (1 + c) / 2)
        for c in range(3)], axis=-1)
    for _ in range(6):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(10, min(height, width) // 3)), colour, -1)
        else:
            size = rng.integers(20, min(height, width) // 2, 2)
            cv2.rectangle(image, centre, (centre[0] + int(size[0]), centre[1] + int(size[1])), colour, -1)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_inputs(spec: ModelSpec, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds of ``batch`` synthetic photo-like images run through the model's own preprocessing.

    Inputs in the range real images give: white noise drives deep networks (random-weight
    benchmark exports especially) into saturated regimes where correct FP32 kernels differ
    by more than any sensible tolerance. Models whose preprocessing cannot run here get
    standard-normal tensors.
    """
    import cv2

    from ..processing.pipeline import Preprocessor

    try:
        preprocess = Preprocessor(spec.pipeline_config())
        images = [cv2.imencode(".png", synthetic_photo(seed=seed + i))[1].tobytes() for i in range(batch)]
        batch_feeds = preprocess(images)
        return {name: batch_feeds[name] for name in spec.feeds or {spec.image_input.name: "image"}}
    except Exception:  # noqa: BLE001  (e.g. a pipeline that needs a label file): fall back to noise
        pass
    rng = np.random.default_rng(seed)
    shape = [batch, *spec.preprocessed_shape]
    if any(d < 0 for d in shape):  # image-dependent size: use the declared size or a square guess
        declared = spec.image_input.shape
        shape = [batch] + [d if d > 0 else (declared[i + 1] if declared[i + 1] > 0 else 224) for i, d in enumerate(shape[1:])]
    feeds = {spec.image_input.name: rng.standard_normal(shape).astype(np.float32)}
    for feed, source in spec.feeds.items():  # detectors: im_shape / scale_factor beside the image
        if source == "im_shape":
            feeds[feed] = np.tile(np.array(shape[2:4], np.float32), (batch, 1))
        elif source == "scale_factor":
            feeds[feed] = np.ones((batch, 2), np.float32)
    return feeds


def _run_onnx(onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime on ``feeds``; a model it cannot load or run is a conversion failure."""
    try:
        return OnnxRuntimeRunner(onnx_path).run(feeds)
    except Exception as exc:  # noqa: BLE001  onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "strides" in first or "ShapeInferenceError" in first:  # e.g. adaptive pooling over unknown H, W
            hint = (". paddle2onnx could not express an op for image-dependent input sizes: re-export the model "
                    "with a fixed input shape (PaddleSeg: tools/export.py --input_shape -1 3 H W)")
        raise ConversionError(f"ONNX Runtime cannot run {onnx_path.name} converted by paddle2onnx: {first}{hint}") from None


def compare_with_paddle(spec: ModelSpec, onnx_path: Path, atol: float = VALIDATION_ATOL) -> dict[str, float]:
    # paddle2onnx's NonMaxSuppression runs one image at a time
    feeds = sample_inputs(spec, batch=1 if spec.nms_in_graph else 2)
    expected = PaddleInferenceRunner(spec.model_file, spec.params_file).run(feeds)
    actual = _run_onnx(onnx_path, feeds)
    diffs: dict[str, float] = {}
    problems = []
    for name, ref in expected.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape:
            problems.append(f"{name}: shape {None if got is None else got.shape} vs Paddle {ref.shape}")
            continue
        if np.issubdtype(ref.dtype, np.integer) and ref.ndim >= 3:
            agreement = float(np.mean(got == ref)) if ref.size else 1.0
            diffs[name] = 1.0 - agreement  # fraction of label pixels that differ
            if agreement < LABEL_AGREEMENT:
                problems.append(f"{name}: {100 * agreement:.2f} % of labels equal < {100 * LABEL_AGREEMENT:g} %")
            continue
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        limit = atol * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        if diffs[name] > limit:
            problems.append(f"{name}: max abs diff {diffs[name]:.3g} > {limit:.3g}")
    if problems:
        raise ConversionError(f"{onnx_path.name} disagrees with Paddle Inference: " + "; ".join(problems))
    return diffs
