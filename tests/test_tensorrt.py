"""TensorRT path: ONNX graph passes, the tensorrt_plan backend, ONNX Runtime's TensorRT accelerator.

TensorRT itself cannot be installed on the development machine: tests that need it skip with
"TensorRT is not installed: ...". Everything else (passes, configs, the trtexec script) runs
here for real: passes are checked numerically with ONNX Runtime CPU, configs with Triton's
model_config_pb2, the script with bash against a stand-in trtexec that only records its
arguments.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from tritongen.build import build
from tritongen.convert.passes import PASSES, run_passes
from tritongen.convert.passes.tensorrt import remove_int32_bias_dequantize, to_fp16_outside_qdq
from tritongen.convert.tensorrt import (
    TRITON_TRTEXEC,
    TensorRTError,
    TensorRTUnavailable,
    build_plan,
    check_precision,
    prepare_onnx,
    tensorrt_available,
    trtexec_command,
)
from tritongen.convert.runtime import RuntimeArtifact, convert_for_runtime
from tritongen.emit import plan_models
from tritongen.emit.backends import RuntimeOptions
from tritongen.errors import EmitError
from tritongen.intake import load_model

from .conftest import run_cli

MAX_BATCH = 16


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        pytest.skip(f"TensorRT is not installed: {exc}")
    if int(trt.__version__.split(".")[0]) < 10:
        pytest.skip(f"TensorRT is not installed: found {trt.__version__}, these tests need TensorRT 10")
    return trt


# ---------------------------------------------------------------------------------------------
# small hand-built graphs


def conv_graph(qdq: bool = False, opset: int = 13, seed: int = 0, shape_path: bool = True) -> onnx.ModelProto:
    """x[N,3,16,16] -> Conv -> BN -> Relu -> Resize x2 (scales) -> Resize back (sizes computed in
    float32 from Shape) -> Conv -> GAP -> Flatten (output "feat") -> Gemm -> Softmax ("prob").

    With ``qdq``: symmetric int8 Q/DQ on the input and after Relu, int8 per-channel weights, and
    an int32 per-channel bias behind a DequantizeLinear (what TensorRT rejects). Without
    ``shape_path`` the second Resize takes constant scales instead of float-computed sizes.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", **attrs))
        return outputs[0]

    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    x = "x"
    if qdq:
        sx = np.float32(0.02)
        sw = (np.abs(w1).reshape(8, -1).max(1) / 127).astype(np.float32)
        init("sx", sx), init("zx", np.int8(0))
        x = node("DequantizeLinear", [node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), "sx", "zx"], ["xdq"])
        init("w1_q", np.clip(np.round(w1 / sw[:, None, None, None]), -127, 127).astype(np.int8))
        init("sw1", sw), init("zw1", np.zeros(8, np.int8))
        w1_name = node("DequantizeLinear", ["w1_q", "sw1", "zw1"], ["w1"], axis=0)
        sb = (sx * sw).astype(np.float32)
        init("b1_q", np.round(b1 / sb).astype(np.int32)), init("sb1", sb)
        b1_name = node("DequantizeLinear", ["b1_q", "sb1"], ["b1"], axis=0)
    else:
        w1_name, b1_name = init("w1", w1), init("b1", b1)
    y = node("Conv", [x, w1_name, b1_name], ["c1"], pads=[1, 1, 1, 1])
    init("bn_s", rng.uniform(0.5, 1.5, 8).astype(np.float32)), init("bn_b", rng.normal(0, 0.1, 8).astype(np.float32))
    init("bn_m", rng.normal(0, 0.1, 8).astype(np.float32)), init("bn_v", rng.uniform(0.5, 2, 8).astype(np.float32))
    y = node("Relu", [node("BatchNormalization", [y, "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"])], ["r1"])
    if qdq:
        init("sr", np.float32(0.03)), init("zr", np.int8(0))
        y = node("DequantizeLinear", [node("QuantizeLinear", [y, "sr", "zr"], ["r1q"]), "sr", "zr"], ["r1dq"])
    init("up_scales", np.array([1, 1, 2, 2], np.float32))
    up = node("Resize", [y, "", "up_scales"], ["up"], mode="nearest")
    init("halves", np.array([1, 1, 0.5, 0.5], np.float32))
    if shape_path:
        shape_f = node("Cast", [node("Shape", [up], ["up_shape"])], ["up_shape_f"], to=TensorProto.FLOAT)
        sizes = node("Cast", [node("Mul", [shape_f, "halves"], ["down_f"])], ["down_sizes"], to=TensorProto.INT64)
        down = node("Resize", [up, "", "", sizes], ["down"], mode="nearest")
    else:
        down = node("Resize", [up, "", "halves"], ["down"], mode="nearest")
    init("w2", rng.normal(0, 0.2, (4, 8, 3, 3)).astype(np.float32)), init("b2", rng.normal(0, 0.1, 4).astype(np.float32))
    feat = node("Flatten", [node("GlobalAveragePool", [node("Conv", [down, "w2", "b2"], ["c2"], pads=[1, 1, 1, 1])], ["gap"])], ["feat"])
    init("wf", rng.normal(0, 1, (4, 5)).astype(np.float32)), init("bf", rng.normal(0, 0.1, 5).astype(np.float32))
    node("Softmax", [node("Gemm", [feat, "wf", "bf"], ["logits"])], ["prob"], axis=1)
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(0, 1, (3, 3, 16, 16)).astype(np.float32)}


def ops(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


# ---------------------------------------------------------------------------------------------
# passes


def test_passes_are_registered():
    assert {"remove_int32_bias_dequantize", "to_fp16_outside_qdq"} <= set(PASSES)
    model, reports = run_passes(conv_graph(qdq=True), ["remove_int32_bias_dequantize", "to_fp16_outside_qdq"])
    assert [r.name for r in reports] == ["remove_int32_bias_dequantize", "to_fp16_outside_qdq"]
    assert reports[0].counts["folded"] == 1 and reports[1].counts["int32_dequantize_folded"] == 0
    with pytest.raises(KeyError, match="unknown graph pass"):
        run_passes(model, ["nope"])


def test_int32_bias_dequantize_is_folded_exactly(images):
    model = conv_graph(qdq=True)
    before = ort_run(model, images)
    folded, report = remove_int32_bias_dequantize(model)
    assert report.counts == {"folded": 1, "skipped": 0, "constants_dropped": 2}  # b1_q and sb1
    onnx.checker.check_model(folded, full_check=True)
    assert len(ops(model, "DequantizeLinear")) == 4 and len(ops(folded, "DequantizeLinear")) == 3
    consts = inits(folded)
    assert "b1_q" not in consts and "sb1" not in consts
    assert all(i.data_type != TensorProto.INT32 for i in folded.graph.initializer)
    # The folded bias is (q - 0) * per-channel scale, in float32, under the DQ output's name.
    b1 = numpy_helper.to_array(consts["b1"])
    q, scale = numpy_helper.to_array(inits(model)["b1_q"]), numpy_helper.to_array(inits(model)["sb1"])
    assert b1.dtype == np.float32 and np.array_equal(b1, q.astype(np.float32) * scale)
    after = ort_run(folded, images)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert remove_int32_bias_dequantize(model)[0] is not model  # the input is never modified
    assert len(ops(model, "DequantizeLinear")) == 4


def test_int32_dequantize_with_zero_point_and_per_tensor_scale():
    q = np.array([-300, 0, 7, 2**20], np.int32)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["bias"]), helper.make_node("Add", ["x", "bias"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(1e-3), "s"),
         numpy_helper.from_array(np.int32(5), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    folded, report = remove_int32_bias_dequantize(model)
    assert report.counts["folded"] == 1 and not ops(folded, "DequantizeLinear")
    assert set(inits(folded)) == {"bias"}
    np.testing.assert_array_equal(ort_run(folded, feeds)["y"], ort_run(model, feeds)["y"])


def test_fp16_pass_without_qdq(images):
    model = conv_graph(qdq=False)
    reference = ort_run(model, images)
    half, report = to_fp16_outside_qdq(model)
    assert report.counts["opset_before"] == report.counts["opset_after"] == 13  # no Q/DQ: opset kept
    # The boundary stays float32, behind one Cast per graph input and output.
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT] * 2
    assert report.counts["casts_inserted"] == 3
    types = value_types(half)
    for name in ("c1", "bn1", "r1", "up", "down", "c2", "logits", "prob_fp16", "feat_fp16"):
        assert types[name] == TensorProto.FLOAT16, name
    consts = inits(half)
    for name in ("w1", "b1", "bn_s", "bn_b", "bn_m", "bn_v", "w2", "b2", "wf", "bf"):
        assert consts[name].data_type == TensorProto.FLOAT16, name
    # Resize scales and the float shape computation are untouched.
    assert consts["up_scales"].data_type == TensorProto.FLOAT and consts["halves"].data_type == TensorProto.FLOAT
    assert types["up_shape_f"] == types["down_f"] == TensorProto.FLOAT and types["down_sizes"] == TensorProto.INT64
    out = ort_run(half, images)
    for name, expected in reference.items():
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], expected, rtol=1e-2, atol=5e-3, err_msg=name)
    assert not np.array_equal(out["prob"], reference["prob"])  # it really computed in float16
    # Idempotent: a second run changes nothing.
    again, report = to_fp16_outside_qdq(half)
    assert again.graph == half.graph and report.counts["casts_inserted"] == 0


def test_fp16_pass_with_qdq(images):
    model = conv_graph(qdq=True)
    reference = ort_run(model, images)
    half, report = to_fp16_outside_qdq(model)
    # float16 scales need QuantizeLinear/DequantizeLinear-19; the int32 bias DQ is folded first.
    assert (report.counts["opset_before"], report.counts["opset_after"]) == (13, 19)
    assert [o.version for o in half.opset_import if o.domain in ("", "ai.onnx")] == [19]
    assert report.counts["int32_dequantize_folded"] == 1 and report.counts["qdq_nodes_fp16"] == 5
    consts, types = inits(half), value_types(half)
    for dq in ops(half, "DequantizeLinear"):
        assert types[dq.input[0]] in (TensorProto.INT8, TensorProto.UINT8)
        assert consts[dq.input[1]].data_type == TensorProto.FLOAT16  # scale typed like the output
        assert types[dq.output[0]] == TensorProto.FLOAT16
    for q in ops(half, "QuantizeLinear"):
        assert types[q.input[0]] == consts[q.input[1]].data_type == TensorProto.FLOAT16
    assert consts["b1"].data_type == TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT] * 2
    assert consts["up_scales"].data_type == TensorProto.FLOAT
    out = ort_run(half, images)
    for name, expected in reference.items():
        np.testing.assert_allclose(out[name], expected, rtol=1e-2, atol=1e-2, err_msg=name)


def test_fp16_pass_clips_out_of_range_constants():
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array([1e5, -2.0, 1e-9], np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    half, report = to_fp16_outside_qdq(model)
    assert report.counts["values_clipped"] == 1 and report.counts["values_flushed_to_zero"] == 1
    assert "clipped" in " ".join(report.notes)
    np.testing.assert_array_equal(numpy_helper.to_array(inits(half)["k"]), np.array([65504, -2, 0], np.float16))


def test_check_precision_refuses_what_a_strongly_typed_build_would_not_do():
    with pytest.raises(TensorRTError, match="no float16 tensors"):
        check_precision(conv_graph(), fp16=True, int8=False)
    with pytest.raises(TensorRTError, match="no QuantizeLinear/DequantizeLinear"):
        check_precision(conv_graph(), fp16=False, int8=True)
    with pytest.raises(TensorRTError, match="int32"):
        check_precision(conv_graph(qdq=True), fp16=False, int8=True)
    symmetric = remove_int32_bias_dequantize(conv_graph(qdq=True))[0]
    check_precision(symmetric, fp16=False, int8=True)
    uint8 = onnx.ModelProto()
    uint8.CopyFrom(symmetric)
    for init in uint8.graph.initializer:
        if init.name == "zr":  # ONNX Runtime's CPU recipe: uint8 activations, zero point 128
            init.CopyFrom(numpy_helper.from_array(np.uint8(128), "zr"))
    with pytest.raises(TensorRTError, match="not symmetric signed int8"):
        check_precision(uint8, fp16=False, int8=True)


def test_prepare_onnx_writes_a_model_tensorrt_can_take(tmp_path, images):
    src = tmp_path / "qdq.onnx"
    onnx.save(conv_graph(qdq=True), str(src))
    reports = prepare_onnx(src, tmp_path / "out.onnx", fp16=True, int8=True)
    assert [r.name for r in reports] == ["remove_int32_bias_dequantize", "to_fp16_outside_qdq"]
    prepared = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(prepared, full_check=True)
    check_precision(prepared, fp16=True, int8=True)
    np.testing.assert_allclose(ort_run(prepared, images)["prob"], ort_run(src, images)["prob"], atol=1e-2)


# ---------------------------------------------------------------------------------------------
# trtexec command and plan building


def test_trtexec_command_is_strongly_typed_with_one_batch_profile():
    assert trtexec_command("m.onnx", "m.plan", "x", [3, 48, 64], 16) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", "--stronglyTyped",
        "--minShapes=x:1x3x48x64", "--optShapes=x:8x3x48x64", "--maxShapes=x:16x3x48x64", "--skipInference",
    ]
    one = trtexec_command("m.onnx", "m.plan", "in:0", [3, 8, 8], 1, trtexec="/t/trtexec")
    assert one[0] == "/t/trtexec" and "--optShapes='in:0':1x3x8x8" in one and "--maxShapes='in:0':1x3x8x8" in one
    assert not {"--fp16", "--int8", "--best"} & set(one)  # precision comes from the graph
    with pytest.raises(TensorRTError, match="fixed per-image input shape"):
        trtexec_command("m.onnx", "m.plan", "x", [3, -1, -1], 8)


def test_build_plan_without_tensorrt_says_so(tmp_path):
    if tensorrt_available():
        pytest.skip("TensorRT is installed here; test_build_plan_builds_a_real_engine covers build_plan")
    src = tmp_path / "m.onnx"
    onnx.save(conv_graph(), str(src))
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_plan(src, tmp_path / "m.plan", "x", [3, 16, 16], 4)
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8-fp16"])
def test_build_plan_builds_a_real_engine(tmp_path, variant):
    trt = require_tensorrt()
    src = tmp_path / "src.onnx"
    onnx.save(conv_graph(qdq=variant.startswith("int8"), shape_path=False), str(src))
    fp16, int8 = "fp16" in variant, variant.startswith("int8")
    prepared = tmp_path / "model.onnx"
    prepare_onnx(src, prepared, fp16=fp16, int8=int8)
    info = build_plan(prepared, tmp_path / "model.plan", "x", [3, 16, 16], 8, fp16=fp16, int8=int8)
    assert info.path.is_file() and info.size_bytes == info.path.stat().st_size > 0
    assert (info.min_shape, info.opt_shape, info.max_shape) == ((1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
    assert not list(tmp_path.glob(".model.plan.*"))
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(info.path.read_bytes())
    assert engine is not None and engine.num_optimization_profiles == 1
    assert [tuple(s) for s in engine.get_tensor_profile_shape("x", 0)] == [(1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)]
    for name in ("x", "prob", "feat"):  # the float32 boundary survives FP16/INT8 inside
        assert engine.get_tensor_dtype(name) == trt.float32


# ---------------------------------------------------------------------------------------------
# the tensorrt backend's repository


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.fixture(scope="module")
def trt_repo(clas_export, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo-tensorrt")
    result = build(clas_export, repo, backend="tensorrt", name="m", max_batch_size=MAX_BATCH, fp16=True)
    assert result.repository.served_locally is False
    if not tensorrt_available():
        assert any("NOT built" in n and "build_plan.sh" in n and "serving GPU" in n for n in result.notes)
    return repo


def test_tensorrt_configs(trt_repo):
    configs = {p.parent.name: read_config(p) for p in trt_repo.glob("*/config.pbtxt")}
    assert set(configs) == {"m", "m_preprocess", "m_runtime", "m_postprocess"}
    runtime = configs["m_runtime"]
    assert runtime.platform == "tensorrt_plan" and not runtime.backend
    assert runtime.max_batch_size == MAX_BATCH and runtime.HasField("dynamic_batching")
    (inp,) = runtime.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("x", model_config_pb2.TYPE_FP32, [3, 48, 64])
    (out,) = runtime.output
    assert out.data_type == model_config_pb2.TYPE_FP32 and list(out.dims) == [12]
    # GPU by default; no profile field: Triton takes optimization profile 0 when none is named.
    assert not runtime.instance_group and not runtime.HasField("optimization")
    step = configs["m"].ensemble_scheduling.step[1]
    assert step.model_name == "m_runtime" and set(step.input_map) == {"x"}


def test_tensorrt_version_directory(trt_repo, clas_export):
    version = trt_repo / "m_runtime/1"
    if tensorrt_available():
        assert sorted(p.name for p in version.iterdir()) == ["model.plan"]
        return
    assert sorted(p.name for p in version.iterdir()) == ["build_plan.sh", "model.onnx"]
    readme = (trt_repo / "m_runtime/README.md").read_text()
    assert "Triton cannot load `m_runtime`" in readme and "serving" in readme and "build_plan.sh" in readme
    # The shipped ONNX is the FP16 one, float32 at its boundary, and still computes the model.
    model = onnx.load(str(version / "model.onnx"))
    constants = [*model.graph.initializer, *(n.attribute[0].t for n in ops(model, "Constant"))]  # paddle2onnx: Constants
    assert constants and all(c.data_type != TensorProto.FLOAT for c in constants)
    assert any(c.data_type == TensorProto.FLOAT16 for c in constants)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    from tritongen.convert.onnx import sample_inputs
    from tritongen.processing.runners import PaddleInferenceRunner

    spec = load_model(clas_export)
    feeds = sample_inputs(spec, batch=3)
    expected = PaddleInferenceRunner(spec.model_file, spec.params_file).run(feeds)
    actual = ort_run(version / "model.onnx", feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, atol=1e-2, err_msg=name)


def test_build_plan_script(trt_repo):
    if tensorrt_available():
        pytest.skip("TensorRT is installed here, so the repository holds model.plan instead of build_plan.sh")
    script = trt_repo / "m_runtime/1/build_plan.sh"
    assert os.access(script, os.X_OK) and script.stat().st_mode & 0o777 == 0o755
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    flags = ['--onnx="$onnx"', '--saveEngine="$tmp"', "--stronglyTyped", "--minShapes=x:1x3x48x64",
             "--optShapes=x:8x3x48x64", "--maxShapes=x:16x3x48x64"]
    assert all(f" {flag}" in text for flag in flags), text
    assert TRITON_TRTEXEC in text and "command -v trtexec" in text
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in text and "read-write" in text


STUB_TRTEXEC = """#!/usr/bin/env bash
# Stand-in for trtexec: records its arguments and writes the --saveEngine file. Not TensorRT.
printf '%s\\n' "$@" > "$TRTEXEC_ARGS"
[[ "${STUB_FAIL:-0}" == 1 ]] && { echo "stub trtexec: failing as asked" >&2; exit 3; }
for arg in "$@"; do
    case "$arg" in --saveEngine=*) printf 'not-a-plan' > "${arg#--saveEngine=}" ;; esac
done
"""


@pytest.fixture
def script_run(trt_repo, tmp_path):
    if tensorrt_available():
        pytest.skip("TensorRT is installed here, so the repository holds model.plan instead of build_plan.sh")
    if Path(TRITON_TRTEXEC).exists():
        pytest.skip(f"{TRITON_TRTEXEC} exists; the script would run the real trtexec")
    version = tmp_path / "m_runtime/1"
    shutil.copytree(trt_repo / "m_runtime/1", version)
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    (stub_dir / "trtexec").write_text(STUB_TRTEXEC)
    (stub_dir / "trtexec").chmod(0o755)

    def run(**env):
        full_env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}", "TRTEXEC_ARGS": str(tmp_path / "args"), **env}
        return subprocess.run(["bash", str(version / "build_plan.sh")], capture_output=True, text=True, env=full_env)

    return version, tmp_path / "args", run


def test_build_plan_script_runs_trtexec_and_installs_the_plan(script_run):
    version, args_file, run = script_run
    proc = run()
    assert proc.returncode == 0, proc.stderr
    args = args_file.read_text().splitlines()
    assert args[0] == f"--onnx={version}/model.onnx" and args[1].startswith(f"--saveEngine={version}/.model.plan.")
    assert args[2:] == ["--stronglyTyped", "--minShapes=x:1x3x48x64", "--optShapes=x:8x3x48x64",
                        "--maxShapes=x:16x3x48x64", "--skipInference"]
    assert (version / "model.plan").read_text() == "not-a-plan"
    assert not list(version.glob(".model.plan.*"))
    assert f"wrote {version}/model.plan" in proc.stderr and "Triton can now load m_runtime" in proc.stderr


def test_build_plan_script_failure_leaves_no_plan(script_run):
    version, _, run = script_run
    proc = run(STUB_FAIL="1")
    assert proc.returncode != 0
    assert "trtexec failed" in proc.stderr and "cannot load m_runtime" in proc.stderr
    assert not (version / "model.plan").exists() and not list(version.glob(".model.plan.*"))


def test_build_plan_script_without_trtexec(script_run, tmp_path):
    version, _, _ = script_run
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    if shutil.which("trtexec", path=env["PATH"]):
        pytest.skip("a trtexec is installed in /usr/bin or /bin")
    proc = subprocess.run(["bash", str(version / "build_plan.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "trtexec is neither at" in proc.stderr and "24.10-py3" in proc.stderr


def test_serve_refuses_tensorrt_repository(trt_repo):
    proc = run_cli("serve", trt_repo, "--timeout", "10", check=False, timeout=120)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "m_runtime (tensorrt_plan)" in message and "docker/" in message
    assert "Traceback" not in message


def test_tensorrt_backend_needs_a_fixed_input_shape(clas_export, tmp_path):
    spec = load_model(clas_export)
    spec.preprocess = [op for op in spec.preprocess if not any(k in op for k in ("ResizeImage", "CropImage"))]
    if all(d > 0 for d in spec.preprocessed_shape):
        pytest.skip("this export's preprocessing has no image-dependent size without resize/crop")
    onnx_path = tmp_path / "model.onnx"
    onnx.save(conv_graph(), str(onnx_path))
    with pytest.raises(TensorRTError, match="fixed per-image input shape"):
        convert_for_runtime(spec, onnx_path, (), tensorrt_plan=True)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime's TensorRT execution accelerator


@pytest.fixture(scope="module")
def any_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(conv_graph(), str(path))
    return path


@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory) -> Path:
    """Symmetric int8 Q/DQ, no int32 DQ: what TensorRT's explicit quantization takes."""
    path = tmp_path_factory.mktemp("onnx") / "qdq.onnx"
    onnx.save(remove_int32_bias_dequantize(conv_graph(qdq=True))[0], str(path))
    return path


def runtime_config(clas_export, onnx_path, backend="onnxruntime", **options):
    models = plan_models(load_model(clas_export), backend, "m", RuntimeArtifact(onnx_path), options=RuntimeOptions(**options))
    return next(m for m in models if m.name == "m_runtime")


@pytest.mark.parametrize("mode,int8", [("FP16", False), ("INT8", True), ("fp32", False)])
def test_ort_tensorrt_accelerator_config(clas_export, any_onnx, qdq_onnx, mode, int8):
    model = runtime_config(clas_export, qdq_onnx if int8 else any_onnx, trt_accelerator=mode, int8=int8)
    config = read_config_text(model.config_text)
    assert config.platform == "onnxruntime_onnx"
    (acc,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {
        "precision_mode": mode.upper(),
        "max_workspace_size_bytes": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/tritongen_trt_cache_m_runtime",
    }
    assert not config.optimization.execution_accelerators.cpu_execution_accelerator
    assert config.parameters["intra_op_thread_count"].string_value == "1"


def read_config_text(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


def test_ort_without_accelerator_has_no_optimization_block(clas_export, any_onnx):
    config = read_config_text(runtime_config(clas_export, any_onnx).config_text)
    assert not config.HasField("optimization")


def test_ort_accelerator_refusals(clas_export, any_onnx, tmp_path):
    with pytest.raises(EmitError, match="INT8 needs a quantized"):
        runtime_config(clas_export, any_onnx, trt_accelerator="INT8")
    with pytest.raises(EmitError, match="no QuantizeLinear/DequantizeLinear"):
        runtime_config(clas_export, any_onnx, trt_accelerator="INT8", int8=True)
    int32_dq = tmp_path / "int32.onnx"
    onnx.save(conv_graph(qdq=True), str(int32_dq))
    with pytest.raises(EmitError, match="int32"):
        runtime_config(clas_export, int32_dq, trt_accelerator="INT8", int8=True)
    with pytest.raises(EmitError, match="choose one of FP32, FP16, INT8"):
        runtime_config(clas_export, any_onnx, trt_accelerator="FP8")
    with pytest.raises(EmitError, match="applies to --backend onnxruntime"):
        runtime_config(clas_export, any_onnx, backend="python-onnxruntime", trt_accelerator="FP16")


def test_build_with_ort_accelerator_writes_it(clas_export, tmp_path):
    build(clas_export, tmp_path, backend="onnxruntime", name="acc", trt_accelerator="FP16")
    config = read_config(tmp_path / "acc_runtime/config.pbtxt")
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"
    assert stat.S_IMODE((tmp_path / "acc_runtime/1/model.onnx").stat().st_mode) & 0o111 == 0


def test_detector_plan_gets_a_profile_for_every_input(tmp_path):
    """PaddleDetection graphs take image and scale_factor: trtexec needs shapes for both,
    or the in-container build fails on the dynamic scale_factor batch axis."""
    from tritongen.testing.demo_exports import make_detector

    export = make_detector(tmp_path / "det", with_nms=False, input_hw=(128, 160))
    build(export, tmp_path / "repo", backend="tensorrt", name="det", max_batch_size=6)
    script = (tmp_path / "repo/det_runtime/1/build_plan.sh").read_text()
    assert "--minShapes=image:1x3x128x160,scale_factor:1x2" in script
    assert "--optShapes=image:3x3x128x160,scale_factor:3x2" in script
    assert "--maxShapes=image:6x3x128x160,scale_factor:6x2" in script
    assert subprocess.run(["bash", "-n", str(tmp_path / "repo/det_runtime/1/build_plan.sh")]).returncode == 0
    config = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "repo/det_runtime/config.pbtxt").read_text(), config)
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [3, 128, 160]), ("scale_factor", [2])]
