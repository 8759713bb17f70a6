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

DEFAULT_OPSET = 13
# FP32 ONNX Runtime vs Paddle Inference on the same input: kernels differ, results should not.
VALIDATION_ATOL = 1e-4

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
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise ConversionError(f"paddle2onnx failed on {spec.model_file} (exit {proc.returncode}):\n{tail}")
    import onnx

    model = onnx.load(str(out_path), load_external_data=False)
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
        result.validation = compare_with_paddle(spec, out_path)
    return result


def sample_inputs(spec: ModelSpec, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in the range preprocessing produces (roughly standardised)."""
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


def compare_with_paddle(spec: ModelSpec, onnx_path: Path, atol: float = VALIDATION_ATOL) -> dict[str, float]:
    # paddle2onnx's NonMaxSuppression runs one image at a time
    feeds = sample_inputs(spec, batch=1 if spec.postprocess.get("nms_in_graph") else 2)
    expected = PaddleInferenceRunner(spec.model_file, spec.params_file).run(feeds)
    actual = OnnxRuntimeRunner(onnx_path).run(feeds)
    diffs: dict[str, float] = {}
    problems = []
    for name, ref in expected.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape:
            problems.append(f"{name}: shape {None if got is None else got.shape} vs Paddle {ref.shape}")
            continue
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        if diffs[name] > atol * max(1.0, float(np.max(np.abs(ref), initial=0.0))):
            problems.append(f"{name}: max abs diff {diffs[name]:.3g} > {atol:g}")
    if problems:
        raise ConversionError(f"{onnx_path.name} disagrees with Paddle Inference: " + "; ".join(problems))
    return diffs
