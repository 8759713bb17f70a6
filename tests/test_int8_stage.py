"""The INT8 stage: QuantizeConfig -> QuantizedModel -> Int8Artifact through the registry of INT8 targets."""
from __future__ import annotations

import json

import onnx
import pytest

from tritongen.convert.int8 import (INT8_TARGETS, Int8Target, OnnxRuntimeInt8, OrtInt8Report, PaddleInt8Report,
                                    TensorRTInt8Report, get_int8_target, register_int8_target, to_int8)
from tritongen.convert.onnx import paddle_to_onnx
from tritongen.emit import BACKENDS
from tritongen.errors import ConversionError, TritongenError
from tritongen.intake import load_model
from tritongen.quantize import CalibrationAlgo, FidelityError, OrtRecipe, QuantizeConfig, QuantMethod

from .conftest import run_cli
from .test_quantize import calib_dir  # noqa: F401  (session fixture)


# ------------------------------------------------------------------------------ QuantizeConfig


def test_config_coerces_and_validates(tmp_path):
    config = QuantizeConfig(str(tmp_path), method="ptq", algo="KL", skip_tensors=["a", "b"], recipes=["paddle-scales"])
    assert config.method is QuantMethod.PTQ and config.algo is CalibrationAlgo.KL
    assert config.skip_tensors == ("a", "b") and config.recipes == (OrtRecipe.PADDLE_SCALES,)
    plain = config.to_dict()
    assert json.loads(json.dumps(plain)) == plain and plain["algo"] == "KL" and plain["calib_dir"] == str(tmp_path)
    assert QuantizeConfig(tmp_path).recipes == tuple(OrtRecipe)  # every recipe unless told otherwise


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "int4"}, "unknown --method 'int4'; choose one of ptq, qat"),
    ({"algo": "median"}, "unknown --algo 'median'"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
    ({"batch_nums": True}, "--batch-nums must be an integer >= 1"),
    ({"max_drop": 1.5}, "--max-drop must be within"),
    ({"holdout_fraction": 1.0}, "holdout_fraction"),
    ({"recipes": ()}, "at least one"),
    ({"recipes": ("fastest",)}, "unknown INT8 recipe 'fastest'"),
    ({"train_iters": 10}, "apply to --method qat"),
])
def test_config_rejects_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(TritongenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QuantizeConfig(tmp_path, **kwargs)


def test_cli_reports_bad_int8_settings_in_one_line(clas_export, calib_dir, tmp_path):  # noqa: F811
    proc = run_cli("build", clas_export, "--int8", "--calib-dir", calib_dir, "--algo", "median", "--output",
                   tmp_path / "r", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: unknown --algo 'median'")
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ registry


def test_every_backend_names_a_registered_int8_target():
    assert set(INT8_TARGETS) == {"paddle-onednn", "onnxruntime", "tensorrt"}
    for backend in BACKENDS.values():
        target = get_int8_target(backend.int8_target)
        assert target.needs_onnx == backend.needs_onnx, backend.name
    with pytest.raises(TritongenError, match="unknown INT8 target 'int4'"):
        get_int8_target("int4")


def test_registry_rejects_a_second_target_of_the_same_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_int8_target(type("Again", (OnnxRuntimeInt8,), {}))
    assert INT8_TARGETS["onnxruntime"] is OnnxRuntimeInt8


# ------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def staged(clas_export, calib_dir, tmp_path_factory):  # noqa: F811
    """One quantization, every target prepared from it."""
    work = tmp_path_factory.mktemp("stage")
    fp32 = load_model(clas_export)
    fp32_onnx = paddle_to_onnx(fp32, work / "fp32.onnx").path
    targets = [get_int8_target(name) for name in INT8_TARGETS]
    steps: list[str] = []
    config = QuantizeConfig(calib_dir, algo="abs_max")
    return to_int8(fp32, config, targets, work, fp32_onnx=fp32_onnx, step=steps.append), steps


def test_one_quantization_serves_every_target(staged):
    result, steps = staged
    assert set(result.artifacts) == set(INT8_TARGETS) and not result.skipped
    assert sum("post-training quantization" in s for s in steps) == 1
    assert all(a.quantized is result.quantized for a in result.artifacts.values())
    record = json.loads((result.quantized.directory / "tritongen_quant.json").read_text())
    assert record["algo"] == "abs_max" and record["method"] == "ptq" and record["holdout_images"]


def test_paddle_onednn_serves_the_quantized_program(staged):
    artifact = staged[0].artifacts["paddle-onednn"]
    assert artifact.onnx is None and artifact.spec.is_quantized
    assert isinstance(artifact.report, PaddleInt8Report) and artifact.fidelity is artifact.quantized.fidelity


def test_onnxruntime_measures_recipes_and_keeps_the_most_faithful(staged):
    artifact = staged[0].artifacts["onnxruntime"]
    report = artifact.report
    assert isinstance(report, OrtInt8Report) and {c.recipe for c in report.candidates} == set(OrtRecipe)
    assert artifact.onnx == report.chosen.path and artifact.fidelity is report.chosen.fidelity
    best = max(c.fidelity.headline[1] for c in report.candidates)
    assert artifact.fidelity.headline[1] >= best - 0.005
    graph = onnx.load(str(artifact.onnx)).graph
    assert {o.name for o in graph.output} == {t.name for t in artifact.spec.outputs}
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    saved = artifact.to_dict()
    assert saved["onnxruntime"]["chosen"] == report.chosen.recipe.value and saved["target"] == "onnxruntime"


def test_tensorrt_gets_symmetric_qdq(staged):
    artifact = staged[0].artifacts["tensorrt"]
    assert isinstance(artifact.report, TensorRTInt8Report) and artifact.report.quantize_nodes > 0
    zero_points = {i.name: i for i in onnx.load(str(artifact.onnx)).graph.initializer}
    graph = onnx.load(str(artifact.onnx)).graph
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in zero_points:
            assert zero_points[node.input[2]].data_type == onnx.TensorProto.INT8


def test_the_gate_runs_on_the_served_artifact(clas_export, calib_dir, tmp_path):  # noqa: F811
    fp32 = load_model(clas_export)
    config = QuantizeConfig(calib_dir, algo="abs_max", batch_nums=1, max_drop=0.0)
    with pytest.raises(FidelityError, match="INT8 Paddle Inference .*max-drop 0"):
        to_int8(fp32, config, [get_int8_target("paddle-onednn")], tmp_path)


class _Unpreparable(Int8Target):
    """A target whose artifact cannot be made (registered only inside the test)."""

    name = "test-unpreparable"
    needs_onnx = False

    def prepare(self, quantized, fp32_onnx, work, step):
        raise ConversionError("this runtime has no INT8 kernels")

    def adopt(self, spec, work, step):
        raise ConversionError("this runtime has no INT8 kernels")


def test_keep_going_records_a_failing_target_and_goes_on(clas_export, calib_dir, tmp_path):  # noqa: F811
    fp32 = load_model(clas_export)
    targets = [_Unpreparable(), get_int8_target("paddle-onednn")]
    result = to_int8(fp32, QuantizeConfig(calib_dir, algo="abs_max"), targets, tmp_path, keep_going=True)
    assert result.skipped == {"test-unpreparable": "this runtime has no INT8 kernels"}
    assert list(result.artifacts) == ["paddle-onednn"]
    with pytest.raises(ConversionError, match="no INT8 kernels"):
        to_int8(fp32, QuantizeConfig(calib_dir, algo="abs_max"), targets, tmp_path / "again")


def test_an_already_quantized_model_is_refused(staged, calib_dir, tmp_path):  # noqa: F811
    with pytest.raises(TritongenError, match="already quantized"):
        to_int8(staged[0].quantized.spec, QuantizeConfig(calib_dir), [get_int8_target("paddle-onednn")], tmp_path)


def test_poor_fidelity_is_noted_when_no_gate_is_set(staged):
    for artifact in staged[0].artifacts.values():
        poor = artifact.fidelity.headline[1] < 0.9
        assert any("follows FP32 poorly" in note for note in artifact.notes) == poor, artifact.notes


def _candidate(recipe, top1, cosine, ms, images=5):
    from pathlib import Path

    from tritongen.convert.int8 import Int8Candidate
    from tritongen.convert.passes.onnxruntime import FusionReport
    from tritongen.measure import Latency
    from tritongen.quantize.fidelity import FidelityReport, OutputFidelity

    report = FidelityReport("FP32", "INT8", [f"img{i}.jpg" for i in range(images)],
                            [OutputFidelity("scores", cosine, cosine, 0.01, top1)])
    return Int8Candidate(recipe, Path(f"{recipe.value}.onnx"), FusionReport(1, 1, {}), report,
                         Latency(15, ms, ms, ms, ms))


def test_choice_treats_one_held_out_image_as_a_tie():
    from tritongen.convert.int8 import choose

    # Measured on ResNet50_vd (5 held-out images): one image of top-1 apart, cosines within 0.0002.
    slow_one_more = _candidate(OrtRecipe.PADDLE_SCALES, 0.8, 0.9972, 26.4)
    fast = _candidate(OrtRecipe.ORT_CALIBRATION, 0.6, 0.9970, 20.8)
    worse = _candidate(OrtRecipe.ORT_PLACEMENT, 0.4, 0.9976, 15.0)  # two images behind: not a tie
    assert choose([slow_one_more, fast, worse]) is fast
    # With 100 images, 0.8 vs 0.6 is twenty images: the more faithful recipe wins whatever its speed.
    assert choose([_candidate(OrtRecipe.PADDLE_SCALES, 0.8, 0.9972, 26.4, images=100),
                   _candidate(OrtRecipe.ORT_CALIBRATION, 0.6, 0.9970, 20.8, images=100)]).recipe is OrtRecipe.PADDLE_SCALES
