"""Exports that arrive quantized (FastDeploy's ``*_ptq`` / ``*_qat`` archives): every backend,
the check that fits an INT8 graph, real serving, and the headline command through a zoo mirror.

The quantized exports are made here with PaddleSlim (``tritongen.testing.quantized_exports``,
which calls ``quant_post_static`` directly, not tritongen's quantizer) from the tiny demo
exports; the zoo archives are laid out like FastDeploy's and served by a local HTTP mirror.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import tritongen  # noqa: F401  (zlib before paddle)
from tritongen.build import build
from tritongen.client import ClassificationClient, DetectionClient, SegmentationClient
from tritongen.convert.int8 import get_int8_target
from tritongen.convert.quantized import check_conversion, observers_applied, onnx_runner, paddle_runner
from tritongen.errors import ConversionError
from tritongen.intake import load_model
from tritongen.intake.spec import QuantFormat
from tritongen.predict import LocalPredictor
from tritongen.quantize.fidelity import detection_agreement
from tritongen.testing.demo_exports import make_detector, make_segmenter
from tritongen.testing.quantized_exports import quantize_export
from tritongen.testing.zoo_mirror import ZooMirror, populate

from .conftest import run_cli, start_serve_cli, stop_serve_cli

BACKENDS = ("python-onnxruntime", "python-paddle", "onnxruntime", "tensorrt")
SEG_TRANSFORMS = [{"type": "Resize", "target_size": [96, 64]}, {"type": "Normalize"}]  # a fixed shape: TensorRT too


@pytest.fixture(scope="module")
def fp32_exports(clas_export, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prequant_fp32")
    return {"cls": clas_export,
            "det": make_detector(root / "det", with_nms=True, seed=3),
            "seg": make_segmenter(root / "seg", with_argmax=False, input_hw=(64, 96),
                                  deploy_overrides={"transforms": SEG_TRANSFORMS})}


@pytest.fixture(scope="module")
def quantized(fp32_exports, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prequant_int8")
    return {kind: quantize_export(src, root / kind) for kind, src in fp32_exports.items()}


@pytest.fixture(scope="module")
def repos(quantized, tmp_path_factory) -> dict[str, Path]:
    """Every kind for every backend: python ones into ``served``, platform ones into ``container``."""
    root = tmp_path_factory.mktemp("prequant_repos")
    results = {}
    for kind, export in quantized.items():
        for backend in BACKENDS:
            repo = root / ("served" if backend.startswith("python") else "container")
            name = f"{kind}_{backend.replace('-', '_')}"
            results[name] = build(export, repo, backend=backend, name=name, layout="ensemble")
    return {"served": root / "served", "container": root / "container", "results": results}


def test_intake_tells_the_quantization_format(fp32_exports, quantized):
    assert load_model(fp32_exports["cls"]).quant_format is QuantFormat.NONE
    for kind in quantized:
        spec = load_model(quantized[kind])
        assert spec.quant_format is QuantFormat.QDQ and spec.is_quantized, kind


@pytest.mark.parametrize("kind", ["cls", "det", "seg"])
def test_every_backend_builds_a_prequantized_export(repos, kind):
    for backend in BACKENDS:
        name = f"{kind}_{backend.replace('-', '_')}"
        result = repos["results"][name]
        repo = repos["served" if backend.startswith("python") else "container"]
        info = json.loads((repo / name / "tritongen_build.json").read_text())["int8"]
        assert info["quantization"]["format"] == "quantize_linear", (name, info)
        assert info["fidelity"] is None  # no FP32 model at hand for a bare directory
        runtime = repo / f"{name}_runtime" / "1"
        if backend == "python-paddle":
            flags = json.loads((runtime / "runtime.json").read_text())
            assert flags["int8"] is result.int8.int8_kernels
            if result.int8.int8_kernels:
                assert info["conversion_check"]["headline"]["value"] > 0
            else:  # oneDNN did not follow the program: float kernels, said so
                assert any("float kernels" in note for note in info["notes"])
            continue
        check = info["conversion_check"]
        assert check["reference"] == "the same INT8 program in Paddle Inference", check
        graph = onnx.load(str(runtime / "model.onnx")).graph
        assert any(n.op_type == "QuantizeLinear" for n in graph.node), name
        if backend == "tensorrt":
            assert (runtime / "build_plan.sh").is_file()
            assert result.next_command and result.next_command.endswith(f"/models/{name}_runtime/1/build_plan.sh")
            zero_points = [i for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8]
            assert not zero_points  # TensorRT's explicit quantization: symmetric int8
        else:  # ONNX Runtime: activations moved to uint8 so MLAS fuses the convs
            assert any(i.data_type == onnx.TensorProto.UINT8 for i in graph.initializer), name
            assert result.next_command is None
        if kind == "det" and backend in ("onnxruntime", "tensorrt"):
            assert "multiclass_nms3" not in (result.spec.op_types or set())  # cut like FP32 for platforms


@pytest.mark.parametrize("kind", ["cls", "det", "seg"])
def test_legacy_fake_quantize_exports_build(fp32_exports, tmp_path, kind):
    """PaddleSlim's older frozen format (fake_quantize_* / fake_dequantize_*), which paddle2onnx
    refuses, is rewritten to Q/DQ at build time and checked like any quantized program."""
    legacy = quantize_export(fp32_exports[kind], tmp_path / "legacy", legacy=True)
    assert load_model(legacy).quant_format is QuantFormat.LEGACY
    for backend in ("python-onnxruntime", "tensorrt"):
        result = build(legacy, tmp_path / "repo", backend=backend, name=f"l_{backend.replace('-', '_')}")
        info = result.int8.to_dict()
        assert info["quantization"]["format"] == "fake_quantize" and info["conversion_check"], info
        assert result.int8.spec.quant_format is QuantFormat.QDQ


def test_prequantized_ensembles_serve_like_the_program_in_paddle(repos, quantized, photos, tmp_path_factory):
    """Served answers (INT8 ONNX Runtime, oneDNN or Paddle's kernels) vs the same program run
    in-process by Paddle Inference through the same pre/post-processing."""
    served = start_serve_cli(repos["served"], tmp_path_factory.mktemp("prequant_logs"))
    try:
        for backend in ("python_onnxruntime", "python_paddle"):
            local = {kind: LocalPredictor(load_model(quantized[kind]), "paddle").predict(photos) for kind in quantized}
            with ClassificationClient(f"cls_{backend}", url=served.grpc_url) as client:
                got = client.classify(photos)
            agree = np.mean([g.label_ids[0] == r.label_ids[0] for g, r in zip(got, local["cls"])])
            assert agree >= 0.8, (backend, [g.label_ids for g in got], [r.label_ids for r in local["cls"]])
            with DetectionClient(f"det_{backend}", url=served.grpc_url) as client:
                got = client.detect(photos)
            rows = [_rows(d) for d in local["det"]]
            report = detection_agreement(rows, [_rows(d) for d in got], 0.5)
            assert report.reference_detections > 0 and report.agreement >= 0.8, (backend, report)
            with SegmentationClient(f"seg_{backend}", url=served.grpc_url) as client:
                got = client.segment(photos)
            same = np.mean([np.mean(g.label_map == r.label_map) for g, r in zip(got, local["seg"])])
            assert same >= 0.95, (backend, same)
    finally:
        stop_serve_cli(served)


def _rows(detection) -> np.ndarray:
    return np.array([[c, s, *b] for c, s, b in zip(detection.label_ids, detection.scores, detection.boxes)],
                    np.float32).reshape(-1, 6)


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_the_check_catches_a_wrong_conversion(quantized, tmp_path, kind):
    """Activation scales left in Paddle's convention (abs max, not abs max / 127) — the classic
    Q/DQ conversion slip — must fail the check; the right conversion passes it."""
    spec = load_model(quantized[kind])
    artifact = get_int8_target("onnxruntime").adopt(spec, tmp_path / "ok", lambda message: None)
    model = onnx.load(str(artifact.onnx))
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue  # weights keep theirs
        if node.input[1] in initializers:
            scale = initializers[node.input[1]]
        else:
            scale = next(a.t for a in constants[node.input[1]].attribute if a.name == "value")
        value = onnx.numpy_helper.to_array(scale)
        scale.CopyFrom(onnx.numpy_helper.from_array((value * 127).astype(value.dtype), scale.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    reference = paddle_runner(observers_applied(spec, tmp_path / "reference"))
    check_conversion(reference, onnx_runner(artifact.onnx), spec, "right", "Paddle")
    with pytest.raises(ConversionError, match="more than INT8 rounding explains"):
        check_conversion(reference, onnx_runner(broken), spec, "broken", "Paddle")


# ------------------------------------------------------------------------------ the zoo, as users type it


@pytest.fixture(scope="module")
def zoo_env(fp32_exports, quantized, tmp_path_factory):
    """A FastDeploy-style mirror: FP32 and INT8 archives of the classifier and the detector."""
    root = tmp_path_factory.mktemp("zoo_mirror")
    populate(root, {"resnet50_vd": fp32_exports["cls"], "resnet50_vd_ptq": quantized["cls"],
                    "ppyoloe": fp32_exports["det"], "ppyoloe_qat": quantized["det"]})
    with ZooMirror(root) as mirror:
        yield {**os.environ, **mirror.environ(), "TRITONGEN_CACHE": str(tmp_path_factory.mktemp("zoo_cache"))}


def test_headline_command_takes_the_published_int8_model_and_tensorrt(zoo_env, tmp_path):
    repo = tmp_path / "R"
    proc = run_cli("build", "ppyoloe", "--int8", "--fp16", "--output", repo, env=zoo_env)
    assert "ppyoloe_qat" in proc.stderr and "--fp16: building for the tensorrt backend" in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("next: docker run") and lines[-1].endswith("/1/build_plan.sh"), proc.stdout
    assert "INT8 (tensorrt) vs FP32:" in proc.stdout  # the FP32 original came from the zoo too
    (runtime,) = repo.glob("*_runtime")
    assert (runtime / "1" / "build_plan.sh").is_file()
    graph = onnx.load(str(runtime / "1" / "model.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer) or any(
        n.op_type == "Cast" for n in graph.node)  # --fp16: the float part in FP16


def test_int8_zoo_name_builds_the_default_backend(zoo_env, tmp_path):
    proc = run_cli("build", "resnet50_vd", "--int8", "--output", tmp_path / "R", "--name", "r50", env=zoo_env)
    assert "resnet50_vd_ptq" in proc.stderr
    info = json.loads((tmp_path / "R" / "r50" / "tritongen_build.json").read_text())
    assert info["backend"] == "python-onnxruntime" and info["int8"]["fidelity"]["headline"]["value"] >= 0.0
    assert "INT8 (onnxruntime) vs FP32: top-1 agreement" in proc.stdout


@pytest.mark.parametrize("args, expected", [
    (["yolov5s", "--int8"], ["no published INT8 model", "--calib-dir DIR", "without --int8"]),
    (["ppyoloe", "--fp16", "--backend", "python-onnxruntime"], ["--fp16 applies to the tensorrt backend"]),
])
def test_one_line_errors(zoo_env, tmp_path, args, expected):
    proc = run_cli("build", *args, "--output", tmp_path / "R", env=zoo_env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert all(text in line for text in expected), line
    assert not (tmp_path / "R").exists()


def test_calibration_images_with_a_quantized_export_is_an_error(quantized, photos, tmp_path):
    proc = run_cli("build", quantized["cls"], "--int8", "--calib-dir", photos[0].parent, "--output", tmp_path, check=False)
    assert proc.returncode == 1 and "already quantized" in proc.stderr and "Traceback" not in proc.stderr
