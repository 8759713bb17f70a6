"""PaddleSeg exports: ops, intake, and the served path against PaddleSeg's own code.

The oracle is PaddleSeg 2.8 itself (installed with ``pip install --no-deps``):
``paddleseg/transforms/transforms.py`` (``Compose`` reading the image path as the deploy
predictor does) + Paddle Inference + argmax + ``paddleseg.core.infer.reverse_transform``
(``mode='nearest'``). ``paddleseg/__init__.py`` imports the whole training stack, so the
package objects are created empty and only those modules load.
"""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tritongen.errors import IntakeError
from tritongen.intake import load_model
from tritongen.processing.ops import Pipeline
from tritongen.processing.ops_paddleseg import trans_info
from tritongen.processing.pipeline import PipelineConfig, postprocessor
from tritongen.processing.runners import PaddleInferenceRunner
from tritongen.processing.segmentation import SegmentationOutput, SegmentationSettings

from . import paddleseg_oracle
from .conftest import run_cli, start_serve_cli, stop_serve_cli

# Non-default deploy transforms: fixed non-square Resize (w, h) + custom mean/std.
SERVED_TRANSFORMS = [
    {"type": "Resize", "target_size": [96, 64]},
    {"type": "Normalize", "mean": [0.45, 0.5, 0.55], "std": [0.3, 0.25, 0.2]},
]
# Variable-size: short side, then pad to a fixed canvas (padding must be cropped off again).
PADDED_TRANSFORMS = [
    {"type": "ResizeByLong", "long_size": 120},
    {"type": "Padding", "target_size": [128, 128], "im_padding_value": 0},
    {"type": "Normalize", "mean": [0.4], "std": [0.6]},
]


def oracle():
    """(paddleseg.transforms.transforms, paddleseg.core.infer) without paddleseg/__init__."""
    loaded = paddleseg_oracle.load()
    if loaded is None:
        pytest.skip("paddleseg is not installed (pip install --no-deps paddleseg==2.8.0: the test oracle)")
    return loaded


def paddleseg_compose(transforms):
    T, _ = oracle()
    ops = []
    for t in copy.deepcopy(transforms):
        ops.append(getattr(T, t.pop("type"))(**t))
    return T.Compose(ops)


def paddleseg_reference(export: Path, image_path: Path) -> np.ndarray:
    """PaddleSeg deploy semantics: its transforms + Paddle Inference + argmax + reverse_transform."""
    import paddle

    _, infer = oracle()
    deploy = yaml.safe_load((export / "deploy.yaml").read_text())["Deploy"]
    data = paddleseg_compose(deploy["transforms"])({"img": str(image_path)})
    runner = PaddleInferenceRunner(export / deploy["model"], export / deploy["params"])
    (out,) = runner.run({"x": data["img"][None]}).values()
    label = np.argmax(out, axis=1) if out.ndim == 4 else out
    pred = paddle.to_tensor(label[:, None].astype(np.int32))
    return infer.reverse_transform(pred, data["trans_info"], mode="nearest").numpy()[0, 0]


# ------------------------------------------------------------------------------ ops


OP_CONFIGS = {
    "default-normalize": [{"type": "Normalize"}],
    "resize-cubic": [{"type": "Resize", "target_size": [96, 64], "interp": "CUBIC"},
                     {"type": "Normalize", "mean": [0.45, 0.5, 0.55], "std": [0.3, 0.25, 0.2]}],
    "resize-keep-ratio-divisor": [{"type": "Resize", "target_size": [128, 100], "keep_ratio": True, "size_divisor": 32},
                                  {"type": "Normalize", "mean": [0.3], "std": [0.7]}],
    "resize-nearest-area-lanczos": [{"type": "Resize", "target_size": [150, 90], "interp": "NEAREST"},
                                    {"type": "Resize", "target_size": [70, 50], "interp": "AREA"},
                                    {"type": "Resize", "target_size": [81, 77], "interp": "LANCZOS4"},
                                    {"type": "Normalize"}],
    "short-maxsize-padding": [{"type": "ResizeByShort", "short_size": 72, "max_size": 150},
                              {"type": "Padding", "target_size": [160, 160], "im_padding_value": 0},
                              {"type": "Normalize", "mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7]}],
    "long-padding-default": [{"type": "ResizeByLong", "long_size": 100}, {"type": "Padding", "target_size": [112, 104]},
                             {"type": "Normalize"}],
    "limitlong": [{"type": "LimitLong", "max_long": 200, "min_long": 150}, {"type": "Normalize"}],
}


def ours(transforms):
    ops = [{t["type"]: {k: v for k, v in t.items() if k != "type"}} for t in transforms]
    return Pipeline.from_config([{"ToRGB": None}, {"ToFloat32": None}, *ops, {"ToCHW": None}], "paddleseg")


@pytest.mark.parametrize("name", list(OP_CONFIGS))
def test_ops_equal_paddleseg_transforms(photos, name):
    transforms = OP_CONFIGS[name]
    pipeline = ours(transforms)
    for photo in photos:
        expected = paddleseg_compose(transforms)({"img": str(photo)})  # fresh: ResizeByShort keeps state
        got = pipeline(cv2.imread(str(photo), cv2.IMREAD_COLOR))
        assert got.dtype == np.float32 and got.shape == expected["img"].shape, (photo.name, got.shape)
        np.testing.assert_array_equal(got, expected["img"], err_msg=photo.name)
        h, w = cv2.imread(str(photo)).shape[:2]
        assert trans_info(pipeline.ops, (h, w)) == [(k, tuple(s)) for k, s in expected["trans_info"]], photo.name


def test_reverse_transform_equals_paddleseg():
    import paddle

    _, infer = oracle()
    from tritongen.processing.ops_paddleseg import reverse_transform

    rng = np.random.default_rng(0)
    for src, info in [((64, 96), [("resize", (301, 451))]), ((160, 160), [("resize", (233, 97)), ("padding", (150, 62))]),
                      ((37, 53), [("resize", (512, 512))]), ((200, 120), [("resize", (13, 17))])]:
        label = rng.integers(0, 7, src).astype(np.int32)
        expected = infer.reverse_transform(paddle.to_tensor(label[None, None]), info, mode="nearest").numpy()[0, 0]
        np.testing.assert_array_equal(reverse_transform(label, info), expected)


def test_output_shape_and_preprocess_errors():
    assert ours(OP_CONFIGS["resize-cubic"]).output_shape() == [3, 64, 96]
    assert ours(OP_CONFIGS["short-maxsize-padding"]).output_shape() == [3, 160, 160]
    assert ours(OP_CONFIGS["resize-keep-ratio-divisor"]).output_shape() == [3, -1, -1]
    from tritongen.processing.errors import PreprocessError

    with pytest.raises(PreprocessError, match="larger than the 112x104 target_size"):
        ours([{"type": "Padding", "target_size": [112, 104]}])(np.zeros((200, 100, 3), np.uint8))


def test_postprocessor_pads_batch_with_ignore_index():
    cfg = PipelineConfig(task="segmentation", family="paddleseg", feeds={"x": "image"}, outputs=["out"],
                         preprocess=ours(SERVED_TRANSFORMS).to_config(), postprocess={"output_op": "none"},
                         side=["ORIG_SIZE"])
    logits = np.random.default_rng(1).normal(size=(2, 4, 64, 96)).astype(np.float32)
    res = postprocessor(cfg)({"out": logits}, {"ORIG_SIZE": np.array([[30, 50], [70, 20]], np.int32)})
    assert res["LABEL_MAP"].shape == (2, 70, 50) and res["LABEL_MAP"].dtype == np.int32
    assert res["IMAGE_SIZE"].tolist() == [[30, 50], [70, 20]]
    assert (res["LABEL_MAP"][0, 30:] == 255).all() and (res["LABEL_MAP"][1, :, 20:] == 255).all()
    assert res["LABEL_MAP"][0, :30, :50].max() < 4


# ------------------------------------------------------------------------------ intake


def _export_with(tmp_path, base: Path, mutate) -> Path:
    import shutil

    d = tmp_path / "x"
    shutil.copytree(base, d)
    cfg = yaml.safe_load((d / "deploy.yaml").read_text())
    text = mutate(cfg)
    (d / "deploy.yaml").write_text(text if isinstance(text, str) else yaml.safe_dump(cfg))
    return d


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from tritongen.testing.demo_exports import make_segmenter

    root = tmp_path_factory.mktemp("seg_exports")
    return {
        "argmax": make_segmenter(root / "argmax", with_argmax=True, deploy_overrides={"transforms": SERVED_TRANSFORMS}),
        "logits": make_segmenter(root / "logits", with_argmax=False, deploy_overrides={"transforms": SERVED_TRANSFORMS}),
        "padded": make_segmenter(root / "padded", with_argmax=False, deploy_overrides={"transforms": PADDED_TRANSFORMS}),
    }


def test_intake_spec(exports):
    spec = load_model(exports["logits"])
    assert (spec.family, spec.task, spec.side) == ("paddleseg", "segmentation", ["ORIG_SIZE"])
    assert spec.preprocess[0] == {"ToRGB": {}} and spec.preprocess[-1] == {"ToCHW": {}}
    assert spec.preprocessed_shape == [3, 64, 96]
    assert spec.postprocess == SegmentationSettings(SegmentationOutput.LOGITS, num_classes=5)
    assert load_model(exports["argmax"]).postprocess.to_dict() == {"output_op": "argmax"}


def _set(path, value):
    def mutate(cfg):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set(["Deploy", "transforms"], [{"type": "RandomBlur"}]), r"Deploy.transforms\[0\]: .*unsupported op 'RandomBlur'"),
        (_set(["Deploy", "transforms"], [{"type": "Resize", "size": [3, 4]}]), r"Deploy.transforms\[0\]: Resize: unsupported parameter 'size'"),
        (_set(["Deploy", "transforms"], [{"type": "Resize", "interp": "RANDOM"}]), r"Deploy.transforms\[0\]: Resize: interp 'RANDOM'"),
        (_set(["Deploy", "transforms"], [{"type": "Normalize"}, {"type": "Normalize", "std": [0, 1, 1]}]), r"transforms\[1\]: Normalize: 'std'"),
        (_set(["Deploy", "transforms"], [{"type": "ToCHW"}]), r"transforms\[0\]: unsupported transform 'ToCHW'"),
        (_set(["Deploy", "transforms"], [{"mean": [0.5]}]), r"transforms\[0\]: missing key 'type'"),
        (_set(["Deploy", "transforms"], "Normalize"), r"key 'Deploy.transforms' must be a list"),
        (_set(["Deploy", "flip"], True), r"unsupported key 'Deploy.flip'"),
        (_set(["Other"], 1), r"unsupported key 'Other'"),
        (_set(["Deploy", "model"], "missing.pdmodel"), r"key 'Deploy.model' names 'missing.pdmodel'"),
        (_set(["Deploy", "output_op"], "sigmoid"), r"key 'Deploy.output_op' must be one of"),
        (_set(["Deploy", "output_op"], "argmax"), r"Deploy.output_op is 'argmax' but model.pdmodel outputs"),
        (lambda cfg: "Deploy:\n  model: [unclosed\n", r"malformed YAML"),
    ],
    ids=["unknown-transform", "unknown-param", "random-interp", "zero-std", "internal-op", "no-type", "not-a-list",
         "unknown-deploy-key", "unknown-top-key", "missing-model", "bad-output-op", "argmax-mismatch", "malformed"],
)
def test_intake_errors_name_file_and_key(tmp_path, exports, mutate, message):
    d = _export_with(tmp_path, exports["logits"], mutate)
    with pytest.raises(IntakeError, match=message) as info:
        load_model(d)
    assert str(d / "deploy.yaml") in str(info.value)


def test_local_predictor_equals_paddleseg(exports, photos):
    from tritongen.predict import LocalPredictor
    from tritongen.results import Segmentation

    for kind in ("argmax", "padded"):
        predictor = LocalPredictor(load_model(exports[kind]))
        for photo in photos:
            (result,) = predictor.predict([photo])
            assert isinstance(result, Segmentation)
            np.testing.assert_array_equal(result.label_map, paddleseg_reference(exports[kind], photo), err_msg=f"{kind} {photo.name}")
    assert result.colorize().shape == (*result.size, 3)
    assert result.overlay(photo).shape == (*result.size, 3)


# ------------------------------------------------------------------------------ served


MODELS = {"seg_argmax": ("argmax", "python-paddle"), "seg_logits": ("logits", "python-paddle"),
          "seg_ort": ("logits", "python-onnxruntime"), "seg_padded": ("padded", "python-paddle")}


@pytest.fixture(scope="module")
def served(tmp_path_factory, exports):
    repo = tmp_path_factory.mktemp("seg_repo")
    for name, (kind, backend) in MODELS.items():
        run_cli("build", exports[kind], "--name", name, "--backend", backend, "--output", repo)
    server = start_serve_cli(repo, tmp_path_factory.mktemp("seg-serve-logs"))
    yield server
    stop_serve_cli(server)


PARITY: dict[str, list[float]] = {}


def test_ensemble_outputs(served):
    from tritongen.client import SegmentationClient

    with SegmentationClient("seg_argmax", url=served.grpc_url) as client:
        meta = client.metadata()
    outs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert outs == {"LABEL_MAP": ("INT32", [-1, -1, -1]), "IMAGE_SIZE": ("INT32", [-1, 2])}


@pytest.mark.parametrize("model", list(MODELS))
def test_served_equals_paddleseg_deploy(served, exports, photos, model):
    from tritongen.client import SegmentationClient

    kind, backend = MODELS[model]
    with SegmentationClient(model, url=served.grpc_url) as client:
        for photo in photos:
            (result,) = client.segment([photo])
            expected = paddleseg_reference(exports[kind], photo)
            assert result.label_map.shape == expected.shape == cv2.imread(str(photo)).shape[:2], photo.name
            agree = float((result.label_map == expected).mean())
            PARITY.setdefault(model, []).append(agree)
            assert agree >= 0.999, (model, photo.name, agree)
            if backend == "python-paddle":
                assert agree == 1.0, (model, photo.name, agree)


@pytest.mark.parametrize("model", ["seg_argmax", "seg_logits", "seg_ort"])
def test_batch_of_three_different_images_equals_one_by_one(served, photos, model):
    from tritongen.client import SegmentationClient

    three = [photos[1], photos[3], photos[4]]  # 451x300, 97x233, 300x120
    with SegmentationClient(model, url=served.grpc_url) as client:
        batch = client.segment(three)
        single = [client.segment([p])[0] for p in three]
        raw = client.infer_images(three, ["LABEL_MAP", "IMAGE_SIZE"])
    assert [b.size for b in batch] == [cv2.imread(str(p)).shape[:2] for p in three]
    for b, s in zip(batch, single):
        np.testing.assert_array_equal(b.label_map, s.label_map)
    assert raw["LABEL_MAP"].shape == (3, 300, 451)
    assert (raw["LABEL_MAP"][1, :, 97:] == 255).all() and (raw["LABEL_MAP"][2, 120:] == 255).all()


def test_parity_report(served):
    for model, values in sorted(PARITY.items()):
        print(f"{model}: min pixel agreement {min(values):.5f} over {len(values)} images")


def test_colorize_and_overlay_equal_paddleseg_visualize():
    oracle()
    from paddleseg.utils import visualize

    from tritongen.results import Segmentation

    flat = visualize.get_color_map_list(256)
    table = np.array([flat[i:i + 3] for i in range(0, len(flat), 3)], np.uint8)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 9, (20, 30)).astype(np.uint8)
    image = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    c1, c2, c3 = (cv2.LUT(label, table[:, k]) for k in range(3))
    pseudo = np.dstack((c3, c2, c1))  # visualize() stacks BGR
    seg = Segmentation(label.astype(np.int32))
    np.testing.assert_array_equal(seg.colorize(), pseudo)
    np.testing.assert_array_equal(seg.overlay(image), cv2.addWeighted(image, 0.6, pseudo, 0.4, 0))


def test_infer_cli_prints_and_draws_the_mask(served, photos, tmp_path):
    import json

    model = next(iter(MODELS))
    proc = run_cli("infer", model, photos[1], "--url", served.grpc_url, "--json", "--draw", tmp_path / "mask.png")
    (result,) = json.loads(proc.stdout)
    original = cv2.imread(str(photos[1]))
    assert (result["height"], result["width"]) == original.shape[:2]
    assert sum(result["class_pixels"].values()) == original.shape[0] * original.shape[1]
    drawn = cv2.imread(str(tmp_path / "mask.png"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original.astype(int)).mean() > 1
