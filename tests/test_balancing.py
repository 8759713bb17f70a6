"""gRPC targets naming several replicas (issue #14): ``ipv4:A:P,B:P`` and ``dns:///NAME:P``.

Two `tritongen serve` processes of one repository (the tiny classifier and an identity model):
the client SDK and `tritongen perf -i grpc` spread their requests over both with gRPC's
round_robin policy, each replica's own statistics say so; a replica stopped in the middle of a
stream of requests costs no request (retried on the other one, or raised as a clear error);
HTTP, which talks to one server, refuses such a target in one line.
"""
from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import pytest
import tritonclient.grpc as grpcclient

from tritongen.client import AsyncClassificationClient, ClassificationClient
from tritongen.client.options import ClientOptions
from tritongen.errors import ClientError, PerfError
from tritongen.perf import PerfSettings, run_perf
from tritongen.testing.identity import write_identity_model

from .conftest import TRITONGEN, run_cli, start_serve_cli, stop_serve_cli


def success_count(url: str, model: str, settle: bool = True) -> int:
    """Successful requests of ``model`` on one replica; ``settle``: once the count stops moving
    (statistics settle just after the answers; not while requests keep coming)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        counts = [-1]
        while True:
            stats = client.get_inference_statistics(model, client_timeout=10).model_stats
            counts.append(sum(s.inference_stats.success.count for s in stats))
            if counts[-1] == counts[-2] or not settle:
                return counts[-1]
            time.sleep(0.3)
    finally:
        client.close()


def target(*served) -> str:
    return "ipv4:" + ",".join(s.grpc_url for s in served)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, clas_export):
    from tritongen.build import build

    repo = tmp_path_factory.mktemp("balanced_repo")
    build(clas_export, repo, backend="python-onnxruntime", name="tiny")
    write_identity_model(repo, "identity")
    return repo


@pytest.fixture(scope="module")
def replicas(repo, tmp_path_factory):
    """The same repository served twice, on different ports."""
    logs = tmp_path_factory.mktemp("balanced_logs")
    served = [start_serve_cli(repo, logs) for _ in range(2)]
    yield served
    for s in served:
        stop_serve_cli(s)


# ------------------------------------------------------------------ no server needed


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "ipv4:127.0.0.1:8001,127.0.0.1:8011", "dns:///localhost:8001",
                                 "dns:triton.svc:8001", "ipv6:[::1]:8001,[::1]:8011"])
def test_grpc_targets_are_accepted(url):
    assert ClientOptions(url=url).url == url


@pytest.mark.parametrize("kwargs, message", [
    (dict(url="ipv4:127.0.0.1:8001,127.0.0.1:8011", protocol="http"), "only gRPC balances: HTTP takes one HOST:PORT"),
    (dict(url="dns:///triton.svc:8000", protocol="http"), "only gRPC balances"),
    (dict(url="ipv4:127.0.0.1:8001,127.0.0.1:8011", shared_memory="system"), "needs one server on this host"),
    (dict(url="ipv4:127.0.0.1:8001,127.0.0.1"), "'127.0.0.1' is not an IPv4 ADDRESS:PORT"),
    (dict(url="ipv4:localhost:8001"), "names go in dns:///NAME:PORT"),
    (dict(url="ipv6:127.0.0.1:8001"), "is not an IPv6 ADDRESS:PORT"),
    (dict(url="dns:///triton.svc"), "a port is required"),
    (dict(url="http://127.0.0.1:8000"), "without a scheme such as grpc:// or http://"),
], ids=["http-list", "http-dns", "shared-memory", "no-port", "ipv4-name", "ipv6-v4", "dns-no-port", "http-scheme"])
def test_bad_targets_are_one_clear_error(kwargs, message):
    with pytest.raises(ClientError, match=message):
        ClientOptions(**kwargs)


def test_cli_refuses_several_replicas_over_http_in_one_line(tmp_path):
    image = tmp_path / "x.png"  # never read: the url is refused first
    image.write_bytes(b"")
    for command in (["infer", "tiny", str(image)], ["perf", "identity", "-p", "500"]):
        proc = run_cli(*command, "-i", "http", "-u", "ipv4:127.0.0.1:8000,127.0.0.1:8010", check=False, timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr
        assert "only gRPC balances" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_perf_refuses_shared_memory_with_several_replicas():
    settings = PerfSettings(shared_memory="system")
    with pytest.raises(PerfError, match="needs one server on this host"):
        run_perf("identity", url="ipv4:127.0.0.1:8001,127.0.0.1:8011", settings=settings, protocol="grpc")


# ------------------------------------------------------------------ two replicas


async def _classify_each(url: str, images) -> list:
    """One request per image, all at once, from the asyncio client."""
    async with AsyncClassificationClient("tiny", url=url) as client:
        return await asyncio.gather(*(client.run([image]) for image in images))


@pytest.mark.parametrize("driver", ["sync", "asyncio"])
def test_sdk_spreads_requests_over_both_replicas(replicas, photos, driver):
    before = [success_count(s.grpc_url, "tiny") for s in replicas]
    images = [photos[i % len(photos)] for i in range(24)]
    if driver == "sync":
        with ClassificationClient("tiny", url=target(*replicas)) as client:
            answers = [client.classify([image]) for image in images]
    else:
        answers = asyncio.run(_classify_each(target(*replicas), images))
    assert [len(a) for a in answers] == [1] * len(images)
    grown = [success_count(s.grpc_url, "tiny") - b for s, b in zip(replicas, before)]
    assert sum(grown) == len(images), grown
    assert min(grown) >= len(images) // 4, f"round robin should give each replica a fair share: {grown}"


def test_dns_target_is_accepted(replicas, photos):
    served = replicas[0]
    port = served.grpc_url.rpartition(":")[2]
    before = success_count(served.grpc_url, "tiny")
    with ClassificationClient("tiny", url=f"dns:///localhost:{port}") as client:
        assert len(client.classify(photos[:2])) == 2
    assert success_count(served.grpc_url, "tiny") > before


def test_cli_infer_takes_a_balanced_target(replicas, photos):
    before = [success_count(s.grpc_url, "tiny") for s in replicas]
    run_cli("infer", "tiny", photos[0], "-u", target(*replicas), timeout=120)
    run_cli("infer", "tiny", photos[1], "-u", target(*replicas), timeout=120)
    grown = [success_count(s.grpc_url, "tiny") - b for s, b in zip(replicas, before)]
    assert sum(grown) == 2, grown  # each command's one request, on whichever replica came first


def test_perf_spreads_load_over_both_replicas(replicas):
    before = [success_count(s.grpc_url, "identity") for s in replicas]
    run_cli("perf", "identity", "-i", "grpc", "-u", target(*replicas), "--concurrency-range", "2",
            "-p", "500", "-s", "80", "--max-trials", "4", timeout=120)
    grown = [success_count(s.grpc_url, "identity") - b for s, b in zip(replicas, before)]
    assert min(grown) > 0 and min(grown) >= sum(grown) / 4, f"both replicas should carry the load: {grown}"


def _stream(client, images, stop: threading.Event, outcome: dict) -> None:
    """Send one request after another until ``stop``; count what answered and what raised."""
    while not stop.is_set():
        outcome["sent"] += 1
        try:
            results = client.classify(images)
        except ClientError as exc:
            outcome["errors"].append(str(exc))
            continue
        outcome["ok"] += len(results) == len(images)


@pytest.mark.parametrize("retries", [3, 0], ids=["sdk-retries", "grpc-retries-only"])
def test_replica_stopped_mid_stream_loses_no_request(repo, replicas, tmp_path, photos, retries):
    """A third replica joins the first; it is stopped (SIGTERM) while two threads stream requests
    over both. Every request answers or raises a ClientError, and none fails: a request the
    stopping replica refuses (NOT_FOUND while it unloads, then UNAVAILABLE) is retried on the
    other one — by gRPC's retry policy alone with ``retries=0`` (two photos, ~340 KB, are more
    than gRPC's default 256 KiB retry buffer: without the larger buffer ~30 % of them failed)."""
    doomed = start_serve_cli(repo, tmp_path)
    url = target(replicas[0], doomed)
    outcomes = [{"sent": 0, "ok": 0, "errors": []} for _ in range(2)]
    stop = threading.Event()
    clients = [ClassificationClient("tiny", url=url, retries=retries, retry_delay=0.2, timeout=20) for _ in outcomes]
    threads = [threading.Thread(target=_stream, args=(c, photos[:2], stop, o)) for c, o in zip(clients, outcomes)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while success_count(doomed.grpc_url, "tiny", settle=False) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert success_count(doomed.grpc_url, "tiny", settle=False) >= 5, "the doomed replica never got requests"
        assert stop_serve_cli(doomed) == 0
        time.sleep(2)  # keep streaming on the survivor
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for client in clients:
            client.close()
        stop_serve_cli(doomed)
    for outcome in outcomes:
        assert outcome["sent"] == outcome["ok"] + len(outcome["errors"]), outcome
        assert outcome["ok"] > 0, outcome
    assert not [e for o in outcomes for e in o["errors"]], outcomes


def test_perf_survives_a_replica_stopped_mid_run(repo, replicas, tmp_path):
    """`tritongen perf` over the first replica and a third one, stopped (SIGTERM) while perf
    measures: its requests are retried on the survivor, so the run ends cleanly, no error (a
    request that could not be retried would be one of perf's errors, exit 1 — never dropped)."""
    doomed = start_serve_cli(repo, tmp_path)
    survivor_before = success_count(replicas[0].grpc_url, "identity")
    perf = subprocess.Popen([*TRITONGEN, "perf", "identity", "-i", "grpc", "-u", target(replicas[0], doomed),
                             "--concurrency-range", "2", "-p", "1000", "-s", "80", "--max-trials", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while success_count(doomed.grpc_url, "identity", settle=False) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert perf.poll() is None, "perf ended before the replica could be stopped: " + perf.stderr.read()
        assert stop_serve_cli(doomed) == 0
        out, err = perf.communicate(timeout=120)
    finally:
        perf.kill()
        stop_serve_cli(doomed)
    assert perf.returncode == 0, out + err
    assert "Request count" in out, out
    assert success_count(replicas[0].grpc_url, "identity") > survivor_before
