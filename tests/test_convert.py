"""Paddle -> ONNX: the converted model must compute what Paddle computes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tritongen.convert import paddle_to_onnx
from tritongen.convert.onnx import compare_with_paddle
from tritongen.errors import ConversionError
from tritongen.intake import load_model
from tritongen.predict import LocalPredictor


@pytest.fixture(scope="module")
def converted(clas_export, tmp_path_factory):
    spec = load_model(clas_export)
    return spec, paddle_to_onnx(spec, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_has_dynamic_batch_and_paddle_names(converted):
    spec, result = converted
    model = onnx.load(str(result.path))
    assert result.opset >= 13
    assert result.input_names == ["x"] and result.output_names == [spec.outputs[0].name]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param or batch_dim.dim_value <= 0  # symbolic, not fixed
    assert max(result.validation.values()) < 1e-4


def test_onnx_and_paddle_agree_on_real_photos(converted, photos):
    spec, result = converted
    paddle_pred = LocalPredictor(spec, "paddle")
    ort_pred = LocalPredictor(spec, "onnxruntime", onnx_path=result.path)
    for photo in photos:
        (a,), (b,) = paddle_pred.predict([photo]), ort_pred.predict([photo])
        assert a.label_ids == b.label_ids
        np.testing.assert_allclose(a.scores, b.scores, atol=2e-4)  # float32 kernels differ
    # batch 5 in one call equals one by one
    batched = ort_pred.predict(photos[:1] * 5)
    assert all(r.label_ids == batched[0].label_ids for r in batched)


def test_validation_catches_a_model_that_disagrees(clas_export, tmp_path):
    from tritongen.demo import make_classifier

    from .conftest import NON_DEFAULT_OPS

    other = make_classifier(tmp_path / "other", transform_ops=NON_DEFAULT_OPS, input_hw=(48, 64), topk=3, seed=99)
    other_onnx = paddle_to_onnx(load_model(other), tmp_path / "other.onnx").path
    with pytest.raises(ConversionError, match="disagrees with Paddle"):
        compare_with_paddle(load_model(clas_export), other_onnx)


def test_paddle2onnx_failure_is_a_clear_error(clas_export, tmp_path):
    spec = load_model(clas_export)
    broken = tmp_path / "broken.pdiparams"
    broken.write_bytes(b"\x00" * 64)
    spec.params_file = broken
    with pytest.raises(ConversionError, match="paddle2onnx failed"):
        paddle_to_onnx(spec, tmp_path / "x.onnx")


def test_onnx_runtime_load_failure_is_a_conversion_error(tmp_path):
    """paddle2onnx writes AveragePool with stride 0 for adaptive pooling over unknown H, W (PP-LiteSeg
    exported with a dynamic input): a clear error with the re-export hint, not an onnxruntime traceback."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from tritongen.convert.onnx import _run_onnx
    from tritongen.errors import ConversionError

    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[0, 0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    with pytest.raises(ConversionError, match="ONNX Runtime cannot run bad.onnx.*--input_shape"):
        _run_onnx(path, {"x": np.zeros((1, 1, 4, 4), np.float32)})
