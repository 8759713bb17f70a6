"""The tiny PaddleDetection / PaddleSeg exports of ``tritongen.testing.demo_exports``: they load in
Paddle Inference, have the feeds, fetches, ops and deploy configs of the real exports, answer
according to image content, and convert with paddle2onnx."""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle: paddle 2.6 shadows zlib)

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritongen.demo import COLOURS
from tritongen.intake.program import read_program
from tritongen.intake.spec import TensorSpec
from tritongen.processing.runners import PaddleInferenceRunner
from tritongen.testing.demo_exports import make_detector, make_segmenter

HW = (320, 320)
A = (320 // 32) ** 2 + (320 // 16) ** 2  # anchors of the default fpn strides (32, 16)
C_DET = 4
C_SEG = 5
NMS_OUT = "multiclass_nms3_0.tmp_0"
NMS_NUM = "multiclass_nms3_0.tmp_2"


# ---------------------------------------------------------------- helpers


def runner(d: Path) -> PaddleInferenceRunner:
    return PaddleInferenceRunner(d / "model.pdmodel", d / "model.pdiparams")


def rgb(colour: str) -> np.ndarray:
    return np.array(COLOURS[colour], np.float32)


def det_image(hw=HW, square: str | None = "red", box=(64, 64, 192, 160), background=(128, 128, 128)) -> np.ndarray:
    """An RGB float image in 0..255, [3, H, W]: a uniform background with one coloured box."""
    img = np.empty((3, *hw), np.float32)
    img[:] = np.array(background, np.float32)[:, None, None]
    if square:
        x1, y1, x2, y2 = box
        img[:, y1:y2, x1:x2] = rgb(square)[:, None, None]
    return img


def det_batch(*images: np.ndarray) -> np.ndarray:
    """PP-YOLOE+ preprocessing (is_scale, norm_type none): pixels / 255."""
    return np.stack(images) / 255.0


def split_rows(out: dict[str, np.ndarray]) -> list[np.ndarray]:
    nums = out[NMS_NUM]
    rows = out[NMS_OUT]
    assert nums.dtype == np.int32 and rows.dtype == np.float32
    assert nums.ndim == 1 and rows.ndim == 2 and rows.shape[1] == 6
    assert int(nums.sum()) == rows.shape[0]
    return np.split(rows, np.cumsum(nums)[:-1])


def to_onnx(d: Path, tmp_path: Path) -> Path:
    """paddle2onnx in a child process (it may abort() on an unsupported graph)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "model.onnx"
    script = (
        "import json, sys, paddle2onnx; a = json.loads(sys.argv[1]); "
        "paddle2onnx.export(a[0], a[1], a[2], opset_version=13, auto_upgrade_opset=True, verbose=False)"
    )
    args = json.dumps([str(d / "model.pdmodel"), str(d / "model.pdiparams"), str(out)])
    proc = subprocess.run([sys.executable, "-c", script, args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def onnx_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def det_nms(tmp_path_factory) -> Path:
    return make_detector(tmp_path_factory.mktemp("det_nms"), with_nms=True)


@pytest.fixture(scope="module")
def det_raw(tmp_path_factory) -> Path:
    return make_detector(tmp_path_factory.mktemp("det_raw"), with_nms=False)


@pytest.fixture(scope="module")
def seg_argmax(tmp_path_factory) -> Path:
    return make_segmenter(tmp_path_factory.mktemp("seg_argmax"), with_argmax=True)


@pytest.fixture(scope="module")
def seg_logits(tmp_path_factory) -> Path:
    return make_segmenter(tmp_path_factory.mktemp("seg_logits"), with_argmax=False)


# ---------------------------------------------------------------- detector


def test_detector_files_and_program_with_nms(det_nms: Path) -> None:
    assert sorted(p.name for p in det_nms.iterdir()) == ["infer_cfg.yml", "model.pdiparams", "model.pdmodel"]
    info = read_program(det_nms / "model.pdmodel")
    assert info.inputs == [TensorSpec("image", "float32", (-1, 3, *HW)), TensorSpec("scale_factor", "float32", (-1, 2))]
    assert info.outputs == [TensorSpec(NMS_OUT, "float32", (-1, 6)), TensorSpec(NMS_NUM, "int32", (-1,))]
    assert "multiclass_nms3" in info.op_types
    assert {"conv2d", "batch_norm", "swish", "sigmoid", "softmax", "transpose2", "concat", "split"} <= info.op_types


def test_detector_with_nms_batches_and_content(det_nms: Path) -> None:
    r = runner(det_nms)
    assert r.input_names == ["image", "scale_factor"] and r.output_names == [NMS_OUT, NMS_NUM]
    red = det_image(square="red", box=(64, 64, 192, 160))
    blue = det_image(square="blue", box=(160, 192, 288, 288))
    plain = det_image(square=None)

    one = split_rows(r.run({"image": det_batch(red), "scale_factor": np.ones((1, 2), np.float32)}))
    assert len(one) == 1 and len(one[0]) > 0
    three = split_rows(r.run({"image": det_batch(red, blue, plain), "scale_factor": np.ones((3, 2), np.float32)}))
    assert [len(rows) > 0 for rows in three] == [True, True, False]  # the grey image has nothing
    np.testing.assert_allclose(three[0], one[0], rtol=1e-5, atol=1e-3)  # batching does not change answers
    nothing = r.run({"image": det_batch(plain, plain), "scale_factor": np.ones((2, 2), np.float32)})
    assert nothing[NMS_OUT].shape == (0, 6) and nothing[NMS_NUM].tolist() == [0, 0]

    for rows, cls, (x1, y1, x2, y2) in ((three[0], 0, (64, 64, 192, 160)), (three[1], 2, (160, 192, 288, 288))):
        assert rows.shape[1] == 6 and len(rows) <= 300
        assert np.all(rows[:, 1] >= 0.01) and np.all(np.diff(rows[:, 1]) <= 1e-6)  # sorted by score
        best = rows[0]
        assert int(best[0]) == cls and best[1] > 0.5
        cx, cy = (best[2] + best[4]) / 2, (best[3] + best[5]) / 2
        assert x1 <= cx <= x2 and y1 <= cy <= y2
        confident = rows[rows[:, 1] > 0.5]
        assert set(confident[:, 0].astype(int)) == {cls}
        assert np.all(confident[:, 4] > confident[:, 2]) and np.all(confident[:, 5] > confident[:, 3])


def test_detector_without_nms_raw_outputs_and_scale_factor(det_raw: Path) -> None:
    info = read_program(det_raw / "model.pdmodel")
    assert [t.name for t in info.inputs] == ["image", "scale_factor"]
    boxes_spec, scores_spec = info.outputs
    assert boxes_spec.name.startswith("tmp_") and boxes_spec.dtype == "float32" and boxes_spec.shape == (-1, A, 4)
    assert scores_spec.name.startswith("concat_") and scores_spec.dtype == "float32" and scores_spec.shape == (-1, C_DET, A)
    assert "multiclass_nms3" not in info.op_types

    r = runner(det_raw)
    images = det_batch(det_image(square="red"), det_image(square="green"), det_image(square=None))
    ones = np.ones((3, 2), np.float32)
    out = r.run({"image": images, "scale_factor": ones})
    boxes, scores = out[boxes_spec.name], out[scores_spec.name]
    assert boxes.shape == (3, A, 4) and scores.shape == (3, C_DET, A)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(boxes[..., 2] > boxes[..., 0]) and np.all(boxes[..., 3] > boxes[..., 1])
    assert scores[0, 0].max() > 0.9 and scores[1, 1].max() > 0.9 and scores[2].max() < 0.01
    single = r.run({"image": images[:1], "scale_factor": ones[:1]})
    np.testing.assert_allclose(single[boxes_spec.name][0], boxes[0], rtol=1e-5, atol=1e-3)

    halved = r.run({"image": images, "scale_factor": np.full((3, 2), 2.0, np.float32)})
    np.testing.assert_allclose(halved[boxes_spec.name], boxes / 2, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(halved[scores_spec.name], scores)
    # scale_factor is [scale_y, scale_x]: y = 1, x = 2 halves only x1 and x2
    x_only = r.run({"image": images, "scale_factor": np.tile(np.float32([[1.0, 2.0]]), (3, 1))})[boxes_spec.name]
    np.testing.assert_allclose(x_only[..., [0, 2]], boxes[..., [0, 2]] / 2, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(x_only[..., [1, 3]], boxes[..., [1, 3]], rtol=1e-5, atol=1e-3)


def test_detector_with_nms_follows_scale_factor(det_nms: Path) -> None:
    r = runner(det_nms)
    images = det_batch(det_image(square="red"), det_image(square="yellow", box=(200, 40, 300, 120)))
    base = split_rows(r.run({"image": images, "scale_factor": np.ones((2, 2), np.float32)}))
    half = split_rows(r.run({"image": images, "scale_factor": np.full((2, 2), 2.0, np.float32)}))
    for b, h in zip(base, half):
        top = b[b[:, 1] > 0.5]
        assert len(top) > 0
        # the confident detections survive; their boxes halve (NMS with normalized=False
        # adds 1 to widths, so weak overlapping rows may differ)
        for row in top[:10]:
            match = h[(h[:, 0] == row[0]) & (np.abs(h[:, 1] - row[1]) < 1e-6)
                      & (np.abs(h[:, 2:] - row[2:] / 2).max(axis=1) < 1e-2)]
            assert len(match) >= 1, row


def test_detector_im_shape_feed_clips_to_the_original_image(tmp_path: Path) -> None:
    d = make_detector(tmp_path / "det", with_nms=False, feed_im_shape=True)
    info = read_program(d / "model.pdmodel")
    assert info.inputs == [TensorSpec("im_shape", "float32", (-1, 2)), TensorSpec("image", "float32", (-1, 3, *HW)),
                           TensorSpec("scale_factor", "float32", (-1, 2))]
    r = runner(d)
    assert r.input_names == ["im_shape", "image", "scale_factor"]
    images = det_batch(det_image(square="red", box=(0, 0, 128, 128)), det_image(square="blue", box=(200, 200, 320, 320)))
    sf = np.float32([[0.5, 0.25], [2.0, 2.0]])  # original images 640x1280 and 160x160
    out = r.run({"im_shape": np.full((2, 2), 320, np.float32), "image": images, "scale_factor": sf})
    boxes = out[info.outputs[0].name]
    assert boxes.shape == (2, A, 4)
    for i, (oh, ow) in enumerate(320 / sf):
        assert boxes[i].min() >= 0
        assert boxes[i][:, [0, 2]].max() <= ow + 1e-3 and boxes[i][:, [1, 3]].max() <= oh + 1e-3
        assert np.isclose(boxes[i][:, [0, 2]].max(), ow) or np.isclose(boxes[i][:, [1, 3]].max(), oh)


def test_detector_infer_cfg(det_nms: Path, det_raw: Path) -> None:
    for d in (det_nms, det_raw):
        text = (d / "infer_cfg.yml").read_text(encoding="utf-8")
        cfg = yaml.safe_load(text)
        assert list(cfg) == ["mode", "draw_threshold", "metric", "use_dynamic_shape", "arch", "min_subgraph_size",
                             "Preprocess", "label_list"]
        assert cfg["mode"] == "paddle" and cfg["draw_threshold"] == 0.5 and cfg["metric"] == "COCO"
        assert cfg["use_dynamic_shape"] is False and cfg["arch"] == "YOLO" and cfg["min_subgraph_size"] == 3
        assert cfg["Preprocess"] == [
            {"interp": 2, "keep_ratio": False, "target_size": [320, 320], "type": "Resize"},
            {"mean": [0.0, 0.0, 0.0], "norm_type": "none", "std": [1.0, 1.0, 1.0], "type": "NormalizeImage"},
            {"type": "Permute"},
        ]
        assert cfg["label_list"] == ["red", "green", "blue", "yellow"]
        assert "- interp: 2\n  keep_ratio: false\n" in text  # block style, sorted inner keys


def test_detector_overrides_change_config_and_normalisation(tmp_path: Path, det_raw: Path) -> None:
    preprocess = [
        {"interp": 1, "keep_ratio": True, "target_size": [256, 320], "type": "Resize"},
        {"is_scale": False, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "type": "NormalizeImage"},
        {"stride": 32, "type": "PadStride"},
        {"type": "Permute"},
    ]
    d = make_detector(tmp_path / "det", with_nms=False, num_classes=14, input_hw=(256, 320),
                      infer_cfg_overrides={"Preprocess": preprocess, "arch": "PPYOLOE", "draw_threshold": 0.3})
    cfg = yaml.safe_load((d / "infer_cfg.yml").read_text(encoding="utf-8"))
    assert cfg["Preprocess"] == preprocess and cfg["arch"] == "PPYOLOE" and cfg["draw_threshold"] == 0.3
    assert cfg["label_list"][:12] == list(COLOURS) and cfg["label_list"][12:] == ["class_12", "class_13"]
    info = read_program(d / "model.pdmodel")
    a = 8 * 10 + 16 * 20
    assert info.inputs[0].shape == (-1, 3, 256, 320)
    assert [t.shape for t in info.outputs] == [(-1, a, 4), (-1, 14, a)]
    # The network undoes the configured normalisation: a red square normalised the
    # ImageNet way (is_scale false) is still found as "red", on a background found as "gray".
    img = det_image(hw=(256, 320), square="red")
    mean, std = np.float32(preprocess[1]["mean"]), np.float32(preprocess[1]["std"])
    x = ((img - mean[:, None, None]) / std[:, None, None])[None]
    out = runner(d).run({"image": x, "scale_factor": np.ones((1, 2), np.float32)})
    scores = out[info.outputs[1].name][0]
    assert scores[0].max() > 0.9 and scores[list(COLOURS).index("gray")].max() > 0.9
    assert scores[1:7].max() < 0.1  # green, blue, yellow, cyan, magenta, orange


def test_detector_is_reproducible(tmp_path: Path, det_raw: Path) -> None:
    again = make_detector(tmp_path / "again", with_nms=False)
    for name in ("model.pdmodel", "model.pdiparams", "infer_cfg.yml"):
        assert (again / name).read_bytes() == (det_raw / name).read_bytes(), name
    other = make_detector(tmp_path / "other", with_nms=False, seed=1)
    assert (other / "model.pdiparams").read_bytes() != (det_raw / "model.pdiparams").read_bytes()


def test_paddle26_fetch_names(tmp_path: Path) -> None:
    d = make_detector(tmp_path / "det", with_nms=True, paddle26_fetch_names=True)
    info = read_program(d / "model.pdmodel")
    assert [t.name for t in info.outputs] == ["save_infer_model/scale_0.tmp_0", "save_infer_model/scale_1.tmp_0"]
    out = runner(d).run({"image": det_batch(det_image()), "scale_factor": np.ones((1, 2), np.float32)})
    assert out["save_infer_model/scale_1.tmp_0"].sum() == out["save_infer_model/scale_0.tmp_0"].shape[0] > 0
    s = make_segmenter(tmp_path / "seg", with_argmax=True, paddle26_fetch_names=True)
    assert [t.name for t in read_program(s / "model.pdmodel").outputs] == ["save_infer_model/scale_0.tmp_0"]


# ---------------------------------------------------------------- segmenter


def seg_input(hw: tuple[int, int], left: str, right: str) -> np.ndarray:
    """[3, H, W] normalised the PaddleSeg way ((im / 255 - 0.5) / 0.5): two colour halves."""
    h, w = hw
    img = np.empty((3, h, w), np.float32)
    img[:, :, : w // 2] = rgb(left)[:, None, None]
    img[:, :, w // 2:] = rgb(right)[:, None, None]
    return (img / 255.0 - 0.5) / 0.5


def test_segmenter_program(seg_argmax: Path, seg_logits: Path) -> None:
    assert sorted(p.name for p in seg_argmax.iterdir()) == ["deploy.yaml", "model.pdiparams", "model.pdmodel"]
    info = read_program(seg_argmax / "model.pdmodel")
    assert info.inputs == [TensorSpec("x", "float32", (-1, 3, -1, -1))]
    assert info.outputs == [TensorSpec("argmax_0.tmp_0", "int32", (-1, -1, -1))]
    assert {"arg_max", "bilinear_interp_v2", "conv2d"} <= info.op_types
    info = read_program(seg_logits / "model.pdmodel")
    assert info.inputs == [TensorSpec("x", "float32", (-1, 3, -1, -1))]
    (out,) = info.outputs
    assert out.dtype == "float32" and out.shape == (-1, C_SEG, -1, -1) and "arg_max" not in info.op_types


@pytest.mark.parametrize("hw", [(64, 96), (61, 90)])
def test_segmenter_maps_are_input_sized_and_follow_content(seg_argmax: Path, seg_logits: Path, hw) -> None:
    batch = np.stack([seg_input(hw, "red", "blue"), seg_input(hw, "green", "yellow"), seg_input(hw, "magenta", "cyan")])
    labels = runner(seg_argmax).run({"x": batch})["argmax_0.tmp_0"]
    assert labels.shape == (3, *hw) and labels.dtype == np.int32
    w = hw[1]
    quarter = w // 4
    assert np.all(labels[0, :, :quarter] == 0) and np.all(labels[0, :, -quarter:] == 2)  # red | blue
    assert np.all(labels[1, :, :quarter] == 1) and np.all(labels[1, :, -quarter:] == 3)  # green | yellow
    one = runner(seg_argmax).run({"x": batch[:1]})["argmax_0.tmp_0"]
    assert one.shape == (1, *hw) and np.array_equal(one[0], labels[0])

    r = runner(seg_logits)
    logits = next(iter(r.run({"x": batch}).values()))
    assert logits.shape == (3, C_SEG, *hw) and logits.dtype == np.float32
    assert np.mean(logits.argmax(axis=1) == labels) > 0.999


def test_segmenter_deploy_yaml(seg_argmax: Path, seg_logits: Path) -> None:
    text = (seg_argmax / "deploy.yaml").read_text(encoding="utf-8")
    assert text.startswith("Deploy:\n  input_shape:\n  - null\n  - 3\n  - null\n  - null\n")
    deploy = yaml.safe_load(text)
    assert deploy == {"Deploy": {
        "model": "model.pdmodel", "params": "model.pdiparams",
        "transforms": [{"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}],
        "input_shape": [None, 3, None, None], "output_op": "argmax", "output_dtype": "int32",
    }}
    logits = yaml.safe_load((seg_logits / "deploy.yaml").read_text(encoding="utf-8"))["Deploy"]
    assert logits["output_op"] == "none" and logits["output_dtype"] == "float32"


def test_segmenter_fixed_shape_softmax_and_overrides(tmp_path: Path) -> None:
    transforms = [{"target_size": [96, 64], "type": "Resize"},
                  {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "type": "Normalize"}]
    d = make_segmenter(tmp_path / "seg", with_argmax=False, output_op="softmax", num_classes=3, input_hw=(64, 96),
                       deploy_overrides={"transforms": transforms})
    deploy = yaml.safe_load((d / "deploy.yaml").read_text(encoding="utf-8"))["Deploy"]
    assert deploy["input_shape"] == [-1, 3, 64, 96] and deploy["transforms"] == transforms
    assert deploy["output_op"] == "softmax" and deploy["output_dtype"] == "float32"
    info = read_program(d / "model.pdmodel")
    assert info.inputs == [TensorSpec("x", "float32", (-1, 3, 64, 96))]
    assert info.outputs[0].name == "softmax_0.tmp_0" and info.outputs[0].dtype == "float32"
    img = np.empty((3, 64, 96), np.float32)
    img[:, :, :48] = rgb("red")[:, None, None] / 255.0
    img[:, :, 48:] = rgb("green")[:, None, None] / 255.0
    mean, std = np.float32(transforms[1]["mean"]), np.float32(transforms[1]["std"])
    x = np.stack([(img - mean[:, None, None]) / std[:, None, None]] * 3)
    probs = runner(d).run({"x": x})["softmax_0.tmp_0"]
    assert probs.shape == (3, 3, 64, 96)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs[:, 0, :, :24] > 0.9) and np.all(probs[:, 1, :, -24:] > 0.9)


# ---------------------------------------------------------------- paddle2onnx


def test_onnx_detector_without_nms_matches_paddle(det_raw: Path, tmp_path: Path) -> None:
    sess = onnx_session(to_onnx(det_raw, tmp_path))
    info = read_program(det_raw / "model.pdmodel")
    assert [i.name for i in sess.get_inputs()] == ["image", "scale_factor"]
    assert [o.name for o in sess.get_outputs()] == [t.name for t in info.outputs]
    rng = np.random.default_rng(0)
    images = det_batch(det_image(square="red"), det_image(square="cyan", box=(10, 200, 120, 300)), det_image(square=None))
    images = (images + rng.normal(0, 0.02, images.shape)).astype(np.float32)
    sf = np.float32([[1.0, 1.0], [0.5, 0.75], [2.0, 1.5]])
    for n in (1, 3):
        feeds = {"image": images[:n], "scale_factor": sf[:n]}
        ref = runner(det_raw).run(feeds)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        for name, value in ref.items():
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-4 * max(1.0, float(np.abs(value).max())),
                                       err_msg=name)


def test_onnx_detector_with_nms_converts_and_runs_at_batch_1(det_nms: Path, tmp_path: Path) -> None:
    sess = onnx_session(to_onnx(det_nms, tmp_path))
    assert [i.name for i in sess.get_inputs()] == ["image", "scale_factor"]
    feeds = {"image": det_batch(det_image(square="red")), "scale_factor": np.ones((1, 2), np.float32)}
    ref = runner(det_nms).run(feeds)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    assert set(got) == {NMS_OUT, NMS_NUM}
    assert int(got[NMS_NUM].sum()) > 0
    best_ref, best_got = ref[NMS_OUT][0], got[NMS_OUT][0]
    assert best_got[0] == best_ref[0]
    np.testing.assert_allclose(best_got[1:], best_ref[1:], rtol=1e-4, atol=1e-2)


def test_onnx_segmenter_matches_paddle(seg_logits: Path, seg_argmax: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for d in (seg_logits, seg_argmax):
        sess = onnx_session(to_onnx(d, tmp_path / d.name))
        assert [i.name for i in sess.get_inputs()] == ["x"]
        for shape in ((1, 3, 64, 96), (3, 3, 61, 90)):
            x = rng.uniform(-1, 1, shape).astype(np.float32)
            (ref,) = runner(d).run({"x": x}).values()
            (got,) = sess.run(None, {"x": x})
            assert got.shape == ref.shape
            if d is seg_logits:
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
            else:
                assert np.mean(got == ref) > 0.999  # argmax: ties may break differently
