"""Our preprocessing/postprocessing against PaddleClas's own deploy code, on real photos."""
from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest

from tritongen.processing import classification, image
from tritongen.processing.errors import OpConfigError, PreprocessError
from tritongen.processing.ops import Pipeline

from . import paddleclas_oracle
from .conftest import NON_DEFAULT_OPS, skimage_photo

CONFIGS = {
    "imagenet_default": [
        {"ResizeImage": {"resize_short": 256}},
        {"CropImage": {"size": 224}},
        {"NormalizeImage": {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": ""}},
        {"ToCHWImage": None},
    ],
    "non_default": NON_DEFAULT_OPS,
    "fixed_size_chw_normalize": [
        {"ResizeImage": {"size": [96, 72], "interpolation": "area"}},
        {"ToCHWImage": None},
        {"NormalizeImage": {"scale": 1.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 58.0, 57.0], "order": "chw"}},
    ],
    "four_channels": [
        {"ResizeImage": {"resize_short": 40}},
        {"CropImage": {"size": 32}},
        {"NormalizeImage": {"channel_num": 4, "order": "hwc"}},
        {"ToCHWImage": None},
    ],
}


def oracle_preprocess(ops_config, bgr):
    preprocess, _ = paddleclas_oracle.load()
    ops = preprocess.create_operators(ops_config)
    img = bgr[:, :, ::-1]  # predict_cls.py: cv2.imread(...)[:, :, ::-1]
    for op in ops:
        img = op(img)
    return img


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("photo", ["astronaut.png", "chelsea.png", "rocket.jpg", "coffee.png"])
def test_preprocess_matches_paddleclas_deploy(config_name, photo):
    ops_config = CONFIGS[config_name]
    bgr = skimage_photo(photo)
    ours = Pipeline.from_config([{"ToRGB": None}, *ops_config])(bgr)
    theirs = oracle_preprocess(ops_config, bgr)
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_static_output_shape(config_name):
    pipeline = Pipeline.from_config([{"ToRGB": None}, *CONFIGS[config_name]])
    declared = pipeline.output_shape()
    actual = pipeline(skimage_photo("chelsea.png")).shape
    assert [d if d != -1 else a for d, a in zip(declared, actual)] == list(actual)


def test_pipeline_config_round_trip():
    pipeline = Pipeline.from_config([{"ToRGB": None}, *NON_DEFAULT_OPS])
    again = Pipeline.from_config(pipeline.to_config())
    img = skimage_photo("coffee.png")
    np.testing.assert_array_equal(pipeline(img), again(img))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_matches_paddleclas_deploy(k, tmp_path):
    _, postprocess = paddleclas_oracle.load()
    label_file = tmp_path / "labels.txt"
    label_file.write_text("".join(f"{i} class {i}\n" for i in range(10)))
    rng = np.random.default_rng(k)
    probs = rng.random((6, 10)).astype(np.float32)
    probs[0, [2, 5]] = 0.99  # a tie: the order must follow PaddleClas's argsort
    theirs = postprocess.Topk(topk=k, class_id_map_file=str(label_file))(probs)
    ids, scores = classification.topk(probs, k)
    labels = classification.parse_label_file(label_file)
    for row, expected in enumerate(theirs):
        assert ids[row].tolist() == expected["class_ids"]
        # PaddleClas rounds scores to 5 decimals for printing; ours are the exact float32 outputs.
        np.testing.assert_allclose(scores[row], expected["scores"], rtol=0, atol=5e-6)
        assert [labels[i] for i in ids[row]] == expected["label_names"]


def _encode(img, ext=".png"):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_decode_matches_cv2_imread(tmp_path):
    img = skimage_photo("astronaut.png")
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), img)
    np.testing.assert_array_equal(image.decode_image(path.read_bytes()), cv2.imread(str(path)))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty image"),
        (b"definitely not an image", "cannot decode"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode"),
    ],
)
def test_decode_rejects_bad_bytes(data, message):
    with pytest.raises(PreprocessError, match=message):
        image.decode_image(data)


def test_decode_rejects_tiny_and_huge_images():
    with pytest.raises(PreprocessError, match="1x1 pixels"):
        image.decode_image(_encode(np.zeros((1, 1, 3), np.uint8)))
    image.decode_image(_encode(np.zeros((8, 8, 3), np.uint8)))  # the documented minimum passes
    # A PNG header claiming 20000x20000: rejected before decoding.
    header = bytearray(_encode(np.zeros((16, 16, 3), np.uint8)))
    header[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")
    with pytest.raises(PreprocessError, match="pixel limit"):
        image.decode_image(bytes(header))


def test_crop_larger_than_image_is_a_clear_error():
    pipeline = Pipeline.from_config([{"CropImage": {"size": 64}}])
    with pytest.raises(PreprocessError, match="smaller than the 64x64 crop"):
        pipeline(np.zeros((20, 100, 3), np.uint8))


def test_scale_expression_is_not_evaluated_as_python():
    with pytest.raises(OpConfigError, match="arithmetic"):
        Pipeline.from_config([{"NormalizeImage": {"scale": "__import__('os').getcwd()"}}])


def test_processing_package_is_self_contained():
    """Generated Triton models get a copy of tritongen/processing: it may import only the
    standard library, numpy, cv2 and (lazily) the runtimes — never tritongen itself."""
    import sys

    allowed = {"numpy", "cv2", "onnxruntime", "paddle"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    root = Path(classification.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:
                    continue
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            for name in names:
                assert name in allowed | stdlib, f"{path.name} imports {name}"
