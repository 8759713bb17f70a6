"""PaddleDetection exports end to end: deploy-exact preprocessing, Paddle-exact NMS, exact batching.

References are independent of tritongen's code: PaddleDetection's own data operators from the
paddledet wheel (``tests/ppdet_oracle.py``; PadStride and LetterBoxResize transcribed from
``deploy/python/preprocess.py`` below), Paddle Inference on the exports, and Paddle's own
``multiclass_nms3`` op for NMS-less exports. One tritonserver serves every model of the module.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import tritongen  # noqa: F401
from tritongen.build import build
from tritongen.client import Detection, DetectionClient
from tritongen.convert.nms import cut_nms
from tritongen.convert.runtime import RuntimeArtifact
from tritongen.emit import plan_models
from tritongen.emit.pbtxt import parse_config
from tritongen.errors import EmitError, IntakeError
from tritongen.intake import load_model
from tritongen.predict import LocalPredictor
from tritongen.processing.detection import multiclass_nms, nms_batch_major
from tritongen.processing.ops import Pipeline
from tritongen.processing.pipeline import PipelineConfig
from tritongen.processing.runners import PaddleInferenceRunner
from tritongen.testing.demo_exports import PPYOLOE_NMS, make_detector

from . import ppdet_oracle
from .ppdet_oracle import paddle_nms
from .conftest import run_cli, start_serve_cli, stop_serve_cli

# PaddleYOLO's YOLOv5 TestReader: keep-ratio resize, Pad to a square with 114, no mean/std.
YOLOV5_PREPROCESS = [
    {"interp": 1, "keep_ratio": True, "target_size": [320, 320], "type": "Resize"},
    {"fill_value": [114.0, 114.0, 114.0], "size": [320, 320], "type": "Pad"},
    {"is_scale": True, "mean": [0.0, 0.0, 0.0], "norm_type": "none", "std": [1.0, 1.0, 1.0], "type": "NormalizeImage"},
    {"type": "Permute"},
]
# JDE/FairMOT-style letterbox with ImageNet mean/std; not square.
LETTERBOX_PREPROCESS = [
    {"target_size": [256, 320], "type": "LetterBoxResize"},
    {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "type": "NormalizeImage"},
    {"type": "Permute"},
]
IOU_MIN, SCORE_ATOL = 0.99, 1e-3
# Non-default multiclass_nms3 settings: cutting the op off must carry them to the postprocess model.
TIGHT_NMS = {"score_threshold": 0.05, "nms_top_k": 200, "keep_top_k": 40, "nms_threshold": 0.45}


# ------------------------------------------------------------------ independent references


def _padstride(im, info, stride):
    if stride <= 0:
        return im, info
    c, h, w = im.shape
    ph, pw = int(np.ceil(float(h) / stride) * stride), int(np.ceil(float(w) / stride) * stride)
    out = np.zeros((c, ph, pw), dtype=np.float32)
    out[:, :h, :w] = im
    return out, info


def _letterbox(im, info, target_size):
    height, width = target_size
    h, w = im.shape[:2]
    ratio = min(float(height) / h, float(width) / w)
    new_shape = (round(w * ratio), round(h * ratio))
    padw, padh = (width - new_shape[0]) / 2, (height - new_shape[1]) / 2
    top, bottom, left, right = round(padh - 0.1), round(padh + 0.1), round(padw - 0.1), round(padw + 0.1)
    im = cv2.resize(im, new_shape, interpolation=cv2.INTER_AREA)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(127.5, 127.5, 127.5))
    info["im_shape"] = np.array([round(h * ratio), round(w * ratio)], dtype=np.float32)
    info["scale_factor"] = np.array([ratio, ratio], dtype=np.float32)
    return im, info


def ppdet_preprocess(preprocess: list[dict], image_path) -> tuple[np.ndarray, dict]:
    """PaddleDetection's deploy preprocessing of one image, with ppdet's own operators."""
    ops = ppdet_oracle.load()
    assert ops is not None, "the paddledet wheel is needed for the reference operators"
    im = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    sample = {"image": im, "im_shape": np.array(im.shape[:2], np.float32), "scale_factor": np.array([1.0, 1.0], np.float32)}
    for entry in preprocess:
        params = {k: v for k, v in entry.items() if k != "type"}
        kind = entry["type"]
        if kind == "PadStride":
            sample["image"], sample = _padstride(sample["image"], sample, params.get("stride", 0))
        elif kind == "LetterBoxResize":
            sample["image"], sample = _letterbox(sample["image"], sample, params["target_size"])
        else:
            sample = getattr(ops, kind)(**params)(sample)
            if kind == "Resize":  # the deploy Resize records the resized size itself (the training op: h * scale)
                sample["im_shape"] = np.array(sample["image"].shape[:2], np.float32)
    info = {"im_shape": np.asarray(sample["im_shape"], np.float32), "scale_factor": np.asarray(sample["scale_factor"], np.float32)}
    return np.asarray(sample["image"], np.float32), info


def reference_detection(export: Path, image_path, threshold=0.5, k=100) -> np.ndarray:
    """Rows (class, score, box) PaddleDetection's deploy predictor shows: ppdet preprocessing,
    Paddle Inference, Paddle's NMS, score >= threshold, best first."""
    cfg = yaml.safe_load((export / "infer_cfg.yml").read_text())
    image, info = ppdet_preprocess(cfg["Preprocess"], image_path)
    runner = PaddleInferenceRunner(export / "model.pdmodel", export / "model.pdiparams")
    feeds = {"image": image[None], "scale_factor": info["scale_factor"][None], "im_shape": info["im_shape"][None]}
    out = runner.run({n: feeds[n] for n in runner.input_names})
    first, second = (out[n] for n in runner.output_names)
    if first.ndim == 2:  # NMS inside the graph
        rows = first if first.shape[-1] == 6 else np.zeros((0, 6), np.float32)
    else:
        section = cfg.get("NMS") or {}  # exports without NMS: the yaml's settings, else PP-YOLOE's
        nms = {k: section.get(k, v) for k, v in PPYOLOE_NMS.items()}
        rows, _ = paddle_nms(first, second, {**nms, "normalized": section.get("normalized", True)})  # ppdet's default
    rows = rows[rows[:, 1] >= threshold]
    return rows[np.argsort(-rows[:, 1], kind="stable")][:k]


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(np.allclose(a, b))


def assert_matches(served: Detection, rows: np.ndarray, what: str) -> float:
    """Same detections (order-free matching by label, score and IoU); returns the worst IoU."""
    assert len(served) == len(rows), f"{what}: {len(served)} detections vs {len(rows)} expected"
    unused = set(range(len(served)))
    worst = 1.0
    for row in rows:
        best = max(
            (j for j in unused if served.label_ids[j] == int(row[0]) and abs(served.scores[j] - row[1]) <= SCORE_ATOL),
            key=lambda j: iou(served.boxes[j], row[2:6]), default=None,
        )
        assert best is not None, f"{what}: no served match for {row.tolist()}"
        overlap = iou(served.boxes[best], row[2:6])
        assert overlap >= IOU_MIN, f"{what}: IoU {overlap:.4f} for {row.tolist()} vs {served.boxes[best]}"
        worst = min(worst, overlap)
        unused.discard(best)
    return worst


# ------------------------------------------------------------------------------ exports


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("det_exports")
    paths = {
        "nms": make_detector(root / "nms", with_nms=True, seed=3),
        "raw_yolo": make_detector(root / "raw_yolo", with_nms=False, seed=3,
                                  infer_cfg_overrides={"Preprocess": YOLOV5_PREPROCESS, "arch": "YOLOv5"}),
        "nms_lb": make_detector(root / "nms_lb", with_nms=True, seed=5, input_hw=(256, 320), feed_im_shape=True,
                                infer_cfg_overrides={"Preprocess": LETTERBOX_PREPROCESS}),
        "nms_tight": make_detector(root / "nms_tight", with_nms=True, seed=3, **TIGHT_NMS),
    }
    paths["nms_tight_cut"] = cut_nms(load_model(paths["nms_tight"]), root / "nms_tight_cut").source_dir
    return paths


# ------------------------------------------------------------------------------ unit level


def _rgb(path):
    return cv2.imread(str(path))


@pytest.mark.parametrize("preprocess", [
    YOLOV5_PREPROCESS,
    LETTERBOX_PREPROCESS,
    [{"interp": 2, "keep_ratio": False, "target_size": [320, 320], "type": "Resize"},
     {"mean": [0.0, 0.0, 0.0], "norm_type": "none", "std": [1.0, 1.0, 1.0], "type": "NormalizeImage"}, {"type": "Permute"}],
    [{"interp": 1, "keep_ratio": True, "target_size": [200, 333], "type": "Resize"},
     {"is_scale": False, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4], "type": "NormalizeImage"},
     {"type": "Permute"}, {"stride": 32, "type": "PadStride"}],
], ids=["yolov5", "letterbox", "ppyoloe+", "keep-ratio-no-scale-padstride"])
def test_ops_equal_ppdet_operators(photos, preprocess):
    pipeline = Pipeline.from_config([{"ToRGB": None}] + [{e["type"]: {k: v for k, v in e.items() if k != "type"}}
                                                         for e in preprocess], "paddledetection")
    for photo in photos:
        got, info = pipeline.run(cv2.imread(str(photo)))
        want, ref_info = ppdet_preprocess(preprocess, photo)
        assert got.dtype == np.float32 and got.shape == want.shape, photo.name
        np.testing.assert_array_equal(got, want, err_msg=photo.name)
        np.testing.assert_array_equal(info["im_shape"], ref_info["im_shape"])
        np.testing.assert_array_equal(info["scale_factor"], ref_info["scale_factor"])


def test_numpy_nms_equals_paddle_multiclass_nms3():
    rng = np.random.default_rng(0)
    n, a, c = 3, 400, 5
    # integer corners on a small grid: many exact ties, touching and duplicate boxes
    xy = rng.integers(0, 60, (n, a, 2)).astype(np.float32)
    wh = rng.integers(0, 25, (n, a, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1)
    scores = np.round(rng.random((n, c, a)), 2).astype(np.float32)
    for nms in (PPYOLOE_NMS, {**PPYOLOE_NMS, "nms_top_k": 50, "keep_top_k": 40, "nms_threshold": 0.3}):
        rows, counts = paddle_nms(boxes, scores, nms)
        ours = [multiclass_nms(boxes[i], scores[i], **nms) for i in range(n)]
        assert [len(r) for r in ours] == counts.tolist()
        np.testing.assert_array_equal(np.concatenate(ours), rows)
        batch_rows, batch_counts = nms_batch_major(rows, counts, nms["keep_top_k"])
        assert batch_rows.shape == (n, nms["keep_top_k"], 6) and batch_counts[:, 0].tolist() == counts.tolist()
        for i in range(n):
            np.testing.assert_array_equal(batch_rows[i, : counts[i]], ours[i])
            assert not batch_rows[i, counts[i]:].any()


def test_intake_reads_infer_cfg(exports):
    spec = load_model(exports["nms"])
    assert spec.family == "paddledetection" and spec.task == "detection"
    assert spec.feeds == {"image": "image", "scale_factor": "scale_factor"}
    assert spec.nms_in_graph and spec.postprocess.keep_top_k == 300
    assert [t.shape for t in spec.outputs] == [(-1, 300, 6), (-1, 1)]
    assert spec.labels == ["red", "green", "blue", "yellow"] and spec.postprocess.score_threshold == 0.5
    raw = load_model(exports["raw_yolo"], score_threshold=0.3, max_detections=7)
    assert not raw.nms_in_graph and raw.postprocess.nms.nms_top_k == 1000
    assert raw.postprocess.nms.normalized is True  # ppdet MultiClassNMS default when the yaml has no NMS section
    assert raw.postprocess.score_threshold == 0.3 and raw.postprocess.max_detections == 7
    lb = load_model(exports["nms_lb"])
    assert lb.feeds == {"im_shape": "im_shape", "image": "image", "scale_factor": "scale_factor"}


def _edit_cfg(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "infer_cfg.yml").read_text())
    edit(cfg)
    (dst / "infer_cfg.yml").write_text(yaml.safe_dump(cfg))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["Preprocess"].append({"type": "RandomFlip"}), "unsupported op 'RandomFlip'"),
    (lambda c: c["Preprocess"][0].update(keep_ratio="yes"), "'keep_ratio' must be true or false"),
    (lambda c: c["Preprocess"][0].update(resize_short=3), "unsupported parameter 'resize_short'"),
    (lambda c: c.pop("Preprocess"), "missing key 'Preprocess'"),
    (lambda c: c.update(label_list="red"), "key 'label_list' must be a list"),
    (lambda c: c.update(draw_threshold="high"), "key 'draw_threshold'"),
    (lambda c: c.update(NMS={"keep_top_k": 100, "nms_radius": 2}), "unsupported key 'NMS.nms_radius'"),
    (lambda c: c["Preprocess"][1].update(size=[320, 256]), "input 'image' has shape"),
], ids=["op", "param-type", "param", "missing", "labels", "threshold", "nms-key", "shape"])
def test_intake_errors_name_file_and_key(exports, tmp_path, edit, message):
    bad = _edit_cfg(exports["raw_yolo"], tmp_path / "bad", edit)
    with pytest.raises(IntakeError) as info:
        load_model(bad)
    assert message in str(info.value) and "infer_cfg.yml" in str(info.value)


def test_plan_models_refuses_nms_graphs_on_platforms_and_python_configs_are_batch_major(exports, tmp_path):
    spec = load_model(exports["nms"])
    for backend in ("onnxruntime", "tensorrt"):
        with pytest.raises(EmitError, match="multiclass_nms3.*cut_nms"):
            plan_models(spec, backend, "det", RuntimeArtifact(tmp_path / "model.onnx"))
    models = plan_models(spec, "python-onnxruntime", "det", RuntimeArtifact(tmp_path / "model.onnx"), layout="ensemble")
    runtime = next(m for m in models if m.name == "det_runtime")
    assert [list(o.dims) for o in runtime.config.output] == [[300, 6], [1]]
    settings = json.loads(runtime.files["1/runtime.json"])
    assert settings["nms_outputs"] == {"rows": "multiclass_nms3_0.tmp_0", "counts": "multiclass_nms3_0.tmp_2",
                                       "keep_top_k": 300, "one_image_per_run": True}


def test_cut_nms_gives_the_graphs_detections_batched(exports, photos):
    """Cutting multiclass_nms3 off (what platform backends get) changes nothing a user sees."""
    spec, cut = load_model(exports["nms_tight"]), load_model(exports["nms_tight_cut"])
    assert not cut.nms_in_graph and "multiclass_nms3" not in cut.op_types
    assert cut.postprocess.nms.to_dict() == {**TIGHT_NMS, "normalized": False, "background_label": -1}
    with_nms, without = LocalPredictor(spec), LocalPredictor(cut)
    total = 0
    for photo in photos:
        (a,), (b,) = with_nms.predict([photo]), without.predict([photo])
        assert a.label_ids == b.label_ids and a.scores == b.scores, photo.name
        np.testing.assert_array_equal(np.asarray(a.boxes), np.asarray(b.boxes))
        total += len(a)
    assert total > 10
    batched = without.predict(photos[:3])  # the cut graph runs a batch (the NMS graph in ONNX cannot)
    assert [len(r) for r in batched] == [len(with_nms.predict([p])[0]) for p in photos[:3]]


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_platform_builds_cut_nms_and_batch(exports, photos, tmp_path, backend):
    result = build(exports["nms"], tmp_path / "repo", backend=backend, name="det")
    runtime = parse_config((tmp_path / "repo/det_runtime/config.pbtxt").read_text(), "det_runtime")
    assert runtime.max_batch_size == 8 and runtime.HasField("dynamic_batching")
    assert [list(o.dims) for o in runtime.output] == [[500, 4], [4, 500]]
    assert [i.name for i in runtime.input] == ["image", "scale_factor"]
    pipeline = PipelineConfig.load(tmp_path / "repo/det_postprocess/1/pipeline.json")
    assert pipeline.postprocess.nms.keep_top_k == 300 and not pipeline.postprocess.nms_in_graph
    assert any("cut off the graph" in note for note in result.spec.notes)
    if backend == "onnxruntime":  # the model Triton's ONNX Runtime backend loads, run on a batch of 3
        predictor = LocalPredictor(result.spec, runtime="onnxruntime", onnx_path=tmp_path / "repo/det_runtime/1/model.onnx")
        for photo, got in zip(photos[:3], predictor.predict(photos[:3])):
            assert_matches(got, reference_detection(exports["nms"], photo), f"{backend} {photo.name}")


def test_local_predictor_equals_reference(exports, photos):
    predictor = LocalPredictor(load_model(exports["raw_yolo"]))
    results = predictor.predict(photos[:3])
    assert all(isinstance(r, Detection) for r in results)
    for photo, result in zip(photos[:3], results):
        assert_matches(result, reference_detection(exports["raw_yolo"], photo), photo.name)


# ------------------------------------------------------------------------------- served

MODELS = {  # ensemble -> (export, backend)
    "det_nms_pd": ("nms", "python-paddle"),
    "det_nms_ort": ("nms", "python-onnxruntime"),
    "yolo_raw_pd": ("raw_yolo", "python-paddle"),
    "yolo_raw_ort": ("raw_yolo", "python-onnxruntime"),
    "lb_nms_ort": ("nms_lb", "python-onnxruntime"),
    "det_cut_ort": ("nms_tight_cut", "python-onnxruntime"),  # the pre/postprocess platform backends get
}


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("det_repo")
    for name, (export, backend) in MODELS.items():
        build(exports[export], repo, backend=backend, name=name)
    server = start_serve_cli(repo, tmp_path_factory.mktemp("det_logs"))
    yield server
    stop_serve_cli(server)


@pytest.mark.parametrize("model", list(MODELS))
def test_served_equals_paddledetection_deploy(served, exports, photos, model):
    export = exports[MODELS[model][0]]
    worst, total = 1.0, 0
    with DetectionClient(model, url=served.grpc_url) as client:
        for photo in photos:
            (result,) = client.detect([photo])
            expected = reference_detection(export, photo)
            worst = min(worst, assert_matches(result, expected, f"{model} {photo.name}"))
            total += len(expected)
            assert result.labels == [["red", "green", "blue", "yellow"][i] for i in result.label_ids]
    assert total > 10  # the comparison compared something
    print(f"{model}: {total} detections, worst IoU {worst:.5f}")


@pytest.mark.parametrize("model", list(MODELS))
def test_batch_of_three_equals_one_by_one(served, exports, photos, model):
    export = exports[MODELS[model][0]]
    chosen = [photos[0], photos[3], photos[4]]  # different sizes and aspect ratios
    with DetectionClient(model, url=served.grpc_url) as client:
        batch = client.detect(chosen)
        single = [client.detect([p])[0] for p in chosen]
    assert len(batch) == 3
    assert [len(b) for b in batch] == [len(s) for s in single]
    assert len({len(b) for b in batch}) > 1 or len(batch[0]) > 1  # not "one box per image"
    for photo, b, s in zip(chosen, batch, single):
        assert b.label_ids == s.label_ids
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-5)
        np.testing.assert_allclose(np.asarray(b.boxes).reshape(-1, 4), np.asarray(s.boxes).reshape(-1, 4), atol=1e-3)
        assert_matches(b, reference_detection(export, photo), f"{model} batched {photo.name}")


def test_draw_marks_the_boxes(exports, photos):
    (result,) = LocalPredictor(load_model(exports["nms"])).predict([photos[0]])
    image = cv2.imread(str(photos[0]))
    drawn = result.draw(image)
    assert drawn.shape == image.shape and (drawn != image).any() and len(result) > 0


def test_infer_cli_prints_and_draws_detections(served, photos, tmp_path):
    model = next(iter(MODELS))
    proc = run_cli("infer", model, photos[0], photos[2], "--url", served.grpc_url, "--json", "--draw", tmp_path / "out.png")
    results = json.loads(proc.stdout)
    with DetectionClient(model, url=served.grpc_url) as client:
        expected = client.detect([photos[0], photos[2]])
    for got, want in zip(results, expected):
        assert got["scores"] == pytest.approx(want.scores) and got["label_ids"] == want.label_ids
    for i, photo in enumerate((photos[0], photos[2])):
        drawn, original = cv2.imread(str(tmp_path / f"out_{i}.png")), cv2.imread(str(photo))
        assert drawn.shape == original.shape
        assert (np.abs(drawn.astype(int) - original.astype(int)).sum() > 0) == (len(expected[i]) > 0)
    table = run_cli("infer", model, photos[0], "--url", served.grpc_url, env={"COLUMNS": "200", "PATH": ""}).stdout
    assert f"{len(expected[0])} detections" in table
