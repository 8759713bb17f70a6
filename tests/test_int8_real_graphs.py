"""Graph problems found on the real architectures (PP-YOLOE-s, PP-LiteSeg, BiSeNetV2, ResNet50_vd,
MobileNetV1 exports), reproduced at test size.

PP-YOLOE-s with ``multiclass_nms3`` in the graph: ``build --int8 --backend python-onnxruntime``
crashed in ONNX Runtime with "Gather node 'Gather.10' ... axis 0 is not in valid range [-0,-1]"
while measuring the ``paddle-scales`` recipe. Cause: paddle2onnx 1.3.1 maps the op's keep_top_k
step as ``Gather(selected_indices, [1], axis=1)`` -> class ids ``[K, 1]``, an axis-less
``Squeeze`` -> ``[K]``, ``Gather(axis=0)`` by TopK's indices. Without axes Squeeze removes every
dimension that is 1 *at run time*, so when exactly one box survives NMS (K = 1) the ids become
0-D and the Gather fails. Nothing INT8-specific: the FP32 ONNX has the same two Squeezes; the
INT8 model just met K = 1 on a held-out photo (camera.png: FP32 47 boxes, INT8 paddle-scales
1). :func:`fix_nms_squeeze` gives those Squeezes the axes shape inference knows are 1.

MobileNetV1, ResNet50_vd, PP-LiteSeg, BiSeNetV2: the ``paddle-scales`` recipe ran a float
``DQ -> Relu -> Q`` after every fused conv (PaddleSlim observes both the conv output and the
Relu output); :func:`fuse_relu_requantization` lets ONNX Runtime fuse Conv + Relu, without
costing any conv its fusion (PP-LiteSeg) and through repeated Q/DQ pairs (BiSeNetV2).
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle: paddle 2.6 shadows zlib)

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tritongen.convert.passes.onnxruntime import activations_to_uint8, fix_nms_squeeze, fuse_relu_requantization

try:
    from tritongen.testing.demo_exports import _multiclass_nms3
except ImportError:  # before demo_exports moved to tritongen.testing
    from tritongen.demo_exports import _multiclass_nms3

# PP-YOLOE's MultiClassNMS settings, at test size (A anchors, C classes).
NMS = dict(score_threshold=0.01, nms_top_k=1000, keep_top_k=5, nms_threshold=0.6)
A, C = 32, 3


def _boxes() -> np.ndarray:
    """Disjoint 20 x 20 px boxes in a row: NMS suppresses none, so the survivors are exactly the
    scores above the threshold."""
    x = np.arange(A, dtype=np.float32) * 30
    return np.stack([x, np.zeros(A), x + 20, np.full(A, 20)], axis=1).astype(np.float32)[None]


def _scores(survivors: int) -> np.ndarray:
    """[1, C, A] scores with exactly ``survivors`` (class, anchor) pairs above the threshold, all
    distinct (so Paddle's and ONNX's orderings agree), spread over the classes."""
    scores = np.zeros((1, C, A), np.float32)
    for i in range(survivors):
        scores[0, i % C, (7 * i) % A] = 0.9 - 0.05 * i
    return scores


@pytest.fixture(scope="module")
def nms_program(tmp_path_factory) -> tuple[Path, object]:
    """A Paddle inference program that is just PP-YOLOE's NMS: boxes [N, A, 4], scores [N, C, A]
    -> multiclass_nms3 rows [M, 6] and per-image counts; returns (path prefix, Paddle's own
    outputs as a function of the inputs)."""
    import paddle

    prefix = tmp_path_factory.mktemp("nms_program") / "model"
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            boxes = paddle.static.data("boxes", [None, A, 4], "float32")
            scores = paddle.static.data("scores", [None, C, A], "float32")
            rows, counts = _multiclass_nms3(boxes, scores, **NMS)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        paddle.static.save_inference_model(str(prefix), [boxes, scores], [rows, counts], exe, program=main)
    finally:
        paddle.disable_static()

    def paddle_nms(b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        paddle.enable_static()
        try:
            exe = paddle.static.Executor(paddle.CPUPlace())
            program, feeds, fetches = paddle.static.load_inference_model(str(prefix), exe)
            out = exe.run(program, feed={"boxes": b, "scores": s}, fetch_list=fetches)
        finally:
            paddle.disable_static()
        return np.asarray(out[0]), np.asarray(out[1])

    return prefix, paddle_nms


def _paddle2onnx(prefix: Path, out: Path, opset: int) -> onnx.ModelProto:
    import paddle2onnx

    params = Path(f"{prefix}.pdiparams")  # NMS alone has no parameters: Paddle writes no file
    paddle2onnx.export(f"{prefix}.pdmodel", str(params) if params.is_file() else "", str(out), opset_version=opset,
                       auto_upgrade_opset=True, verbose=False, enable_onnx_checker=True, deploy_backend="onnxruntime")
    assert out.is_file(), "paddle2onnx wrote nothing"
    return onnx.load(str(out))


def _run(model: onnx.ModelProto, survivors: int) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"boxes": _boxes(), "scores": _scores(survivors)})


def _by_score(rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(-rows[:, 1], kind="stable")]


@pytest.mark.parametrize("opset", [11, 13])  # axes: an attribute before opset 13, an input from 13 on
def test_paddle2onnx_nms_crashes_on_one_surviving_box_and_fix_nms_squeeze_repairs_it(nms_program, tmp_path, opset):
    prefix, paddle_nms = nms_program
    exported = _paddle2onnx(prefix, tmp_path / "nms.onnx", opset)
    axisless = [n for n in exported.graph.node if n.op_type == "Squeeze" and len(n.input) == 1
                and not any(a.name == "axes" for a in n.attribute)]
    assert len(axisless) == 2, "paddle2onnx's NMS mapping changed: is fix_nms_squeeze still needed?"
    # The bug, as PP-YOLOE-s INT8 met it: one box left after NMS -> 0-D class / box ids.
    _run(exported, 2)
    with pytest.raises(Exception, match="Gather.*axis 0 is not in valid range"):
        _run(exported, 1)

    fixed, count = fix_nms_squeeze(exported)
    assert count == 2
    onnx.checker.check_model(fixed)
    for survivors in (0, 1, 2, 4, 9):  # 9 > keep_top_k 5: TopK keeps 5
        rows, counts = _run(fixed, survivors)
        ref_rows, ref_counts = paddle_nms(_boxes(), _scores(survivors))
        assert rows.shape == (min(survivors, NMS["keep_top_k"]), 6) and counts.tolist() == ref_counts.tolist()
        np.testing.assert_allclose(_by_score(rows), _by_score(ref_rows), rtol=1e-6)
    assert fix_nms_squeeze(fixed)[1] == 0  # idempotent


def test_fix_nms_squeeze_survives_the_int8_passes(nms_program, tmp_path):
    """The recipe that crashed, paddle-scales, runs activations_to_uint8 on the fixed QDQ graph;
    the Squeeze axes must still be there (and a Q/DQ pair on the scores in front of NMS is
    harmless)."""
    prefix, _ = nms_program
    fixed, _ = fix_nms_squeeze(_paddle2onnx(prefix, tmp_path / "nms.onnx", 13))
    # A Paddle-style int8 (zero point 0) observer Q/DQ pair on the scores, as PaddleSlim writes them.
    scores_in = next(n for n in fixed.graph.node if n.op_type == "NonMaxSuppression").input[1]
    fixed.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(1 / 127, np.float32), "s_scale"),
                                    onnx.numpy_helper.from_array(np.array(0, np.int8), "s_zp")])
    q = helper.make_node("QuantizeLinear", [scores_in, "s_scale", "s_zp"], ["s_q"])
    dq = helper.make_node("DequantizeLinear", ["s_q", "s_scale", "s_zp"], ["s_dq"])
    for node in fixed.graph.node:
        node.input[:] = ["s_dq" if i == scores_in else i for i in node.input]
    fixed.graph.node.insert(0, dq)
    fixed.graph.node.insert(0, q)
    uint8, converted = activations_to_uint8(fixed)
    assert converted == 1
    rows, counts = _run(uint8, 1)
    assert rows.shape == (1, 6) and counts.tolist() == [1]


def test_fix_nms_squeeze_only_touches_squeezes_after_nms():
    """An axis-less Squeeze elsewhere (paddle's squeeze2 with axes=[]) keeps Paddle's run-time
    semantics; only tensors with NMS's data-dependent count are given axes."""
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x"], ["y"]),
         helper.make_node("NonMaxSuppression", ["b", "s"], ["sel"]),
         helper.make_node("Gather", ["sel", "one"], ["cls"], axis=1),
         helper.make_node("Squeeze", ["cls"], ["cls_1d"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("cls_1d", TensorProto.INT64, None)],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    fixed, count = fix_nms_squeeze(model)
    assert count == 1
    squeezes = {n.output[0]: n for n in fixed.graph.node if n.op_type == "Squeeze"}
    assert list(squeezes["y"].input) == ["x"]
    axes = onnx.numpy_helper.to_array(next(i for i in fixed.graph.initializer if i.name == squeezes["cls_1d"].input[1]))
    assert axes.tolist() == [1]


# ------------------------------------------------------------------ Conv + Relu in paddle-scales
#
# MobileNetV1 / ResNet50_vd: the paddle-scales recipe fused every conv (QLinearConv) yet ran
# slower than ONNX Runtime's own placement (MobileNetV1 6.8 vs 3.6 ms, ResNet50_vd 30 vs 20
# ms). PaddleSlim puts an observer Q/DQ pair on the conv output *and* on the Relu output, so
# ONNX Runtime ran DQ -> Relu -> Q in float after every conv (27 in MobileNetV1, 51 in
# ResNet50_vd). fuse_relu_requantization removes the first pair and gives
# the second zero point 0, which lets ONNX Runtime drop the Relu and fuse Conv + Relu.


@pytest.fixture(scope="module")
def conv_relu_qdq(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """MobileNet's block at test size — conv/bn/relu, depthwise conv/bn/relu, pointwise
    conv/bn/relu, pooled linear head — quantized by PaddleSlim (quant_post_static,
    onnx_format=True, as tritongen's PTQ) and converted by paddle2onnx. Returns the FP32 ONNX,
    the QDQ ONNX and held-out inputs."""
    import paddle
    from paddleslim.quant import quant_post_static

    root = tmp_path_factory.mktemp("conv_relu")
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (24, 3, 32, 32)).astype(np.float32)

    def conv_bn_relu(x, out_ch, groups=1, k=3):
        h = paddle.static.nn.conv2d(x, out_ch, k, padding=k // 2, groups=groups, bias_attr=False)
        return paddle.nn.functional.relu(paddle.static.nn.batch_norm(h, is_test=True))

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 3, 32, 32], "float32")
            h = conv_bn_relu(x, 16)
            h = conv_bn_relu(h, 16, groups=16)
            h = conv_bn_relu(h, 32, k=1)
            out = paddle.static.nn.fc(paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(h, 1), 1), 10)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        paddle.static.save_inference_model(str(root / "fp32" / "model"), [x], [out], exe, program=main)

        class Images(paddle.io.Dataset):
            def __len__(self):
                return 16

            def __getitem__(self, i):
                return {"x": images[i]}

        quant_post_static(executor=exe, model_dir=str(root / "fp32"), quantize_model_path=str(root / "int8"),
                          data_loader=paddle.io.DataLoader(Images(), batch_size=4, return_list=True),
                          model_filename="model.pdmodel", params_filename="model.pdiparams",
                          save_model_filename="model.pdmodel", save_params_filename="model.pdiparams",
                          batch_size=4, algo="abs_max", round_type="round", onnx_format=True)
    finally:
        paddle.disable_static()
    fp32 = root / "fp32.onnx"
    qdq = root / "qdq.onnx"
    _paddle2onnx(root / "fp32" / "model", fp32, 13)
    _paddle2onnx(root / "int8" / "model", qdq, 13)
    return fp32, qdq, images[16:]


def _optimized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs."""
    import tempfile
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_fuse_relu_requantization_lets_onnxruntime_fuse_conv_relu(conv_relu_qdq):
    fp32_path, qdq_path, held_out = conv_relu_qdq
    paddle_scales, _ = activations_to_uint8(onnx.load(str(qdq_path)))  # the recipe as it was
    before = _optimized_ops(paddle_scales)
    # What the real models showed: every conv fused, and a float Relu with its Q/DQ after each.
    assert before.get("QLinearConv") == 3 and before.get("Relu") == 3, before

    fused, count = fuse_relu_requantization(paddle_scales)
    assert count == 3
    onnx.checker.check_model(fused)
    after = _optimized_ops(fused)
    assert after.get("QLinearConv") == 3 and "Relu" not in after, after
    assert after.get("DequantizeLinear", 0) < before["DequantizeLinear"] - 2, (before, after)

    # Numerics: as close to FP32 as Paddle's own scales were (one rounding fewer per conv, and
    # no clip below 0 lost: Relu outputs are >= 0).
    reference = _outputs(onnx.load(str(fp32_path)), held_out)

    def cosine(a, b):
        return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))

    was, now = cosine(reference, _outputs(paddle_scales, held_out)), cosine(reference, _outputs(fused, held_out))
    assert now > 0.99 and now >= was - 1e-3, (was, now)
    assert fuse_relu_requantization(fused)[1] == 0  # idempotent: zero point 0 already


def _paddle_style_qdq(relu_readers: str, quantized: bool = True) -> onnx.ModelProto:
    """``x -> Q/DQ -> Conv1 -> Q/DQ (observer) -> Relu -> ... -> Conv2 -> Q/DQ`` as paddle2onnx
    writes PaddleSlim's graphs: int8 activations with zero point 0, float weights through a
    per-channel Q/DQ, int32 biases through a DQ at input scale x weight scale, one scale
    initializer per Q/DQ pair. What reads the Relu, as on the real models:

    * ``"concat"`` (PP-LiteSeg's STDC blocks): Conv2's Q/DQ and a float Concat;
    * ``"double"`` (BiSeNetV2's head): two Q/DQ pairs of the same scale in a row before Conv2.

    ``quantized=False``: the float model (no activation Q/DQ, the same dequantized weights).
    """
    rng = np.random.default_rng(0)
    w_scale = np.full(8, 0.004, np.float32)
    values = {"zp": np.array(0, np.int8), "zp_w": np.zeros(8, np.int8), "zp_b": np.zeros(8, np.int32), "s_w": w_scale,
              "w1": (rng.integers(-127, 128, (8, 4, 3, 3)) * 0.004).astype(np.float32),
              "w2": (rng.integers(-127, 128, (8, 8, 3, 3)) * 0.004).astype(np.float32)}
    nodes = []

    def scale(name: str, value: float) -> str:
        values[name] = np.array(value, np.float32)
        return name

    def qdq(x: str, s: float, out: str) -> str:
        if not quantized:
            nodes.append(helper.make_node("Identity", [x], [out]))
            return out
        name = scale(f"{out}_scale", s)
        nodes.extend([helper.make_node("QuantizeLinear", [x, name, "zp"], [f"{out}_q"]),
                      helper.make_node("DequantizeLinear", [f"{out}_q", name, "zp"], [out])])
        return out

    def conv(x: str, x_scale: float, w: str, out: str) -> str:
        values[f"{w}_b"] = rng.integers(-200, 200, 8).astype(np.int32)
        values[f"{w}_b_scale"] = (x_scale * w_scale).astype(np.float32)
        nodes.extend([helper.make_node("QuantizeLinear", [w, "s_w", "zp_w"], [f"{w}_q"], axis=0),
                      helper.make_node("DequantizeLinear", [f"{w}_q", "s_w", "zp_w"], [f"{w}_dq"], axis=0),
                      helper.make_node("DequantizeLinear", [f"{w}_b", f"{w}_b_scale", "zp_b"], [f"{w}_bias"], axis=0),
                      helper.make_node("Conv", [x, f"{w}_dq", f"{w}_bias"], [out], pads=[1, 1, 1, 1])])
        return out

    c1 = conv(qdq("x", 0.02, "x_dq"), 0.02, "w1", "c1")
    nodes.append(helper.make_node("Relu", [qdq(c1, 0.05, "c1_dq")], ["r"]))
    into_conv2 = qdq("r", 0.03, "r_dq")
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if relu_readers == "concat":
        nodes.append(helper.make_node("Concat", ["r", "r"], ["cat"], axis=1))
        outputs.append(helper.make_tensor_value_info("cat", TensorProto.FLOAT, None))
    else:  # "double"
        into_conv2 = qdq(into_conv2, 0.03, "r_dq2")
    qdq(conv(into_conv2, 0.03, "w2", "c2"), 0.05, "out")
    graph = helper.make_graph(nodes, "paddle_qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              outputs, [onnx.numpy_helper.from_array(v, k) for k, v in values.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fuse_relu_requantization_never_costs_a_conv_its_fusion():
    """First version of the pass, on PP-LiteSeg: it removed the observer in front of every Relu,
    also where the Relu had other readers than its Q — Conv1 then had no Q after it and ran
    in float: 26/47 convs fused instead of 47/47, 227 ms instead of 108 ms."""
    model, _ = activations_to_uint8(_paddle_style_qdq("concat"))
    before = _optimized_ops(model)
    assert before.get("QLinearConv") == 2, before
    fused, count = fuse_relu_requantization(model)
    assert count == 0 and _optimized_ops(fused).get("QLinearConv") == 2
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(session.run(None, {"x": x}), original.run(None, {"x": x})):
        np.testing.assert_array_equal(a, b)  # untouched


def test_fuse_relu_requantization_follows_repeated_qdq_pairs():
    """BiSeNetV2: Relu -> Q/DQ -> Q/DQ (one scale) -> Conv2. Changing only the first Q's zero point
    leaves the pair unremovable for ORT (zero points differ) and Conv2 unfused (55 -> 54)."""
    model, _ = activations_to_uint8(_paddle_style_qdq("double"))
    assert _optimized_ops(model).get("Relu") == 1
    fused, count = fuse_relu_requantization(model)
    after = _optimized_ops(fused)
    assert count == 1 and after.get("QLinearConv") == 2 and "Relu" not in after, after
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    reference = run(_paddle_style_qdq("double", quantized=False))
    was, now = np.abs(run(model) - reference), np.abs(run(fused) - reference)
    # Closer to float: one rounding fewer (no observer before the Relu) and no clip at 127 steps
    # of a tensor that is >= 0 anyway.
    assert now.mean() < was.mean() and now.max() <= was.max(), (now.mean(), was.mean(), now.max(), was.max())
