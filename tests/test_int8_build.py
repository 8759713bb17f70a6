"""`tritongen build --int8`: quantize, pick the INT8 artifact per backend, serve it for real."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tritongen.client import ClassificationClient
from tritongen.intake import load_model
from tritongen.predict import LocalPredictor

from .conftest import run_cli, start_serve_cli, stop_serve_cli
from .test_quantize import calib_dir  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def int8_repo(clas_export, calib_dir, tmp_path_factory):  # noqa: F811
    repo = tmp_path_factory.mktemp("int8repo")
    for name, backend in (("q_ort", "python-onnxruntime"), ("q_pd", "python-paddle"), ("q_plat", "onnxruntime")):
        run_cli("build", clas_export, "--int8", "--calib-dir", calib_dir, "--name", name, "--backend", backend, "--layout", "ensemble",
                "--output", repo / ("served" if backend != "onnxruntime" else "container"))
    return repo


def test_build_records_int8_choice(int8_repo):
    info = json.loads((int8_repo / "served/q_ort/tritongen_build.json").read_text())
    ort = info["int8"]["onnxruntime"]
    assert ort["chosen"] in {c["recipe"] for c in ort["candidates"]}
    assert {c["recipe"] for c in ort["candidates"]} == {"paddle-scales", "ort-placement", "ort-calibration"}
    assert all("fused" in c and c["latency_ms"] > 0 for c in ort["candidates"])
    assert info["int8"]["quantization"]["algo"] == "hist"
    pd = json.loads((int8_repo / "served/q_pd/tritongen_build.json").read_text())
    runtime = json.loads((int8_repo / "served/q_pd_runtime/1/runtime.json").read_text())
    assert runtime["int8"] is True and runtime["enable_mkldnn"] is True
    assert "onnxruntime" not in pd["int8"] and pd["int8"]["paddle_fidelity"]["headline"]["value"] >= 0.5
    plat = json.loads((int8_repo / "container/q_plat/tritongen_build.json").read_text())
    assert plat["int8"]["onnxruntime"]["chosen"]


def test_int8_ensembles_serve_close_to_fp32(int8_repo, clas_export, photos):
    served = start_serve_cli(int8_repo / "served", int8_repo)
    try:
        reference = LocalPredictor(load_model(clas_export), "paddle").predict(photos)
        for model in ("q_ort", "q_pd"):
            with ClassificationClient(model, url=served.grpc_url) as client:
                results = client.classify(photos)
            agree = np.mean([r.label_ids[0] == f.label_ids[0] for r, f in zip(results, reference)])
            assert agree >= 0.6, (model, [r.label_ids for r in results], [f.label_ids for f in reference])
            assert all(abs(sum(r.scores) - 1) < 0.5 for r in results)  # still probabilities
    finally:
        stop_serve_cli(served)


def test_max_drop_fails_the_build_and_writes_nothing(clas_export, calib_dir, tmp_path):  # noqa: F811
    proc = run_cli("build", clas_export, "--int8", "--calib-dir", calib_dir, "--algo", "abs_max", "--batch-nums", "1",
                   "--max-drop", "0", "--name", "strict", "--output", tmp_path / "repo", "--backend", "python-paddle",
                   check=False)
    if proc.returncode == 0:
        pytest.fail("a zero --max-drop passed; the tiny model should lose some agreement in INT8:\n" + proc.stdout)
    assert "max-drop" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo" / "strict").exists()


def test_int8_needs_calibration_images(clas_export, tmp_path):
    proc = run_cli("build", clas_export, "--int8", "--output", tmp_path, check=False)
    assert proc.returncode == 1 and "--calib-dir" in proc.stderr


def test_bench_runtime_smoke(clas_export, calib_dir, tmp_path):  # noqa: F811
    """Not a speed assertion: the benchmark runs and writes FastDeploy's published tables' CSV columns."""
    out = tmp_path / "bench.csv"
    proc = run_cli("bench", "runtime", clas_export, "--int8", "--calib-dir", calib_dir, "--runs", "3", "--warmup", "1",
                   "--csv", out, env={"COLUMNS": "250", "PATH": ""})
    rows = list(csv.DictReader(out.open()))
    with out.open() as f:
        header = f.readline().strip().split(",")
    assert header == ["family", "model", "backend", "hardware", "latency", "fp32_ms", "int8_ms", "int8_fp16_ms",
                      "int8_fp16_pm_ms", "max_speedup", "fp32_acc", "int8_acc", "metric", "method"]
    assert {(r["backend"], r["latency"]) for r in rows} == {(b, l) for b in ("ONNX Runtime", "Paddle Inference")
                                                            for l in ("runtime", "end2end")}
    assert all(float(r["fp32_ms"]) > 0 and float(r["int8_ms"]) > 0 and r["family"] == "cls" for r in rows)
    assert "CPU:" in proc.stdout
