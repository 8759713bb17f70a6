"""perf_analyzer in this environment, and `tritongen bench serving` on the demo classifier.

A real tritonserver serves a trivial identity model and the demo classifier; NVIDIA's C++
perf_analyzer (from the tritonclient wheel) loads both and its CSV is read. `bench serving` then
builds, serves and measures the demo classifier end to end. Speed is never asserted (the
machine is shared): only that every number is there, positive, and written out.
"""
from __future__ import annotations

import base64
import csv
import re
import struct

import pytest

from tritongen.bench.serving import CSV_COLUMNS, default_concurrency
from tritongen.errors import PerfError
from tritongen.perf.perf_analyzer import (CUDART, find_perf_analyzer, parse_csv, perf_analyzer_problem,
                                          run_perf_analyzer, write_image_input_data)
from tritongen.testing.identity import write_identity_model

from .conftest import free_port, run_cli

QUICK = dict(measurement_interval_ms=400, stability_percentage=60, max_trials=6)


def needs_perf_analyzer():
    analyzer = find_perf_analyzer()
    if analyzer is None:
        pytest.skip(perf_analyzer_problem())
    return analyzer


@pytest.fixture(scope="module")
def served(tmp_path_factory, clas_export):
    from tritongen.build import build
    from tritongen.serve import TritonServer

    repo = tmp_path_factory.mktemp("pa_repo")
    write_identity_model(repo, "identity")
    build(clas_export, repo, name="pa_demo", backend="python-onnxruntime", layout="ensemble")  # composing steps
    with TritonServer(repo, free_port(), free_port(), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def photos_dir(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_photos")
    for p in photos[:3]:
        (d / p.name).write_bytes(p.read_bytes())
    return d


# ------------------------------------------------------------------------------ unit level


def test_find_perf_analyzer_in_this_environment():
    analyzer = needs_perf_analyzer()
    assert analyzer.binary.is_file() and analyzer.version.startswith("2.51")
    assert any((d / CUDART).exists() for d in analyzer.library_dirs)  # the wheel's libcudart, found without exports
    assert analyzer.env({})["LD_LIBRARY_PATH"].startswith(str(analyzer.library_dirs[0]))
    assert analyzer.shell_prefix().startswith("LD_LIBRARY_PATH=")


def test_image_input_data_is_tritons_bytes_serialization(tmp_path):
    path = write_image_input_data(tmp_path / "in.json", "IMAGE", [b"\xff\xd8jpeg", b"png!"])
    import json

    items = json.loads(path.read_text())["data"]
    assert [item["IMAGE"]["shape"] for item in items] == [[1], [1]]
    raw = base64.b64decode(items[0]["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == 6 and raw[4:] == b"\xff\xd8jpeg"


def test_parse_csv_reads_levels_and_composing_models(tmp_path):
    header = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
              "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency")
    (tmp_path / "r.csv").write_text(header + "\n2,200.5,5,300,1,10,4000,50,2,9000,11000,12000,15000\n"
                                    "1,150,5,300,1,10,3000,50,2,6000,7000,8000,9000\n")
    sub = header.split(",p50")[0]
    (tmp_path / "m_pre_v1.r.csv").write_text(sub + "\n1,150,0,2,40,20,2000,100,0\n2,200.5,0,2,900,20,2500,100,0\n")
    levels = parse_csv(tmp_path / "r.csv")
    assert [lv.concurrency for lv in levels] == [1, 2]
    assert levels[0].throughput == 150 and levels[0].p50_ms == 6.0 and levels[0].p99_ms == 9.0
    assert levels[1].steps[0].model == "m_pre" and levels[1].server_queue_us == 900
    assert levels[0].server_compute_us == 2120


def test_default_concurrency_reaches_twice_the_cores():
    assert default_concurrency(2) == [1, 2, 4] and default_concurrency(3) == [1, 2, 4, 6]
    assert default_concurrency(1) == [1, 2]


# ------------------------------------------------------------------------------ real server


def test_perf_analyzer_loads_identity_and_demo_classifier(served, photos_dir):
    needs_perf_analyzer()
    identity = run_perf_analyzer("identity", served.grpc_url, 1, input_data="random", **QUICK)
    demo = run_perf_analyzer("pa_demo", served.grpc_url, [1, 2], images=photos_dir, **QUICK)
    for result in (identity, demo):
        assert result.levels or result.failures, result.output
        for lv in result.levels:
            assert lv.throughput > 0 and 0 < lv.p50_ms <= lv.p90_ms <= lv.p99_ms
        assert all("-f" in cmd for cmd in result.commands)
    for lv in demo.levels:  # the ensemble's composing models, each with its own server-side times
        assert {s.model for s in lv.steps} == {"pa_demo_preprocess", "pa_demo_runtime", "pa_demo_postprocess"}
        assert all(s.compute_infer_us > 0 for s in lv.steps)
    with pytest.raises(PerfError, match="nosuch"):
        run_perf_analyzer("nosuch", served.grpc_url, 1, input_data="random", **QUICK)


def test_bench_serving_on_the_demo_classifier(clas_export, photos_dir, tmp_path):
    csv_path, png = tmp_path / "serving.csv", tmp_path / "serving.png"
    proc = run_cli("bench", "serving", clas_export, "--name", "bench_demo", "--layout", "ensemble", "--images", photos_dir, "--runs", "6",
                   "--concurrency", "1,2", "-p", "400", "-s", "60", "-r", "6", "--csv", csv_path, "--plot", png,
                   timeout=300)
    text = proc.stdout
    numbers = r"\s+([\d.]+) ms\s+([\d.]+) ms"
    in_process = re.search(r"in-process \(LocalPredictor\)" + numbers, text)
    served = re.search(r"served \(gRPC client\)" + numbers, text)
    assert in_process and served, text
    assert all(float(v) > 0 for v in (*in_process.groups(), *served.groups()))
    assert "served / in-process:" in text and "ISA:" in text and "bench_demo_runtime" in text
    assert ("perf_analyzer 2.51" in text) == (find_perf_analyzer() is not None), text

    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    kinds = {r["measurement"] for r in rows}
    assert kinds == {"in-process", "served", "server step", "load"}
    load = [r for r in rows if r["measurement"] == "load" and r["throughput_infer_per_s"]]
    tools = {r["tool"] for r in load}
    assert "tritongen perf" in tools
    if find_perf_analyzer() is not None:
        assert "perf_analyzer" in tools
    assert all(float(r["throughput_infer_per_s"]) > 0 for r in load)
    steps = [r["step"] for r in rows if r["measurement"] == "server step"]
    assert steps == ["bench_demo_preprocess", "bench_demo_runtime", "bench_demo_postprocess"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
