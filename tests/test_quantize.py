"""Quantization: PaddleSlim PTQ through the model's own preprocessing, fidelity, ORT passes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tritongen.errors import TritongenError
from tritongen.intake import load_model
from tritongen.intake.program import read_program
from tritongen.quantize import CalibrationAlgo, QuantizeConfig, quantize
from tritongen.quantize.calibration import CalibrationError, load_calibration
from tritongen.quantize.fidelity import FidelityError, compare
from tritongen.quantize.ptq import has_scalar_activations

from .conftest import NON_DEFAULT_OPS, run_cli


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, photos):
    """Real photos plus flipped/cropped variants: 20 images of several sizes."""
    import cv2

    d = tmp_path_factory.mktemp("calib")
    for i, p in enumerate(photos):
        img = cv2.imread(str(p))
        for j, variant in enumerate([img, img[:, ::-1], img[::-1], img[img.shape[0] // 4:, img.shape[1] // 4:]]):
            cv2.imwrite(str(d / f"img{i}_{j}.jpg"), variant)
    return d


@pytest.fixture(scope="session")
def quantized(clas_export, calib_dir, tmp_path_factory):
    return quantize(clas_export, QuantizeConfig(calib_dir, algo="hist"), tmp_path_factory.mktemp("q") / "int8")


def test_ptq_writes_a_complete_int8_export(quantized, clas_export):
    d = quantized.directory
    assert {"inference.pdmodel", "inference.pdiparams", "inference_cls.yaml", "colour_labels.txt",
            "fidelity.json", "tritongen_quant.json"} <= {p.name for p in d.iterdir()}
    ops = read_program(d / "inference.pdmodel").op_types
    assert {"quantize_linear", "dequantize_linear"} <= ops
    assert quantized.spec.is_quantized and quantized.spec.labels == load_model(clas_export).labels
    settings = json.loads((d / "tritongen_quant.json").read_text())
    assert settings["algo"] == "hist" and len(settings["calibration_images"]) == len(quantized.data.calibration)
    # held-out images are never calibrated on
    assert not set(settings["holdout_images"]) & {str(p) for p in quantized.data.calibration.paths}
    report = json.loads((d / "fidelity.json").read_text())
    assert report["headline"]["metric"] == "top-1 agreement" and len(report["images"]) == len(quantized.data.holdout)


def test_int8_follows_fp32_on_held_out_images(quantized):
    first = quantized.fidelity.outputs[0]
    assert first.cosine_mean > 0.9, quantized.fidelity.summary()
    assert first.top1_agreement >= 0.5


def test_calibration_goes_through_the_models_preprocessing(clas_export, calib_dir):
    data = load_calibration(load_model(clas_export), calib_dir)
    assert data.calibration.tensors[0].shape == (3, 48, 64) and data.calibration.tensors[0].dtype == np.float32
    assert len(data.holdout) == 4 and len(data.calibration) == 16


def test_bad_calibration_dirs(clas_export, tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        quantize(clas_export, QuantizeConfig(tmp_path / "missing"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images"):
        quantize(clas_export, QuantizeConfig(tmp_path / "empty"), tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(CalibrationError, match="0 usable image"):
        quantize(clas_export, QuantizeConfig(bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_avg_falls_back_on_scalar_activations(tmp_path, calib_dir):
    from tritongen.demo import make_classifier

    export = make_classifier(tmp_path / "gate", transform_ops=NON_DEFAULT_OPS, input_hw=(48, 64), topk=3, scalar_gate=True)
    assert has_scalar_activations(export / "inference.pdmodel")
    result = quantize(export, QuantizeConfig(calib_dir, algo="avg"), tmp_path / "int8")
    assert result.config.algo is CalibrationAlgo.ABS_MAX and "0-D" in result.record.notes[0]


def test_max_drop_fails_and_writes_nothing(clas_export, calib_dir, tmp_path):
    with pytest.raises(FidelityError, match="max-drop"):
        quantize(clas_export, QuantizeConfig(calib_dir, algo="abs_max", max_drop=0.0, batch_nums=1), tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_quantize_cli(clas_export, calib_dir, tmp_path):
    proc = run_cli("quantize", clas_export, "--calib-dir", calib_dir, "--output", tmp_path / "q", "--algo", "mse")
    assert "top-1 agreement" in proc.stdout
    again = run_cli("quantize", clas_export, "--calib-dir", calib_dir, "--output", tmp_path / "q", check=False)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
    bad = run_cli("quantize", clas_export, "--calib-dir", tmp_path / "nope", "--output", tmp_path / "x", check=False)
    assert bad.returncode == 1 and "calibration directory not found" in bad.stderr


def test_fidelity_compare_and_gate(clas_export, calib_dir, tmp_path):
    from tritongen.demo import make_classifier
    from tritongen.processing.runners import PaddleInferenceRunner

    spec = load_model(clas_export)
    other = load_model(make_classifier(tmp_path / "o", transform_ops=NON_DEFAULT_OPS, input_hw=(48, 64), topk=3, seed=5))
    data = load_calibration(spec, calib_dir)
    same = compare(PaddleInferenceRunner(spec.model_file, spec.params_file),
                   PaddleInferenceRunner(spec.model_file, spec.params_file), data.holdout)
    assert same.headline == ("top-1 agreement", 1.0) and same.outputs[0].cosine_min > 0.99999
    same.check(0.0)
    diff = compare(PaddleInferenceRunner(spec.model_file, spec.params_file),
                   PaddleInferenceRunner(other.model_file, other.params_file), data.holdout)
    assert diff.outputs[0].cosine_mean < same.outputs[0].cosine_mean
    with pytest.raises(FidelityError, match="held-out"):
        diff.check(0.0) if diff.headline[1] < 1.0 else diff.check(-1.0)


# ------------------------------------------------------------ ONNX Runtime passes on small graphs

def _qdq_conv_graph(int8_activations: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    zp_type, zp = (TensorProto.INT8, 0) if int8_activations else (TensorProto.UINT8, 128)
    nodes = [
        helper.make_node("Constant", [], ["s"], value=helper.make_tensor("s", TensorProto.FLOAT, [], [0.02])),
        helper.make_node("Constant", [], ["z"], value=helper.make_tensor("z", zp_type, [], [zp])),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wdq"], axis=0),
        helper.make_node("Conv", ["xdq", "wdq"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["s2"], value=helper.make_tensor("s2", TensorProto.FLOAT, [], [0.05])),
        helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["cq"]),  # output QDQ: lets ORT fuse QLinearConv
        helper.make_node("DequantizeLinear", ["cq", "s2", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_uint8_pass_is_exact_and_fuses(tmp_path):
    from tritongen.convert.passes.onnxruntime import activations_to_uint8, fusion_report

    model = _qdq_conv_graph()
    converted, count = activations_to_uint8(model)
    onnx.checker.check_model(converted)
    assert count == 2
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    # Same scale, zero point 128 instead of 0: the uint8 grid holds the int8 grid [-127, 127] exactly.
    np.testing.assert_allclose(_run(converted, x), _run(model, x), rtol=0, atol=1e-5)
    zps = [numpy_helper.to_array(i) for i in converted.graph.initializer if i.name.endswith("zero_point_u8")]
    assert zps and zps[0].dtype == np.uint8 and int(zps[0]) == 128
    onnx.save(converted, str(tmp_path / "u8.onnx"))
    assert fusion_report(tmp_path / "u8.onnx").fused == 1
    again, count = activations_to_uint8(converted)  # idempotent
    assert count == 0


def test_activation_ranges_and_output_renaming():
    from tritongen.convert.passes.onnxruntime import activation_ranges, rename_outputs

    ranges = activation_ranges(_qdq_conv_graph())
    assert set(ranges) == {"x", "c"} and ranges["x"] == pytest.approx((-128 * 0.02, 127 * 0.02))
    renamed = rename_outputs(_qdq_conv_graph(), ["scores"])
    assert renamed.graph.output[0].name == "scores" and renamed.graph.node[-1].output[0] == "scores"
    onnx.checker.check_model(renamed)


def test_already_quantized_input_is_rejected(quantized, calib_dir, tmp_path):
    with pytest.raises(TritongenError, match="already quantized"):
        quantize(quantized.directory, QuantizeConfig(calib_dir), tmp_path / "again")
    shutil.rmtree(tmp_path)


def test_segmentation_export_quantizes_under_its_own_file_names(calib_dir, tmp_path):
    from tritongen.testing.demo_exports import make_segmenter

    transforms = [{"type": "Resize", "target_size": [96, 64]}, {"type": "Normalize"}]
    export = make_segmenter(tmp_path / "seg", with_argmax=False, input_hw=(64, 96),
                            deploy_overrides={"transforms": transforms})
    result = quantize(export, QuantizeConfig(calib_dir, algo="abs_max"), tmp_path / "seg_int8")
    assert (result.directory / "model.pdmodel").is_file() and (result.directory / "deploy.yaml").is_file()
    assert result.spec.is_quantized and result.spec.task == "segmentation"
    # Measured, not assumed: oneDNN INT8 on this tiny segmenter follows FP32 poorly, and the report says so.
    assert len(result.fidelity.images) == len(result.data.holdout) > 0
    seg = result.fidelity.segmentation
    assert result.fidelity.headline == ("pixel agreement", seg.pixel_agreement) and 0.0 <= seg.min_image_agreement <= 1.0
    assert seg.pixels == len(result.data.holdout) * 64 * 96 and result.fidelity.outputs  # cosine stays beside it
    assert "pixel agreement" in json.loads((result.directory / "fidelity.json").read_text())["headline"]["metric"]


def test_qat_refuses_multi_input_detectors_clearly(calib_dir, tmp_path):
    """PTQ quantizes detectors (tests/test_detection_int8.py); QAT distillation does not, and says so."""
    from tritongen.testing.demo_exports import make_detector

    export = make_detector(tmp_path / "det", with_nms=False, input_hw=(128, 128))
    with pytest.raises(TritongenError, match="--method qat .* supports single-input models.*scale_factor.*--method ptq"):
        quantize(export, QuantizeConfig(calib_dir, method="qat"), tmp_path / "det_int8")
    proc = run_cli("build", export, "--int8", "--method", "qat", "--calib-dir", calib_dir, "--output", tmp_path / "r",
                   check=False)
    assert proc.returncode == 1 and "single-input" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "det_int8").exists()


def test_pixel_agreement_counts_flipped_pixels_of_label_maps():
    from tritongen.quantize.fidelity import _label_maps, pixel_agreement

    scores = np.zeros((2, 3, 4, 5), np.float32)
    scores[:, 1] = 1.0  # class 1 everywhere
    flipped = scores.copy()
    flipped[0, 2, 0, :] = 2.0  # one row of image 0 becomes class 2
    result = pixel_agreement(_label_maps(scores), _label_maps(flipped))
    assert result.pixels == 40 and result.pixel_agreement == pytest.approx(35 / 40)
    assert result.min_image_agreement == pytest.approx(15 / 20) and result.classes == 2
    assert result.mean_iou == pytest.approx((35 / 40 + 0 / 5) / 2)
    label_map = np.ones((2, 4, 5), np.int32)  # an argmax export's output compares as it is
    assert pixel_agreement(_label_maps(label_map), _label_maps(scores)).pixel_agreement == 1.0
