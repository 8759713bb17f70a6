"""tritongen.convert.legacy_quant: the older Paddle INT8 formats (frozen fake_quantize /
fake_dequantize programs, unfrozen QAT fake quant-dequant ops) rewritten to the Q/DQ format.

Fixtures are made by Paddle and PaddleSlim themselves: the demo classifier, detector (NMS in the
graph) and segmenter quantized by ``quant_post_static(onnx_format=False)``, and QAT exports from
Paddle's static passes and dygraph ImperativeQuantAware (tritongen.testing.legacy_qat_exports).
The rewrite must compute what the legacy program computes (Paddle Inference on both), and
paddle2onnx must turn it into an INT8 ONNX model that ONNX Runtime runs close to Paddle.
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle: paddle 2.6 shadows zlib)

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from tritongen.convert.int8 import paddle_qdq_onnx
from tritongen.convert.legacy_quant import ParamsFile, legacy_to_qdq
from tritongen.convert.onnx import sample_inputs
from tritongen.errors import ConversionError
from tritongen.intake import load_model
from tritongen.intake.program import load_program_desc, read_program, save_program_desc
from tritongen.intake.spec import LEGACY_QUANT_OPS, QDQ_OPS, QuantFormat
from tritongen.processing.runners import OnnxRuntimeRunner, PaddleInferenceRunner
from tritongen.testing.quantized_exports import quantize_export

SEG_TRANSFORMS = [{"type": "Resize", "target_size": [96, 64]}, {"type": "Normalize"}]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def paddle_outputs(spec, feeds) -> list[np.ndarray]:
    outputs = PaddleInferenceRunner(spec.model_file, spec.params_file).run(feeds)
    return [outputs[t.name] for t in spec.outputs]


def onnx_outputs(spec, path: Path, feeds) -> list[np.ndarray]:
    outputs = OnnxRuntimeRunner(path).run(feeds)
    return [outputs[t.name] for t in spec.outputs]


def assert_qdq(spec) -> None:
    assert spec.quant_format is QuantFormat.QDQ
    program = read_program(spec.model_file)
    assert not program.op_types & LEGACY_QUANT_OPS and program.op_types >= QDQ_OPS == program.op_types & QDQ_OPS


def assert_int8_onnx(path: Path) -> None:
    """paddle2onnx kept INT8: every Conv reads DequantizeLinear outputs (weights and activations).
    (Paddle's ``mul`` becomes Reshape + MatMul, which paddle2onnx 1.3.1 leaves float in PaddleSlim's
    own Q/DQ programs too.)"""
    graph = onnx.load(str(path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and Counter(n.op_type for n in graph.node)["QuantizeLinear"] > 0
    for node in convs:
        assert [producers.get(i) for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("legacy_quant")


@pytest.fixture(scope="module")
def sources(work) -> dict[str, Path]:
    from tritongen.demo import make_classifier
    from tritongen.testing.demo_exports import make_detector, make_segmenter

    return {
        "cls": make_classifier(work / "cls"),
        "det": make_detector(work / "det", with_nms=True, input_hw=(160, 160)),
        "seg": make_segmenter(work / "seg", with_argmax=False, input_hw=(64, 96),
                              deploy_overrides={"transforms": SEG_TRANSFORMS}),
    }


@pytest.fixture(scope="module")
def frozen(sources, work) -> dict[str, tuple]:
    """name -> (legacy spec, rewritten spec) for the PaddleSlim quant_post_static(onnx_format=False) exports."""
    pairs = {}
    for name, source in sources.items():
        legacy = load_model(quantize_export(source, work / f"{name}_legacy", legacy=True))
        assert legacy.quant_format is QuantFormat.LEGACY
        pairs[name] = (legacy, legacy_to_qdq(legacy, work / f"{name}_qdq"))
    return pairs


# ------------------------------------------------------------------------------ frozen (PaddleSlim PTQ)


def test_params_file_round_trips_byte_for_byte(frozen):
    legacy, _ = frozen["cls"]
    program = load_program_desc(legacy.model_file)
    params = ParamsFile.read(program, legacy.params_file)
    for name in list(params.raw):
        params.set(name, params.array(name))  # every tensor re-serialized from numpy
    out = legacy.params_file.parent / "roundtrip.pdiparams"
    params.write(program, out)
    assert out.read_bytes() == legacy.params_file.read_bytes()
    out.unlink()


@pytest.mark.parametrize("name", ["cls", "det", "seg"])
def test_frozen_export_becomes_a_qdq_export(frozen, name):
    legacy, qdq = frozen[name]
    assert_qdq(qdq)
    assert qdq.source_dir != legacy.source_dir and qdq.model_file.name == legacy.model_file.name
    assert qdq.config_file.is_file() and qdq.config_file.name == legacy.config_file.name
    assert [(t.name, t.shape) for t in qdq.outputs] == [(t.name, t.shape) for t in legacy.outputs]
    assert load_model(qdq.source_dir).quant_format is QuantFormat.QDQ  # a complete export intake accepts
    program = load_program_desc(qdq.model_file)
    names = {v.name for v in program.blocks[0].vars}
    assert not any(n.startswith("channel_scale") for n in names)  # the fake dequant ops' scales went with them
    # Weights are real again (W_q * s / 127) and quantize back to the legacy int8 values.
    params = ParamsFile.read(program, qdq.params_file)
    legacy_params = ParamsFile.read(load_program_desc(legacy.model_file), legacy.params_file)
    weights = 0
    for op in (op for op in program.blocks[0].ops if op.type == "quantize_linear"):
        x, scale = ({v.parameter: v.arguments[0] for v in op.inputs}[p] for p in ("X", "Scale"))
        if x not in legacy_params.raw:  # an activation
            continue
        axis = next(a.i for a in op.attrs if a.name == "quant_axis")
        w, int8 = params.array(x), legacy_params.array(x)
        s = params.array(scale).reshape([-1 if i == axis else 1 for i in range(w.ndim)] if axis >= 0 else [])
        np.testing.assert_array_equal(np.round(w / s * 127), int8)
        assert np.abs(int8).max() == 127 and not np.array_equal(w, int8)
        weights += 1
    ops = Counter(op.type for op in program.blocks[0].ops)
    assert weights == ops["conv2d"] + ops["mul"]


@pytest.mark.parametrize("name", ["cls", "seg"])
def test_paddle_inference_computes_the_same(frozen, name):
    legacy, qdq = frozen[name]
    feeds = sample_inputs(legacy, batch=1)
    for before, after in zip(paddle_outputs(legacy, feeds), paddle_outputs(qdq, feeds)):
        assert cosine(before, after) >= 0.999


def test_detector_rows_and_pre_nms_tensors_are_the_same(frozen, work):
    from tritongen.convert.nms import cut_nms

    legacy, qdq = frozen["det"]
    feeds = sample_inputs(legacy, batch=1)
    (rows_a, counts_a), (rows_b, counts_b) = paddle_outputs(legacy, feeds), paddle_outputs(qdq, feeds)
    assert counts_a.tolist() == counts_b.tolist() and len(rows_a) > 0
    np.testing.assert_allclose(rows_b, rows_a, rtol=1e-4, atol=1e-3)
    cut_legacy, cut_qdq = cut_nms(legacy, work / "det_legacy_cut"), cut_nms(qdq, work / "det_qdq_cut")
    for before, after in zip(paddle_outputs(cut_legacy, feeds), paddle_outputs(cut_qdq, feeds)):
        assert cosine(before, after) >= 0.999
    # NMS runs outside the graph on Triton; the network before it converts to INT8 ONNX.
    path = paddle_qdq_onnx(cut_qdq, work / "det_qdq_cut.onnx")
    assert_int8_onnx(path)
    for paddle, ort in zip(paddle_outputs(cut_qdq, feeds), onnx_outputs(cut_qdq, path, feeds)):
        assert cosine(paddle, ort) >= 0.98


@pytest.mark.parametrize("name", ["cls", "seg"])
def test_paddle2onnx_converts_it_and_onnx_runtime_follows_paddle(frozen, work, name):
    _, qdq = frozen[name]
    path = paddle_qdq_onnx(qdq, work / f"{name}_qdq.onnx")
    assert_int8_onnx(path)
    feeds = sample_inputs(qdq, batch=1)
    for paddle, ort in zip(paddle_outputs(qdq, feeds), onnx_outputs(qdq, path, feeds)):
        assert cosine(paddle, ort) >= 0.98


def test_same_onnx_model_as_paddleslim_onnx_format(frozen, sources, work):
    """The rewritten legacy classifier and PaddleSlim's own onnx_format export of the same
    calibration give ONNX models that compute the same numbers: same scales, same Q/DQ placement."""
    _, rewritten = frozen["cls"]
    native = load_model(quantize_export(sources["cls"], work / "cls_onnx_format"))
    assert native.quant_format is QuantFormat.QDQ
    a = paddle_qdq_onnx(rewritten, work / "cls_rewritten.onnx")
    b = paddle_qdq_onnx(native, work / "cls_onnx_format.onnx")
    for seed in range(2):
        feeds = sample_inputs(native, batch=1, seed=seed)
        for x, y in zip(onnx_outputs(rewritten, a, feeds), onnx_outputs(native, b, feeds)):
            np.testing.assert_allclose(x, y, atol=1e-6)


# ------------------------------------------------------------------------------ QAT formats

QAT_FORMATS = {
    # name: (generator kwargs, legacy ops the export must have, whether Paddle Inference runs the legacy program)
    "static-unfrozen": (dict(kind="static", weight_quantize_type="abs_max"),
                        {"fake_quantize_abs_max", "fake_quantize_moving_average_abs_max", "fake_dequantize_max_abs",
                         "fake_quantize_dequantize_moving_average_abs_max"}, True),
    # Channel-wise weight quant ops in a test program read a scale only training computes: Paddle
    # cannot run the legacy program, the rewrite (abs max of the weights) can.
    "static-unfrozen-channel-wise": (dict(kind="static"), {"fake_channel_wise_quantize_abs_max",
                                                           "fake_channel_wise_dequantize_max_abs"}, False),
    "static-frozen-per-tensor": (dict(kind="static", freeze=True, weight_quantize_type="abs_max",
                                      activation_quantize_type="range_abs_max"),
                                 {"fake_quantize_range_abs_max", "fake_dequantize_max_abs"}, True),
    "dygraph-channel-wise": (dict(kind="dygraph"), {"fake_channel_wise_quantize_dequantize_abs_max",
                                                    "fake_quantize_dequantize_moving_average_abs_max"}, True),
    "dygraph-abs-max": (dict(kind="dygraph", weight_quantize_type="abs_max"),
                        {"fake_quantize_dequantize_abs_max"}, True),
}


def make_qat_export(source: Path, out: Path, kind: str, **kwargs) -> Path:
    from tritongen.testing.legacy_qat_exports import dygraph_qat_export, static_qat_export

    return (static_qat_export if kind == "static" else dygraph_qat_export)(source, out, **kwargs)


@pytest.mark.parametrize("name", list(QAT_FORMATS))
def test_qat_formats(sources, work, name):
    kwargs, expected_ops, paddle_runs_legacy = QAT_FORMATS[name]
    legacy = load_model(make_qat_export(sources["cls"], work / name, **kwargs))
    assert legacy.op_types >= expected_ops
    qdq = legacy_to_qdq(legacy, work / f"{name}_qdq")
    assert_qdq(qdq)
    feeds = sample_inputs(legacy, batch=1)
    after = paddle_outputs(qdq, feeds)
    if paddle_runs_legacy:
        for before, now in zip(paddle_outputs(legacy, feeds), after):
            assert cosine(before, now) >= 0.999
    path = paddle_qdq_onnx(qdq, work / f"{name}.onnx")
    assert_int8_onnx(path)
    for paddle, ort in zip(after, onnx_outputs(qdq, path, feeds)):
        assert cosine(paddle, ort) >= 0.98


# ------------------------------------------------------------------------------ refusals


def test_activation_scale_computed_at_run_time_is_refused(sources, work):
    legacy = load_model(make_qat_export(sources["cls"], work / "dynamic", kind="static",
                                        activation_quantize_type="abs_max"))
    with pytest.raises(ConversionError, match=r"fake_quantize_abs_max computes the scale of activation '.*' from each input at run time"):
        legacy_to_qdq(legacy, work / "dynamic_qdq")


def test_unknown_fake_quant_op_is_refused(frozen, work):
    legacy, _ = frozen["cls"]
    copy = work / "unknown"
    shutil.copytree(legacy.source_dir, copy)
    program = load_program_desc(copy / legacy.model_file.name)
    next(op for op in program.blocks[0].ops if op.type == "fake_quantize_range_abs_max").type = "fake_quantize_lsq"
    save_program_desc(program, copy / legacy.model_file.name)
    spec = dataclasses.replace(legacy, source_dir=copy, model_file=copy / legacy.model_file.name,
                               params_file=copy / legacy.params_file.name)
    with pytest.raises(ConversionError, match="cannot rewrite fake_quantize_lsq to quantize_linear"):
        legacy_to_qdq(spec, work / "unknown_qdq")


def test_other_exports_pass_through_and_the_source_is_never_overwritten(frozen, sources, work):
    fp32 = load_model(sources["cls"])
    assert legacy_to_qdq(fp32, work / "unused") is fp32 and not (work / "unused").exists()
    legacy, qdq = frozen["cls"]
    assert legacy_to_qdq(qdq, work / "unused") is qdq
    with pytest.raises(ConversionError, match="is the source export itself"):
        legacy_to_qdq(legacy, legacy.source_dir)
