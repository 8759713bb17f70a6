"""INT8 for PaddleDetection exports (image + scale_factor feeds), both NMS styles.

Calibration carries every feed, PTQ keeps the post-processing in float, fidelity compares
detections, ``build --int8`` serves on the real tritonserver.

The tiny demo detector computes its colour logits as a difference of two large terms
(``2 s p.rgb + b - s |rgb|^2``, s = 40, see ``demo_exports._colour_logits``): in int8 either
term loses the small difference, which flips most scores. No real detector has such a layer;
the tests keep it FP32 with ``--skip-tensors``, as a user would keep a sensitive layer.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import tritongen  # noqa: F401  (zlib before paddle)
from tritongen.client import DetectionClient
from tritongen.intake import load_model
from tritongen.intake.program import load_program_desc, read_program
from tritongen.predict import LocalPredictor
from tritongen.processing.pipeline import Preprocessor
from tritongen.processing.runners import PaddleInferenceRunner
from tritongen.quantize.calibration import ImageSet, load_calibration
from tritongen.quantize.fidelity import FidelityError, compare, detection_agreement, match_detections
from tritongen.testing.demo_exports import make_detector

from .conftest import run_cli, skimage_photo, start_serve_cli, stop_serve_cli

COLOUR_HEAD = ["conv2d_0.tmp_0", "conv2d_0.tmp_1", "tmp_3"]  # the demo's cancellation (module docstring)
SKIP = [arg for name in COLOUR_HEAD for arg in ("--skip-tensors", name)]


@pytest.fixture(scope="module")
def det_calib(tmp_path_factory) -> Path:
    """10 real photos (variants of astronaut, chelsea, coffee); every 5th is held out: the
    upside-down astronaut and the mirrored coffee, both with many detections."""
    d = tmp_path_factory.mktemp("det_calib")
    for name, count in (("astronaut.png", 4), ("chelsea.png", 2), ("coffee.png", 4)):
        img = skimage_photo(name)
        h, w = img.shape[:2]
        variants = [img[h // 4:, w // 4:], img[:, ::-1], img[::-1], cv2.resize(img, (w // 2, h // 3))][:count]
        for j, v in enumerate(variants):
            cv2.imwrite(str(d / f"{name.split('.')[0]}_{j}.jpg"), v)
    return d


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("det_int8_exports")
    return {"nms": make_detector(root / "nms", with_nms=True, seed=3),
            "raw": make_detector(root / "raw", with_nms=False, seed=3)}


@pytest.fixture(scope="module")
def quantized_raw(detectors, det_calib, tmp_path_factory) -> Path:
    """`tritongen quantize` on the NMS-less detector, through the CLI."""
    out = tmp_path_factory.mktemp("det_q") / "raw_int8"
    proc = run_cli("quantize", detectors["raw"], "--calib-dir", det_calib, "--output", out, *SKIP)
    assert "detection agreement" in proc.stdout, proc.stdout
    return out


def _rows(detection) -> np.ndarray:
    """A Detection -> rows (class, score, x1, y1, x2, y2)."""
    return np.array([[c, s, *b] for c, s, b in zip(detection.label_ids, detection.scores, detection.boxes)],
                    np.float32).reshape(-1, 6)


def _derived_from(model_file: Path, feed: str) -> set[str]:
    """Every tensor of the program computed from ``feed``."""
    program = load_program_desc(model_file)
    derived = {feed}
    for op in program.blocks[0].ops:
        if {a for i in op.inputs for a in i.arguments} & derived:
            derived |= {a for o in op.outputs for a in o.arguments}
    return derived


def _quantize_inputs(model_file: Path) -> list[str]:
    program = load_program_desc(model_file)
    return [a for op in program.blocks[0].ops if op.type == "quantize_linear" for i in op.inputs if i.parameter == "X"
            for a in i.arguments]


# ------------------------------------------------------------------------------ unit level


def test_calibration_carries_every_feed_as_served(detectors, det_calib):
    spec = load_model(detectors["nms"])
    data = load_calibration(spec, det_calib)
    assert len(data.calibration) == 8 and len(data.holdout) == 2 and not data.skipped
    assert [p.name for p in data.holdout.paths] == ["astronaut_2.jpg", "coffee_1.jpg"]
    served = Preprocessor(spec.pipeline_config())([data.holdout.paths[0].read_bytes()])
    feeds = data.holdout.batch([0])
    assert set(feeds) == set(served) == {"image", "scale_factor"}
    for name in feeds:
        assert feeds[name].dtype == np.float32
        np.testing.assert_array_equal(feeds[name], served[name])
    assert feeds["image"].shape == (1, 3, 320, 320) and data.holdout.tensors[0].shape == (3, 320, 320)
    # scale_factor differs per image (sizes differ), the shapes do not: any images batch together
    assert data.calibration.uniform and len({tuple(f["scale_factor"]) for f in data.calibration.feeds}) > 2


def test_images_of_different_shapes_batch_one_at_a_time():
    feeds = [{"image": np.zeros((3, 32, h), np.float32), "scale_factor": np.ones(2, np.float32)} for h in (32, 32, 48)]
    images = ImageSet([Path(f"{i}.jpg") for i in range(3)], feeds, "image")
    assert not images.uniform
    assert [b["image"].shape for b in images.batches(8)] == [(1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 48)]
    uniform = images.subset([0, 1])
    assert uniform.uniform and [b["scale_factor"].shape for b in uniform.batches(8)] == [(2, 2)]


def test_detection_agreement_matches_by_class_and_iou():
    ref = [np.array([[0, 0.9, 10, 10, 50, 50], [1, 0.8, 60, 60, 100, 120]], np.float32), np.zeros((0, 6), np.float32)]
    same = detection_agreement(ref, [r.copy() for r in ref], score_threshold=0.5)
    assert (same.agreement, same.mean_iou, same.matched) == (1.0, 1.0, 2)
    nudged = [ref[0] + np.array([0, -0.05, 2, 2, 2, 2], np.float32), ref[1]]
    close = detection_agreement(ref, nudged, score_threshold=0.5)
    assert close.agreement == 1.0 and 0.8 < close.mean_iou < 1.0 and close.max_score_diff == pytest.approx(0.05)
    swapped = ref[0].copy()
    swapped[:, 0] = swapped[::-1, 0]  # same boxes, other classes
    assert match_detections(ref[0], swapped) == [] and match_detections(ref[0], ref[0][::-1]) == [(0, 1, 1.0), (1, 0, 1.0)]
    extra = [np.concatenate([ref[0], [[2, 0.7, 0, 0, 5, 5]]]).astype(np.float32), ref[1]]
    assert detection_agreement(ref, extra, score_threshold=0.5).agreement == pytest.approx(2 / 3)
    assert detection_agreement([ref[1]], [ref[1]], score_threshold=0.5).agreement == 1.0  # nothing on either side


class _Shifted:
    """A runner whose boxes are moved by ``dx`` pixels (a deliberately broken "INT8" model)."""

    def __init__(self, runner, dx: float):
        self.runner, self.dx = runner, dx

    def run(self, feeds):
        out = self.runner.run(feeds)
        boxes = next(iter(out))  # the raw detector's first output: boxes [N, A, 4]
        return {**out, boxes: out[boxes] + np.float32(self.dx)}


def test_detection_fidelity_fails_on_shifted_boxes(detectors, det_calib):
    spec = load_model(detectors["raw"])
    data = load_calibration(spec, det_calib)
    fp32 = PaddleInferenceRunner(spec.model_file, spec.params_file)
    same = compare(fp32, fp32, data.holdout, spec.pipeline_config())
    assert same.headline == ("detection agreement", 1.0) and same.detection.reference_detections > 20
    assert [o.name for o in same.outputs] == [t.name for t in spec.outputs]  # raw outputs keep their cosine
    same.check(0.0)
    shifted = compare(fp32, _Shifted(fp32, 40.0), data.holdout, spec.pipeline_config())
    assert shifted.detection.agreement < 0.3, shifted.summary()
    assert shifted.outputs[0].cosine_mean > 0.9  # cosine on raw boxes barely notices what users see
    with pytest.raises(FidelityError, match="detection agreement .* --max-drop 0.2"):
        shifted.check(0.2)


def test_qat_refuses_detectors_with_a_clear_message(detectors, det_calib, tmp_path):
    proc = run_cli("quantize", detectors["raw"], "--calib-dir", det_calib, "--output", tmp_path / "q", "--method", "qat",
                   check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "supports single-input models" in proc.stderr and "--method ptq" in proc.stderr
    assert not (tmp_path / "q").exists()


# ------------------------------------------------------------------------- quantize (PTQ)


def test_quantized_detector_is_a_complete_export(quantized_raw, detectors):
    fp32 = load_model(detectors["raw"])
    int8 = load_model(quantized_raw)
    assert int8.is_quantized and int8.task == "detection" and int8.feeds == fp32.feeds
    assert (quantized_raw / "infer_cfg.yml").is_file() and int8.labels == fp32.labels
    report = json.loads((quantized_raw / "fidelity.json").read_text())
    assert report["headline"]["metric"] == "detection agreement"
    det = report["detection"]
    assert det["reference_detections"] > 20 and det["score_threshold"] == 0.5 and len(det["per_image"]) == 2
    assert report["headline"]["value"] >= 0.8, report
    settings = json.loads((quantized_raw / "tritongen_quant.json").read_text())
    assert settings["skip_tensors"] == COLOUR_HEAD and set(COLOUR_HEAD) <= set(settings["float_tensors"])
    runner = PaddleInferenceRunner(int8.model_file, int8.params_file, int8=True)
    assert set(runner.input_names) == {"image", "scale_factor"}


def test_ptq_keeps_scale_factor_and_postprocessing_float(quantized_raw):
    model_file = quantized_raw / "model.pdmodel"
    quantized = _quantize_inputs(model_file)
    assert "image" in quantized and any(name.startswith("swish") for name in quantized)  # convs are INT8
    assert not set(quantized) & _derived_from(model_file, "scale_factor")  # scale_factor math stays float
    assert not set(quantized) & set(COLOUR_HEAD)  # --skip-tensors: no observer rounds them either
    fetched = [t.name for t in read_program(model_file).outputs]
    assert not set(quantized) & set(fetched)  # boxes and scores leave in float


# ------------------------------------------------------------------- build --int8 + serve


@pytest.fixture(scope="module")
def int8_det_repo(detectors, det_calib, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("det_int8_repo")
    for name, export, backend in (("qdet_ort", "nms", "python-onnxruntime"), ("qdet_pd", "raw", "python-paddle")):
        run_cli("build", detectors[export], "--layout", "ensemble", "--int8", "--calib-dir", det_calib, "--name", name, "--backend", backend,
                "--output", repo, "--algo", "abs_max", *SKIP)  # abs_max: half the time of hist, as faithful here
    return repo


def test_build_int8_records_detection_fidelity(int8_det_repo):
    info = json.loads((int8_det_repo / "qdet_ort/tritongen_build.json").read_text())["int8"]
    assert info["paddle_fidelity"]["headline"]["metric"] == "detection agreement"
    ort = info["onnxruntime"]
    print("Paddle oneDNN INT8:", info["paddle_fidelity"]["headline"], "ONNX Runtime:", ort["candidates"])
    assert {c["recipe"] for c in ort["candidates"]} == {"paddle-scales", "ort-placement", "ort-calibration"}
    assert all("detection agreement" in c and "mean_iou" in c for c in ort["candidates"]), ort["candidates"]
    assert info["target"] == "onnxruntime" and info["fidelity"]["headline"]["metric"] == "detection agreement"
    assert info["fidelity"]["outputs"] == []
    assert info["fidelity"]["headline"]["value"] >= 0.8, ort
    # The served INT8 graph: no Q/DQ on scale_factor math; NMS reads float boxes and scores.
    model = onnx.load(str(int8_det_repo / "qdet_ort_runtime/1/model.onnx"))
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    derived = {"scale_factor"}
    for node in model.graph.node:
        if set(node.input) & derived:
            derived |= set(node.output)
    quantized = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized and not quantized & derived
    nms = next(node for node in model.graph.node if node.op_type == "NonMaxSuppression")
    assert producer[nms.input[0]] != "DequantizeLinear" and producer[nms.input[1]] != "DequantizeLinear"
    pd = json.loads((int8_det_repo / "qdet_pd/tritongen_build.json").read_text())["int8"]
    assert pd["paddle_fidelity"]["headline"]["metric"] == "detection agreement"
    runtime = json.loads((int8_det_repo / "qdet_pd_runtime/1/runtime.json").read_text())
    assert runtime["int8"] is True


def test_int8_detectors_serve_close_to_fp32(int8_det_repo, detectors, photos, tmp_path_factory):
    served = start_serve_cli(int8_det_repo, tmp_path_factory.mktemp("det_int8_logs"))
    try:
        for model, export, least in (("qdet_ort", "nms", 0.8), ("qdet_pd", "raw", 0.8)):
            reference = LocalPredictor(load_model(detectors[export]), "paddle").predict(photos)
            with DetectionClient(model, url=served.grpc_url) as client:
                results = client.detect(photos)  # one batched request: images of different sizes
            report = detection_agreement([_rows(r) for r in reference], [_rows(r) for r in results], 0.5)
            print(f"{model}: {report.matched}/{report.reference_detections} FP32 detections matched, "
                  f"agreement {report.agreement:.3f}, mean IoU {report.mean_iou:.3f}")
            assert report.reference_detections > 20
            assert report.agreement >= least and report.mean_iou > 0.85, (model, report)
    finally:
        stop_serve_cli(served)
