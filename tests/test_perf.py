"""`tritongen perf` against a real tritonserver: perf_analyzer's method, CSV, errors.

One server serves a trivial identity model, a slow one (for timeouts) and the tiny
classification ensemble. Speed is not asserted here (benchmarks/perf_client.py measures it);
these tests check the method: windows that stabilise, rates that are kept, server-side
numbers that fit inside the client's, perf_analyzer's CSV header, and clean failures.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tritongen.errors import PerfError
from tritongen.perf import PerfSettings, parse_range, run_perf
from tritongen.perf.inputs import ModelInfo, TensorInfo, build_requests, parse_shapes
from tritongen.perf.measure import _percentile_ns, is_stable
from tritongen.perf.report import csv_header
from tritongen.testing.identity import write_identity_model

from .conftest import free_port, run_cli, start_serve_cli, stop_serve_cli

# perf_analyzer's CSV header (report_writer.cc) with server statistics, no response cache.
PA_HEADER = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
             "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency")
PA_COMPOSING_HEADER = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
                       "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv")
# Windows short enough for CI; a generous spread because the CI machine runs server and client on 2 cores.
QUICK = ["-p", "1000", "-s", "40", "--max-trials", "12"]


@pytest.fixture(scope="module")
def perf_server(tmp_path_factory, clas_export):
    repo = tmp_path_factory.mktemp("perf_repo")
    write_identity_model(repo, "identity")
    write_identity_model(repo, "slow", delay_ms=3000)
    write_identity_model(repo, "queued", delay_ms=40, dynamic_batching=False)  # latency ~ concurrency x 40 ms
    write_identity_model(repo, "varlen", dims=(-1,))  # an output whose size the config does not fix
    run_cli("build", clas_export, "--name", "tiny_perf", "--backend", "python-onnxruntime", "--layout", "ensemble", "--output", repo)
    served = start_serve_cli(repo, tmp_path_factory.mktemp("perf_logs"))
    yield served
    stop_serve_cli(served)


# ------------------------------------------------------------------------------ unit level


def test_ranges_and_shapes():
    assert parse_range("1:4") == [1, 2, 3, 4] and parse_range("2:8:3") == [2, 5, 8] and parse_range("3") == [3]
    assert parse_range("10:30:10", float) == [10.0, 20.0, 30.0]
    for bad in ("0:4", "4:1", "a:b", "1:2:3:4"):
        with pytest.raises(PerfError):
            parse_range(bad)
    assert parse_shapes(["x:3,224,224"]) == {"x": [3, 224, 224]}
    with pytest.raises(PerfError, match="NAME:d1"):
        parse_shapes(["x"])


def test_stability_is_max_over_min_of_the_last_three_windows():
    assert is_stable([(100, 10), (104, 10.5), (96, 9.8)], 10)
    assert not is_stable([(100, 10), (104, 10.5)], 10)  # fewer than three windows
    assert not is_stable([(100, 10), (120, 10), (100, 10)], 10)  # throughput spread 20 %
    assert not is_stable([(100, 10), (100, 12), (100, 10)], 10)  # latency spread 20 %
    assert is_stable([(50, 1), (100, 10), (104, 10.5), (96, 9.8)], 10)  # only the last three count
    assert not is_stable([(0, 10), (0, 10), (0, 10)], 10)  # nothing finished is not stable


def test_nearest_rank_percentiles():
    values = np.arange(1, 101) * 1000
    assert [_percentile_ns(values, p) for p in (50, 90, 99)] == [50_000, 90_000, 99_000]
    assert _percentile_ns(np.array([7]), 99) == 7 and _percentile_ns(np.array([], np.int64), 50) == 0


def test_csv_header_is_perf_analyzers():
    assert ",".join(csv_header("concurrency", True, False, [50, 90, 95, 99], False, False)) == PA_HEADER
    rate = csv_header("request_rate", True, True, [50, 90, 95, 99], True, False)
    assert rate[0] == "Request Rate" and "Server Cache Hit" in rate and rate[-3:] == ["Avg latency", "request/response", "response wait"]


def test_request_data_sources(tmp_path):
    info = ModelInfo("m", "1", 8, [TensorInfo("X", "FP32", (-1, 4)), TensorInfo("IMAGE", "BYTES", (1,))], [])
    with pytest.raises(PerfError, match="--shape X:D,4"):
        build_requests(info)
    with pytest.raises(PerfError, match="does not fit"):
        build_requests(info, shapes={"X": [2, 5]})
    with pytest.raises(PerfError, match="exceeds .* max_batch_size 8"):
        build_requests(info, batch_size=9, shapes={"X": [2, 4]})
    requests = build_requests(info, batch_size=3, shapes={"X": [2, 4]})
    assert requests[0]["X"].shape == (3, 2, 4) and requests[0]["X"].dtype == np.float32
    assert requests[0]["IMAGE"].shape == (3, 1) and isinstance(requests[0]["IMAGE"][0, 0], bytes)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"X": {"content": list(range(8)), "shape": [2, 4]}, "IMAGE": ["abc"]},
                                         {"X": [1] * 8, "IMAGE": ["de"]}]}))
    first = build_requests(info, batch_size=2, input_data=str(data), shapes={"X": [2, 4]})[0]
    np.testing.assert_array_equal(first["X"][0].ravel(), np.arange(8))
    assert first["IMAGE"].ravel().tolist() == [b"abc", b"de"]
    data.write_text("{not json")
    with pytest.raises(PerfError, match="not valid JSON"):
        build_requests(info, input_data=str(data), shapes={"X": [2, 4]})
    with pytest.raises(PerfError, match="--images .* not a directory"):
        build_requests(info, shapes={"X": [2, 4]}, images=tmp_path / "missing")


# ------------------------------------------------------------------------------ served


def test_concurrency_sweep_is_stable_and_writes_perf_analyzers_csv(perf_server, tmp_path):
    out = tmp_path / "identity.csv"
    export = tmp_path / "profile.json"
    proc = run_cli("perf", "identity", "-i", "grpc", "-u", perf_server.grpc_url, "--concurrency-range", "1:4", *QUICK,
                   "--warmup-request-count", "20", "-f", out, "--profile-export-file", export, timeout=300)
    assert "Inferences/Second vs. Client Average Batch Latency" in proc.stdout
    for level in (1, 2, 3, 4):
        assert f"Request concurrency: {level}\n" in proc.stdout
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert ",".join(rows[0]) == PA_HEADER
    assert sorted(int(r[0]) for r in rows[1:]) == [1, 2, 3, 4]
    throughputs = [float(r[1]) for r in rows[1:]]
    assert throughputs == sorted(throughputs) and throughputs[0] > 0  # perf_analyzer sorts by throughput
    for row in rows[1:]:
        queue_to_output = sum(int(v) for v in row[4:8])
        assert queue_to_output <= int(row[9]) * 2  # server time per request is of the client's order (p50)
    profile = json.loads(export.read_text())
    assert [e["experiment"] for e in profile["experiments"]] == [{"mode": "concurrency", "value": v} for v in (1, 2, 3, 4)]
    first = profile["experiments"][0]
    assert len(first["window_boundaries"]) >= 4 and first["requests"]
    assert all(r["response_timestamps"][0] > r["timestamp"] for r in first["requests"])


def test_request_rate_is_kept(perf_server):
    settings = PerfSettings(mode="request_rate", levels=[80.0], measurement_interval_ms=1500, stability_percentage=40,
                            max_trials=12)
    (status,) = run_perf("identity", perf_server.grpc_url, settings).results
    assert status.stable
    assert abs(status.infer_per_sec - 80) <= 8, status.infer_per_sec  # within 10 % of the asked rate
    assert abs(status.sent / status.duration_s - 80) <= 8
    poisson = PerfSettings(mode="request_rate", levels=[80.0], distribution="poisson", measurement_interval_ms=2000,
                           stability_percentage=40, max_trials=12)
    (status,) = run_perf("identity", perf_server.grpc_url, poisson).results
    assert abs(status.infer_per_sec - 80) <= 16  # Poisson counts in 2 s windows vary more
    gaps = np.diff(np.sort(status.records[:, 0])) / 1e9
    assert gaps.std() / gaps.mean() > 0.5  # exponential gaps (coefficient of variation ~1), not a metronome


def test_ensemble_breakdown_fits_inside_client_latency(perf_server, photos, tmp_path):
    settings = PerfSettings(levels=[2], batch_size=2, measurement_mode="count_windows", measurement_request_count=60,
                            stability_percentage=40, max_trials=12)
    run = run_perf("tiny_perf", perf_server.grpc_url, settings, images=photos[0].parent)
    (status,) = run.results
    assert run.info.composing == ["tiny_perf_preprocess", "tiny_perf_runtime", "tiny_perf_postprocess"]
    assert status.request_count >= 3 * 60 and status.infer_per_sec == pytest.approx(
        status.request_count * 2 / status.duration_s)
    parts = status.breakdown_us()
    assert all(v > 0 for v in (parts["compute_infer"],)), parts
    assert sum(parts.values()) <= status.avg_latency_ns / 1000  # server-side pieces sum to at most the client latency
    assert status.model_stats.counts["success"] >= status.request_count - 4  # the server saw the same requests
    for name in run.info.composing:  # every step ran every request (up to the 2 in flight at a snapshot)
        assert abs(status.server[name].counts["success"] - status.model_stats.counts["success"]) <= 2
    from tritongen.perf import report

    files = report.write_csv(tmp_path / "ens.csv", run.results, run.info)
    assert [f.name for f in files] == ["ens.csv"] + [f"{m}_v1.ens.csv" for m in run.info.composing]
    assert files[1].read_text().splitlines()[0] == PA_COMPOSING_HEADER
    text = report.level_text(status)
    assert "Composing models: " in text and "tiny_perf_runtime, version: " in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (["identity", "-u", "127.0.0.1:{free}"], "cannot reach Triton at 127.0.0.1:"),
    (["nosuchmodel"], "model 'nosuchmodel' is not ready"),
    (["identity", "--shape", "INPUT0:3"], "does not fit the model's dims [16]"),
    (["identity", "-b", "64"], "exceeds model 'identity''s max_batch_size 8"),
    (["tiny_perf"], "failed: "),  # random bytes are no image: the server's own message, not a hang
    (["slow", "--timeout", "1"], "DEADLINE_EXCEEDED"),
    (["identity", "--concurrency-range", "1", "--request-rate-range", "10"], "not both"),
    (["identity", "--shared-memory", "cuda"], "--shared-memory cuda: "),  # no GPU here: the reason, not a crash
    (["identity", "--shared-memory", "posix"], "unknown --shared-memory kind 'posix'; choose one of: none, system, cuda"),
], ids=["server-down", "unknown-model", "bad-shape", "batch-too-big", "server-error", "timeout", "two-modes", "shm-cuda",
        "shm-unknown"])
def test_errors_are_clear_and_exit_nonzero(perf_server, args, message):
    args = [a.replace("{free}", str(free_port())) for a in args]
    if "-u" not in args:
        args += ["-u", perf_server.grpc_url]
    args += ["-i", "grpc"]
    start = time.monotonic()
    proc = run_cli("perf", *args, "-p", "1000", check=False, timeout=100)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one error line
    assert time.monotonic() - start < 60


def test_unstable_measurement_exits_2(perf_server):
    """perf_analyzer's exit code 2 when the windows never agree (a 0.01 % spread never happens)."""
    proc = run_cli("perf", "identity", "-i", "grpc", "-u", perf_server.grpc_url, "-p", "300", "-s", "0.01", "--max-trials", "3",
                   check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Failed to obtain stable measurement within 3 measurement windows" in proc.stderr


# ------------------------------------------------------------------------ protocols and the oracle


@pytest.mark.parametrize("args, message", [
    (["identity", "-u", "127.0.0.1:{free}"], "cannot reach Triton at 127.0.0.1:"),
    (["nosuchmodel"], "model 'nosuchmodel' is not ready"),
    (["slow", "--timeout", "1"], "DEADLINE_EXCEEDED"),
    (["identity", "-i", "websocket"], "unknown protocol 'websocket'"),
], ids=["server-down", "unknown-model", "timeout", "unknown-protocol"])
def test_http_errors_are_clear_and_exit_nonzero(perf_server, args, message):
    args = [a.replace("{free}", str(free_port())) for a in args]
    if "-u" not in args:
        args += ["-u", perf_server.http_url]
    proc = run_cli("perf", *args, "-p", "1000", check=False, timeout=100)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_http_and_grpc_measure_the_same_model_alike(perf_server, photos, tmp_path):
    """Both engines send the same requests (images through the ensemble here; a failed request
    fails the run) and both CSVs have perf_analyzer's header."""
    settings = dict(levels=[2], measurement_interval_ms=1000, stability_percentage=40, max_trials=12)
    runs = {protocol: run_perf("tiny_perf", url, PerfSettings(**settings), images=photos[0].parent, protocol=protocol)
            for protocol, url in (("http", perf_server.http_url), ("grpc", perf_server.grpc_url))}
    from tritongen.perf import report

    for protocol, run in runs.items():
        (status,) = run.results
        assert status.infer_per_sec > 0 and status.request_count > 0, protocol
        files = report.write_csv(tmp_path / f"{protocol}.csv", run.results, run.info)
        assert files[0].read_text().splitlines()[0] == PA_HEADER


def test_throughput_matches_perf_analyzer_over_http(perf_server):
    """The real perf_analyzer is the oracle: same model, same server, same flags (HTTP, its default
    protocol), interleaved; `tritongen perf` must drive the server at least 85 % as hard at
    concurrency 1 and 4 (it may drive it harder: its client takes less CPU from the shared cores)."""
    from tritongen.perf.perf_analyzer import find_perf_analyzer, run_perf_analyzer

    if find_perf_analyzer() is None:
        pytest.skip("perf_analyzer cannot run here (scripts/setup.sh installs it with tritonclient==2.51.0)")
    ratios = {}
    for level in (1, 4):
        ours = run_perf("identity", perf_server.http_url, PerfSettings(levels=[level], measurement_interval_ms=1500,
                                                                       stability_percentage=25, max_trials=10),
                        input_data="random", protocol="http").results[0].infer_per_sec
        theirs = run_perf_analyzer("identity", perf_server.http_url, [level], input_data="random", protocol="http",
                                   measurement_interval_ms=1500, stability_percentage=25).levels[0].throughput
        ratios[level] = ours / theirs
    assert all(r >= 0.85 for r in ratios.values()), ratios


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_version_and_headers_reach_the_server(perf_server, protocol):
    url = perf_server.http_url if protocol == "http" else perf_server.grpc_url
    proc = run_cli("perf", "identity", "-i", protocol, "-u", url, "-x", "1", "-H", "X-Tritongen-Test:1", *QUICK, timeout=120)
    assert "Concurrency: 1, throughput:" in proc.stdout
    # perf_analyzer's wording for the protocol that carried the load (inference_profiler.cc)
    label, parts = {"http": ("HTTP", "send/recv"), "grpc": ("gRPC", "(un)marshal request/response")}[protocol]
    assert f"    Avg {label} time: " in proc.stdout and f" usec ({parts} " in proc.stdout, proc.stdout
    other = {"http": "gRPC", "grpc": "HTTP"}[protocol]
    assert f"Avg {other} time" not in proc.stdout
    proc = run_cli("perf", "identity", "-i", protocol, "-u", url, "-x", "7", "-p", "500", check=False, timeout=60)
    assert proc.returncode == 1 and "model 'identity' version 7 is not ready" in proc.stderr, proc.stderr


def test_tls_to_a_plaintext_server_is_one_clear_error(perf_server):
    proc = run_cli("perf", "identity", "-i", "grpc", "-u", perf_server.grpc_url, "--ssl-grpc-use-ssl", "-p", "500",
                   check=False, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "TLS handshake failed, is TLS enabled on the server?" in proc.stderr


def test_compare_perf_analyzer_prints_both_side_by_side(perf_server):
    from tritongen.perf.perf_analyzer import find_perf_analyzer

    if find_perf_analyzer() is None:
        pytest.skip("perf_analyzer cannot run here (scripts/setup.sh installs it with tritonclient==2.51.0)")
    proc = run_cli("perf", "identity", "-u", perf_server.http_url, "--concurrency-range", "2", "-p", "800", "-s", "40",
                   "--compare-perf-analyzer", timeout=180)
    header, row = proc.stdout.strip().splitlines()[-2:]
    assert "perf_analyzer infer/s" in header and "ratio" in header
    concurrency, ours, theirs, ratio = row.split()[:4]
    assert concurrency == "2" and float(ours) > 0 and float(theirs) > 0
    assert abs(float(ratio) - float(ours) / float(theirs)) < 0.01


def test_binary_search_finds_the_highest_concurrency_within_the_threshold(perf_server):
    """One instance, no batching, 40 ms a request: latency ~ concurrency x 40 ms, so with a 140 ms limit
    concurrency 3 (~120 ms) is the highest within it; the search measures 1, 8, 4, 2, 3."""
    settings = PerfSettings(levels=list(range(1, 9)), measurement_interval_ms=600, stability_percentage=30,
                            max_trials=10, latency_threshold_ms=140, binary_search=True)
    run = run_perf("queued", perf_server.grpc_url, settings)
    assert [int(r.value) for r in run.results] == [1, 8, 4, 2, 3]
    best = next(r for r in run.results if any("highest level" in w for w in r.warnings))
    assert int(best.value) == 3
    with pytest.raises(PerfError, match="--binary-search needs --latency-threshold"):
        PerfSettings(levels=[1, 8], binary_search=True).validate()


def test_request_intervals_file_sets_the_schedule(perf_server, tmp_path):
    """perf_analyzer's --request-intervals: gaps of 5 and 20 ms, repeated (80 requests/s on average):
    the sends keep that rate and the gaps between them alternate as written."""
    intervals = tmp_path / "intervals.txt"
    intervals.write_text("5000\n20000\n")
    out = tmp_path / "rate.csv"
    proc = run_cli("perf", "identity", "-u", perf_server.http_url, "--request-intervals", intervals, "-p", "1500",
                   "-s", "40", "--max-trials", "12", "-f", out, "--profile-export-file", tmp_path / "p.json", timeout=120)
    assert "Request Rate: 80" in proc.stdout or "request rate 80" in proc.stdout.lower(), proc.stdout
    starts = sorted(r["timestamp"] for r in json.loads((tmp_path / "p.json").read_text())["experiments"][0]["requests"])
    gaps_ms = np.diff(np.array(starts, dtype=np.int64)) / 1e6
    short, long = (gaps_ms < 12.5).mean(), (gaps_ms >= 12.5).mean()
    assert abs(short - 0.5) < 0.15 and abs(long - 0.5) < 0.15, (short, long)
    assert abs(np.median(gaps_ms[gaps_ms < 12.5]) - 5) < 2 and abs(np.median(gaps_ms[gaps_ms >= 12.5]) - 20) < 3
    bad = tmp_path / "bad.txt"
    bad.write_text("5000\nsoon\n")
    proc = run_cli("perf", "identity", "-u", perf_server.http_url, "--request-intervals", bad, check=False)
    assert proc.returncode == 1 and "expected one number (µs) per line" in proc.stderr


def test_collect_metrics_columns_are_perf_analyzers(perf_server, tmp_path):
    """--collect-metrics polls the metrics endpoint during each level; the console shows what it
    reported (CPU gauges on this server) and the verbose CSV has exactly perf_analyzer's header,
    checked against the file perf_analyzer writes with the same flags in the same run."""
    import re

    metrics_url = re.search(r"metrics\s+(http://\S+/metrics)", perf_server.stdout_path.read_text()).group(1)
    flags = ["-p", "500", "--collect-metrics", "--metrics-url", metrics_url, "--metrics-interval", "200", "--verbose-csv"]
    ours = tmp_path / "tritongen.csv"
    proc = run_cli("perf", "identity", "-u", perf_server.http_url, *flags, "-s", "40", "-f", ours, timeout=120)
    assert "Server Prometheus Metrics:" in proc.stdout and "Avg CPU Utilization:" in proc.stdout, proc.stdout
    header = ours.read_text().splitlines()[0]
    assert header.endswith(",Avg GPU Utilization,Avg GPU Power Usage,Max GPU Memory Usage,Total GPU Memory")
    from tritongen.perf.perf_analyzer import find_perf_analyzer

    analyzer = find_perf_analyzer()
    if analyzer is None:
        pytest.skip("perf_analyzer cannot run here (scripts/setup.sh installs it with tritonclient==2.51.0)")
    theirs = tmp_path / "perf_analyzer.csv"
    import subprocess

    subprocess.run(analyzer.command("-m", "identity", "-u", perf_server.http_url, *flags, "-s", "40", "-f", str(theirs)),
                   env=analyzer.env(), capture_output=True, timeout=120, check=True)
    assert theirs.read_text().splitlines()[0] == header


# ------------------------------------------------------------------ shared memory, sync mode


SHM = Path("/dev/shm")


def _our_regions(pid: int) -> set[str]:
    """/dev/shm segments of the `tritongen perf` run in process ``pid``."""
    return {p.name for p in SHM.glob(f"tritongen-perf-{pid}-*")}


def _registered(served, prefix: str = "tritongen-perf-") -> set[str]:
    """System shared-memory regions the server knows, by name."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(served.grpc_url) as client:
        return {name for name in client.get_system_shared_memory_status().regions if name.startswith(prefix)}


def _worker_connections(port: int) -> int:
    """TCP connections from this process's load workers to ``port`` (their sockets' inodes in /proc/net/tcp)."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if b"tritongen.perf.worker" not in (proc / "cmdline").read_bytes():
                continue
            inodes |= {os.readlink(fd)[8:-1] for fd in (proc / "fd").iterdir() if os.readlink(fd).startswith("socket:[")}
        except OSError:  # a process that ended meanwhile
            continue
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_carries_the_data_and_is_released(perf_server, protocol):
    """perf_analyzer's layout: a region per input per distinct request, written once, and one per
    output; the server writes the identity's answer into the output region (so the requests really
    point at the regions), and afterwards no segment of ours is left in /dev/shm and none is
    registered with the server."""
    url = perf_server.http_url if protocol == "http" else perf_server.grpc_url
    seen: dict[str, object] = {}

    def during(event: dict) -> None:
        if seen:
            return
        names = _our_regions(os.getpid())
        seen["regions"], seen["registered"] = names, _registered(perf_server)
        inputs = {(SHM / n).read_bytes() for n in names if "INPUT0_0_" in n}
        output = next(SHM / n for n in names if n.endswith("-OUTPUT0"))
        for _ in range(50):  # the server may be writing it right now: read until a whole answer is seen
            if output.read_bytes() in inputs:
                seen["answer_in_region"] = True
                break
            time.sleep(0.01)

    settings = PerfSettings(levels=[2], shared_memory="system", measurement_interval_ms=800, stability_percentage=40,
                            max_trials=12)
    (status,) = run_perf("identity", url, settings, protocol=protocol, on_window=during).results
    assert status.request_count > 0 and status.stable
    inputs = {n for n in seen["regions"] if "-INPUT0_0_" in n}
    assert len(inputs) == 64 and {n for n in seen["regions"] if n.endswith("-OUTPUT0")}, seen["regions"]
    assert seen["registered"] == seen["regions"]  # every region registered, once, under its own name
    assert seen.get("answer_in_region"), "the server did not write the answer into the output region"
    assert not _our_regions(os.getpid()) and not _registered(perf_server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_too_small_output_region_is_one_clear_error_and_nothing_is_left(perf_server, protocol):
    """An output whose size the model does not fix gets --output-shared-memory-size per batch item
    (as perf_analyzer sizes it); 16 bytes cannot hold 64 floats: Triton refuses every request and the
    user is told which option to raise, and to what."""
    url = perf_server.http_url if protocol == "http" else perf_server.grpc_url
    before = {p.name for p in SHM.glob("tritongen-perf-*")}
    proc = run_cli("perf", "varlen", "-i", protocol, "-u", url, "--shape", "INPUT0:64", "--shared-memory", "system",
                   "--output-shared-memory-size", "16", "-p", "500", check=False, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "for output 'OUTPUT0' (16 bytes) should be at least 256 bytes" in proc.stderr, proc.stderr
    assert "raise --output-shared-memory-size (now 16 bytes per batch item) to at least 256" in proc.stderr
    assert {p.name for p in SHM.glob("tritongen-perf-*")} <= before and not _registered(perf_server)
    proc = run_cli("perf", "varlen", "-i", protocol, "-u", url, "--shape", "INPUT0:64", "--shared-memory", "system",
                   "--output-shared-memory-size", "256", *QUICK, timeout=120)  # the size it asked for is enough
    assert "Concurrency: 1, throughput:" in proc.stdout


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_releases_its_shared_memory(perf_server, sig):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM mid-measurement:
    the regions are unregistered and unlinked on the way out."""
    import signal
    import subprocess

    from .conftest import TRITONGEN

    proc = subprocess.Popen([*TRITONGEN, "perf", "identity", "-i", "grpc", "-u", perf_server.grpc_url, "-p", "5000",
                             "--shared-memory", "system", "--concurrency-range", "2"],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A suite run in the background (`cmd &`) ignores SIGINT, and a child inherits that:
                            # give perf the disposition a terminal's foreground process has.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(_registered(perf_server)) < 65 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(_our_regions(proc.pid)) == 65, proc.poll()  # 64 distinct requests + the output
        time.sleep(1.0)  # load running
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, sig), f"stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    assert not _our_regions(proc.pid) and not _registered(perf_server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sync_mode_has_every_request_in_flight_on_a_thread_of_its_own(perf_server, protocol):
    """perf_analyzer's --sync: a thread per request in flight, each blocking on its own connection.
    One model instance, no batching, 40 ms a request: with 4 in flight each waits for the 3 ahead of
    it, so latency ~ 4 x 40 ms and the server queues each request for ~3 x 40 ms. The load workers
    hold one connection per thread (over gRPC this tells sync from async, which holds one channel
    per process; over HTTP both hold a connection per request in flight)."""
    url = perf_server.http_url if protocol == "http" else perf_server.grpc_url
    port = int(url.rsplit(":", 1)[1])
    connections = []
    settings = PerfSettings(levels=[4], sync=True, measurement_interval_ms=1000, stability_percentage=40, max_trials=12)
    run = run_perf("queued", url, settings, protocol=protocol, workers=2,
                   on_window=lambda event: connections.append(_worker_connections(port)))
    (status,) = run.results
    assert status.achieved_concurrency > 3.5, status.achieved_concurrency
    assert status.avg_latency_ns > 3 * 40e6, status.avg_latency_ns  # queued behind the others
    assert status.model_stats.avg_us("queue") > 2 * 40e3, status.model_stats.avg_us("queue")
    assert max(connections) == 4, connections
    from tritongen.perf import report

    assert "Using synchronous calls for inference (2 load processes, a thread per request in flight)" in \
        report.settings_text(settings, run.workers, protocol)


@pytest.mark.parametrize("mode", ["--sync", "--async"])
def test_compare_perf_analyzer_runs_it_with_the_same_mode_and_shared_memory(perf_server, mode):
    """The oracle runs like for like: perf_analyzer gets --sync/--async and --shared-memory system
    too, and `tritongen perf` drives the server at least 85 % as hard (over HTTP, as the other
    oracle test)."""
    from tritongen.perf.perf_analyzer import find_perf_analyzer

    if find_perf_analyzer() is None:
        pytest.skip("perf_analyzer cannot run here (scripts/setup.sh installs it with tritonclient==2.51.0)")
    proc = run_cli("perf", "identity", "-u", perf_server.http_url, "--concurrency-range", "2", "-p", "1000", "-s", "25",
                   "--shared-memory", "system", mode, "--compare-perf-analyzer", timeout=240)
    lines = proc.stdout.strip().splitlines()
    command = next(line for line in lines if line.startswith("perf_analyzer -m identity"))
    assert f" {mode} --shared-memory system --output-shared-memory-size 102400 " in command, command
    concurrency, ours, theirs, ratio = lines[-1].split()[:4]
    assert concurrency == "2" and float(theirs) > 0
    assert float(ratio) >= 0.85, lines[-2:]
    assert not _registered(perf_server, prefix="")  # perf_analyzer unregistered its regions too


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_blocking_connections_answer_and_time_out(perf_server, protocol):
    """The sync engines on their own: one blocking request gives the answer's times in order; a model
    slower than the timeout gives DEADLINE_EXCEEDED within about the timeout."""
    from tritongen.perf.engines import ENGINES
    from tritongen.perf.worker import WorkerSpec

    url = perf_server.http_url if protocol == "http" else perf_server.grpc_url
    spec = dict(index=0, workers=1, url=url, version="", requests=[{"INPUT0": np.ones((1, 16), np.float32)}],
                datatypes={"INPUT0": "FP32"}, outputs=["OUTPUT0"], timeout_s=1.0, protocol=protocol, sync=True)
    engine = ENGINES[protocol](WorkerSpec(model="identity", **spec))
    conn = engine.open_blocking()
    try:
        start = time.monotonic_ns()
        outcome = conn.infer(0)
        assert outcome.error is None and start <= outcome.sent_ns <= outcome.answered_ns <= outcome.parsed_ns, outcome
    finally:
        conn.close()
        engine.close()
    engine = ENGINES[protocol](WorkerSpec(model="slow", **spec))
    conn = engine.open_blocking()
    try:
        start = time.monotonic()
        assert conn.infer(0).error.startswith("DEADLINE_EXCEEDED")
        assert time.monotonic() - start < 2.5
    finally:
        conn.close()
        engine.close()


def test_sync_open_loop_sends_from_a_bounded_pool_of_threads(perf_server):
    """--sync with --request-rate-range: due sends go to 4 blocking threads (perf_analyzer's
    --max-threads default for a request rate). A fast model gets the asked rate; the 40 ms model
    with one instance holds each thread ~4 x 40 ms, so at most ~25 requests/s leave and the rest
    leave late (async would send every one on time)."""
    fast = PerfSettings(mode="request_rate", levels=[80.0], sync=True, measurement_interval_ms=1000,
                        stability_percentage=40, max_trials=12)
    (status,) = run_perf("identity", perf_server.http_url, fast, protocol="http", workers=1).results
    assert abs(status.infer_per_sec - 80) <= 8 and status.delayed_request_count < status.request_count / 10, status.infer_per_sec
    slow = PerfSettings(mode="request_rate", levels=[40.0], sync=True, measurement_interval_ms=1000,
                        stability_percentage=40, max_trials=6)
    (status,) = run_perf("queued", perf_server.http_url, slow, protocol="http", workers=1).results
    assert status.achieved_concurrency < 4.2 and status.infer_per_sec < 30, (status.achieved_concurrency, status.infer_per_sec)
    assert status.delayed_request_count > status.request_count / 2, (status.delayed_request_count, status.request_count)
