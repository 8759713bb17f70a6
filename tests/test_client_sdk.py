"""The client SDK on the real tritonserver: sync and asyncio transports, batches split by
max_batch_size, system shared memory, gzip, retries, timeouts, TLS options, one error type.

Classification runs on the session's `served_repo` (the tiny demo classifier, max_batch_size
8); detection and segmentation on one small module server (`task_server`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tritongen.client import (
    AsyncClassificationClient, AsyncDetectionClient, AsyncSegmentationClient, AsyncTritonClient, ClassificationClient,
    ClientOptions, DetectionClient, SegmentationClient, TritonClient, async_client_for, client_for, task_of,
)
from tritongen.client.core import Answer, merge_requests, request_groups
from tritongen.errors import ClientError

from .conftest import REPO_ROOT, TRITONGEN, Served, free_port, run_cli, start_serve_cli, stop_serve_cli

MAX_BATCH = 8  # what `tritongen build` gives the fixtures' models


def summaries(results) -> list:
    """Comparable form of any task's results (label maps as lists)."""
    return [r.summary() if not hasattr(r, "label_map") else r.label_map.tolist() for r in results]


def run_async(coro):
    return asyncio.run(coro)


async def async_run(cls, model, images, **options):
    async with cls(model, **options) as client:
        return await client.run(images)


def server_regions(url: str) -> list[str]:
    client = grpcclient.InferenceServerClient(url)
    try:
        return list(client.get_system_shared_memory_status(client_timeout=10).regions)
    finally:
        client.close()


def local_regions(prefix: str) -> list[str]:
    return glob.glob(f"/dev/shm/{prefix}*")


def request_count(url: str, model: str) -> int:
    """Successful requests of ``model`` so far (statistics settle just after the answers)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        counts = [-1]
        while True:
            stats = client.get_inference_statistics(model, client_timeout=10).model_stats[0]
            counts.append(stats.inference_stats.success.count)
            if counts[-1] == counts[-2]:
                return counts[-1]
            time.sleep(0.3)
    finally:
        client.close()


@pytest.fixture(scope="module")
def many(photos):
    """20 images of five sizes and formats: more than max_batch_size, so three requests."""
    return [photos[i % len(photos)] for i in range(20)]


@pytest.fixture(scope="module")
def task_server(tmp_path_factory):
    """A detector and a segmenter (tiny demo exports), served together."""
    from tritongen.build import build
    from tritongen.testing.demo_exports import make_detector, make_segmenter

    root = tmp_path_factory.mktemp("sdk_tasks")
    repo = root / "repo"
    build(make_detector(root / "det", with_nms=True, seed=3), repo, backend="python-paddle", name="det")
    transforms = [{"type": "Resize", "target_size": [96, 64]},
                  {"type": "Normalize", "mean": [0.45, 0.5, 0.55], "std": [0.3, 0.25, 0.2]}]
    seg = make_segmenter(root / "seg", with_argmax=True, deploy_overrides={"transforms": transforms})
    build(seg, repo, backend="python-paddle", name="seg")
    build(make_segmenter(root / "seg_any_size", with_argmax=True), repo, name="seg_any_size")  # no resize
    served = start_serve_cli(repo, root)
    yield served
    stop_serve_cli(served)


# ------------------------------------------------------------------ no server needed


def test_options_are_validated_with_clear_messages(tmp_path):
    for bad, message in [
        (dict(compression="lz4"), "compression must be one of none, gzip"),
        (dict(shared_memory="cuda"), "shared_memory must be one of none, system"),
        (dict(retries=-1), "retries"),
        (dict(timeout=0), "timeout"),
        (dict(url="grpc://host:8001"), "without a scheme"),
        (dict(protocol="websocket"), "unknown protocol 'websocket'; choose one of: grpc, http"),
        (dict(root_certificates=tmp_path / "missing.pem"), "root_certificates: no such file"),
    ]:
        with pytest.raises(ClientError, match=message):
            ClientOptions(**bad)
    assert list(ClientOptions(retries=3, retry_delay=0.5).retry_delays()) == [0.5, 1.0, 2.0]
    assert ClientOptions(root_certificates=__file__).tls and not ClientOptions().tls
    assert ClientOptions().url == "127.0.0.1:8001" and ClientOptions(protocol="http").url == "127.0.0.1:8000"


def test_task_is_the_most_specific_fit():
    assert task_of("m", ["LABEL_IDS", "SCORES", "LABELS"]).name == "classification"
    assert task_of("m", ["NUM_DETECTIONS", "BOXES", "SCORES", "LABEL_IDS", "LABELS"]).name == "detection"
    assert task_of("m", ["LABEL_MAP", "IMAGE_SIZE"]).name == "segmentation"
    with pytest.raises(ClientError, match="not a tritongen ensemble"):
        task_of("m", ["OUTPUT0"])
    with pytest.raises(ClientError, match="different shapes"):
        merge_requests([Answer((0, 1), {"LABEL_MAP": np.zeros((2, 4, 4))}), Answer((2,), {"LABEL_MAP": np.zeros((1, 5, 4))})])
    merged = merge_requests([Answer((1, 3), {"SCORES": np.array([[1.0], [3.0]])}), Answer((0, 2), {"SCORES": np.array([[0.0], [2.0]])})])
    assert merged["SCORES"].ravel().tolist() == [0.0, 1.0, 2.0, 3.0]  # back in the order the images were given


def test_requests_group_images_by_size_only_where_the_model_needs_it(photos):
    import cv2

    encoded = [p.read_bytes() for p in photos]
    sizes = [cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_COLOR).shape[:2] for e in encoded]
    data = [encoded[i % len(encoded)] for i in range(11)] + [b"not an image"]
    assert request_groups(data, 4, one_size=False) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    groups = request_groups(data, 2, one_size=True)
    assert sorted(i for g in groups for i in g) == list(range(12)) and all(len(g) <= 2 for g in groups)
    for group in groups:
        assert len({sizes[i % len(photos)] if i < 11 else None for i in group}) == 1
    assert (11,) in groups  # an unreadable image goes alone: the server says what is wrong with it


# ----------------------------------------------------------- transports and batching


def test_sync_and_async_give_identical_results(served_repo, many):
    url = served_repo.grpc_url
    with ClassificationClient("tiny_ort", url=url) as client:
        sync = client.classify(many)
    asynchronous = run_async(async_run(AsyncClassificationClient, "tiny_ort", many, url=url))
    assert len(sync) == len(asynchronous) == len(many)
    assert summaries(sync) == summaries(asynchronous)

    async def picked():
        async with await async_client_for("tiny_ort", url=url) as client:
            return type(client), await client.run(many[:3])

    cls, results = run_async(picked())
    assert cls is AsyncClassificationClient and summaries(results) == summaries(sync[:3])


def test_list_larger_than_max_batch_size_is_split_and_equals_one_by_one(served_repo, photos, many):
    url = served_repo.grpc_url
    with ClassificationClient("tiny_ort", url=url) as client:
        one_by_one = {p: client.classify([p])[0].summary() for p in photos}
        before = request_count(url, "tiny_ort")
        sync = client.classify(many)  # one request of 20 would be refused: max_batch_size is 8
        assert request_count(url, "tiny_ort") - before == 3
        raw = client.infer_images(many, ["LABEL_IDS", "SCORES"])
    assert raw["LABEL_IDS"].shape[0] == 20
    before = request_count(url, "tiny_ort")
    concurrent = run_async(async_run(AsyncClassificationClient, "tiny_ort", many, url=url, concurrency=3))
    assert request_count(url, "tiny_ort") - before == 3
    for photo, s, a in zip(many, sync, concurrent):
        assert s.summary() == one_by_one[photo]
        assert a.summary() == one_by_one[photo]
        assert raw["LABEL_IDS"][many.index(photo)].tolist() == s.label_ids


# ------------------------------------------------------------------- shared memory


def test_shared_memory_equals_plain_and_is_cleaned_up(served_repo, many):
    url = served_repo.grpc_url
    with ClassificationClient("tiny_ort", url=url) as client:
        plain = summaries(client.classify(many))
    first = ClassificationClient("tiny_ort", url=url, shared_memory="system")
    second = ClassificationClient("tiny_ort", url=url, shared_memory="system")  # at the same time: own regions
    try:
        assert summaries(first.classify(many)) == plain
        assert summaries(second.classify(many[:3])) == plain[:3]
        assert first.shm_prefix != second.shm_prefix
        for client in (first, second):  # an input and an output region each, registered and mapped
            assert len([r for r in server_regions(url) if r.startswith(client.shm_prefix)]) == 2
            assert len(local_regions(client.shm_prefix)) == 2
    finally:
        first.close()
        second.close()
    assert server_regions(url) == []
    assert local_regions(first.shm_prefix) == local_regions(second.shm_prefix) == []

    async def concurrent():
        async with AsyncClassificationClient("tiny_ort", url=url, shared_memory="system", concurrency=3) as client:
            results = await asyncio.gather(client.classify(many), client.classify(many[:5]))
            assert len(local_regions(client.shm_prefix)) >= 4  # concurrent requests hold separate slots
            return client.shm_prefix, results

    prefix, (whole, part) = run_async(concurrent())
    assert summaries(whole) == plain and summaries(part) == plain[:5]
    assert server_regions(url) == [] and local_regions(prefix) == []


@pytest.mark.parametrize("model, sync_cls, async_cls", [
    ("det", DetectionClient, AsyncDetectionClient),
    ("seg", SegmentationClient, AsyncSegmentationClient),
])
def test_shared_memory_detection_and_segmentation(task_server, photos, model, sync_cls, async_cls):
    """Detection: BOXES/SCORES/... in shared memory, LABELS (BYTES) in the response.
    Segmentation: IMAGE_SIZE in shared memory, LABEL_MAP (sized by the images) in the response."""
    url = task_server.grpc_url
    images = [photos[i % len(photos)] for i in range(10)]  # two requests, of different image sizes
    with sync_cls(model, url=url) as client:
        plain = summaries(client.run(images))
        one_by_one = summaries([client.run([p])[0] for p in images[:5]])
    with sync_cls(model, url=url, shared_memory="system") as client:
        shm = summaries(client.run(images))
        prefix = client.shm_prefix
    shm_async = summaries(run_async(async_run(async_cls, model, images, url=url, shared_memory="system")))
    assert plain == shm == shm_async
    assert plain[:5] == plain[5:] == one_by_one
    if model == "det":
        assert sum(len(r["scores"]) for r in plain) > 0 and all(r["labels"] is not None for r in plain)
    assert server_regions(url) == [] and local_regions(prefix) == []



# ------------------------------------------------------------------------ HTTP and gRPC


def _every_way(cls, async_cls, model: str, images, url: str, **options) -> dict[str, list]:
    """The results of the sync and asyncio clients, with and without shared memory."""
    with cls(model, url=url, **options) as client:
        plain = summaries(client.run(images))
    with cls(model, url=url, shared_memory="system", **options) as client:
        shm = summaries(client.run(images))
    concurrent = summaries(run_async(async_run(async_cls, model, images, url=url, **options)))
    concurrent_shm = summaries(run_async(async_run(async_cls, model, images, url=url, shared_memory="system", **options)))
    return {"sync": plain, "sync shm": shm, "async": concurrent, "async shm": concurrent_shm}


@pytest.mark.parametrize("model, sync_cls, async_cls", [
    ("tiny_ort", ClassificationClient, AsyncClassificationClient),
    ("det", DetectionClient, AsyncDetectionClient),
    ("seg", SegmentationClient, AsyncSegmentationClient),
])
def test_http_and_grpc_give_the_same_answers(served_repo, task_server, photos, model, sync_cls, async_cls):
    """Every task, sync and asyncio, with and without shared memory: KServe v2 REST (binary
    tensors) answers exactly what gRPC answers — typed results and the raw output arrays."""
    served = served_repo if model == "tiny_ort" else task_server
    images = [photos[i % len(photos)] for i in range(10)]  # more than max_batch_size: two requests
    grpc_answers = _every_way(sync_cls, async_cls, model, images, served.grpc_url)
    http_answers = _every_way(sync_cls, async_cls, model, images, served.http_url, protocol="http")
    reference = grpc_answers["sync"]
    assert all(answers == reference for answers in (*grpc_answers.values(), *http_answers.values()))
    with sync_cls(model, url=served.grpc_url) as over_grpc, sync_cls(model, url=served.http_url, protocol="http") as over_http:
        outputs = list(over_grpc._run(over_grpc._model_info_plan()).outputs)
        raw_grpc = over_grpc._run(over_grpc._infer_plan(images, outputs))  # per request (label maps differ in size)
        raw_http = over_http._run(over_http._infer_plan(images, outputs))
        assert over_grpc.metadata() == over_http.metadata()  # the same protobuf message either way
    assert [a.images for a in raw_grpc] == [a.images for a in raw_http] and len(raw_grpc) == 2
    for by_grpc, by_http in zip(raw_grpc, raw_http):
        for name in outputs:
            ours, theirs = by_grpc.outputs[name], by_http.outputs[name]
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), name
    assert server_regions(served.grpc_url) == []
    assert json.loads(run_cli("infer", model, *images[:3], "-i", "http", "--url", served.http_url, "--json").stdout) == \
        json.loads(run_cli("infer", model, *images[:3], "--url", served.grpc_url, "--json").stdout)


def test_http_client_is_safe_across_threads(served_repo, many):
    """tritonclient.http clients are not thread-safe; the SDK's HTTP client is (one connection per thread)."""
    with ClassificationClient("tiny_ort", url=served_repo.grpc_url) as client:
        expected = summaries(client.classify(many))
    results: dict[int, list] = {}
    with ClassificationClient("tiny_ort", url=served_repo.http_url, protocol="http") as client:
        def work(i: int) -> None:
            results[i] = summaries(client.classify(many))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert results == {i: expected for i in range(4)}

def test_images_of_different_sizes_for_a_segmenter_without_resize(task_server, photos):
    """Its tensors keep each image's size, so one request cannot mix sizes: the model's config says
    so and the SDK groups the images by size (CLI, sync, async, shared memory) — same answers as
    one by one, in the order given."""
    from tritonclient.grpc import InferenceServerClient

    url = task_server.grpc_url
    configs = {name: InferenceServerClient(url).get_model_config(name).config for name in ("seg_any_size", "seg", "det")}
    assert {name: c.parameters["tritongen_image_sizes_per_request"].string_value for name, c in configs.items()} == {
        "seg_any_size": "one", "seg": "any", "det": "any"}
    images = [photos[i % len(photos)] for i in range(11)]  # five sizes, more than max_batch_size of some
    with SegmentationClient("seg_any_size", url=url) as client:
        one_by_one = summaries([client.segment([p])[0] for p in images])
        together = summaries(client.segment(images))
    with SegmentationClient("seg_any_size", url=url, shared_memory="system") as client:
        shm = summaries(client.segment(images))
    concurrent = summaries(run_async(async_run(AsyncSegmentationClient, "seg_any_size", images, url=url)))
    assert together == shm == concurrent == one_by_one
    cli = json.loads(run_cli("infer", "seg_any_size", *images[:5], "--url", url, "--json").stdout)
    assert len(cli) == 5


def test_shared_memory_is_cleaned_up_after_errors(served_repo, photos):
    url = served_repo.grpc_url
    with pytest.raises(ClientError, match="cannot decode image"):
        with ClassificationClient("tiny_ort", url=url, shared_memory="system") as client:
            prefix = client.shm_prefix
            client.classify([photos[0]])
            client.classify([photos[1], b"not an image"])
    assert server_regions(url) == [] and local_regions(prefix) == []

    async def failing():
        async with AsyncClassificationClient("tiny_ort", url=url, shared_memory="system") as client:
            failing.prefix = client.shm_prefix
            await client.classify([photos[0]] * 12 + [b"garbage"] + [photos[1]] * 12)  # the 2nd of 4 requests fails

    with pytest.raises(ClientError, match="cannot decode image"):
        run_async(failing())
    assert server_regions(url) == [] and local_regions(failing.prefix) == []
    with ClassificationClient("tiny_ort", url=url, shared_memory="system") as client:  # the server is fine
        assert len(client.classify(photos)) == len(photos)


def test_timed_out_calls_leave_no_shared_memory_on_the_server(served_repo, photos):
    """A call that times out still unregisters its regions: the unregistration has its own time
    budget, and close() waits for the server to let go of them."""
    url = served_repo.grpc_url
    with ClassificationClient("tiny_ort", url=url, shared_memory="system", retries=0) as client:
        prefix = client.shm_prefix
        client.classify([photos[0]])  # config read, regions registered
        client.options = dataclasses.replace(client.options, timeout=0.0001)  # every call times out from here
        for _ in range(3):
            with pytest.raises(ClientError, match="no answer from Triton"):
                client.classify(photos[:3])

    async def timing_out():
        async with AsyncClassificationClient("tiny_ort", url=url, shared_memory="system", retries=0) as client:
            timing_out.prefix = client.shm_prefix
            await client.classify([photos[0]])
            client.options = dataclasses.replace(client.options, timeout=0.0001)
            await client.classify([photos[0]] * 12)

    with pytest.raises(ClientError, match="no answer from Triton"):
        run_async(timing_out())
    assert server_regions(url) == [] and local_regions(prefix) == [] and local_regions(timing_out.prefix) == []


# ---------------------------------------------------------------------- compression


def test_gzip_compression_reaches_grpc_and_gives_the_same_results(served_repo, many):
    url = served_repo.grpc_url
    with ClassificationClient("tiny_ort", url=url) as client:
        plain = summaries(client.classify(many))
    with ClassificationClient("tiny_ort", url=url, compression="gzip") as client:
        sent = []
        infer = client._session.client.infer
        client._session.client.infer = lambda *a, **kw: sent.append(kw["compression_algorithm"]) or infer(*a, **kw)
        assert summaries(client.classify(many)) == plain
    assert sent == ["gzip"] * 3
    assert summaries(run_async(async_run(AsyncClassificationClient, "tiny_ort", many, url=url, compression="gzip"))) == plain


# ---------------------------------------------------------- retries, errors, timeouts


def _serve_on(repo, grpc_port: int, log_dir) -> Served:
    """`tritongen serve` on a chosen gRPC port (the client is waiting for it)."""
    out_path = log_dir / f"serve-{grpc_port}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [*TRITONGEN, "serve", str(repo), "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
             "--metrics-port", str(free_port()), "--log-file", str(log_dir / "triton.log")],
            stdout=out, stderr=subprocess.STDOUT,
        )
    return Served(repo, f"127.0.0.1:{grpc_port}", "", proc, out_path)


def test_retries_wait_for_a_server_that_comes_up_later(served_repo, photos, tmp_path):
    port = free_port()
    url = f"127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ClientError, match=f"cannot reach Triton at {url}"):
        ClassificationClient("tiny_ort", url=url, retries=0).classify([photos[0]])
    assert time.monotonic() - start < 2

    servers = []
    starter = threading.Timer(1.5, lambda: servers.append(_serve_on(served_repo.repo, port, tmp_path)))
    starter.start()
    try:
        with ClassificationClient("tiny_ort", url=url, retries=9, retry_delay=0.2, timeout=30) as client:
            results = client.classify(photos)  # first attempts fail: nothing listens yet
        waited = time.monotonic() - start
    finally:
        starter.join()
        for served in servers:
            stop_serve_cli(served)
    with ClassificationClient("tiny_ort", url=served_repo.grpc_url) as client:
        assert summaries(results) == summaries(client.classify(photos))
    assert waited > 1.5
    print(f"server came up and answered after {waited:.1f}s")


def test_server_down_is_a_quick_client_error(photos):
    url = f"127.0.0.1:{free_port()}"
    quick = dict(url=url, timeout=5, retry_delay=0.1)
    for run, limit in (
        # default retries: 0.5 s + 1 s + 2 s of backoff
        (lambda: ClassificationClient("tiny_ort", url=url, timeout=5).classify([photos[0]]), 5.0),
        (lambda: ClassificationClient("tiny_ort", shared_memory="system", **quick).classify([photos[0]]), 1.0),
        (lambda: client_for("tiny_ort", **quick), 1.0),
        (lambda: run_async(async_run(AsyncClassificationClient, "tiny_ort", [photos[0]], **quick)), 1.0),
        (lambda: run_async(async_client_for("tiny_ort", **quick)), 1.0),
        (lambda: ClassificationClient("tiny_ort", protocol="http", **quick).classify([photos[0]]), 1.0),
        (lambda: run_async(async_run(AsyncClassificationClient, "tiny_ort", [photos[0]], protocol="http", **quick)), 1.0),
    ):
        start = time.monotonic()
        with pytest.raises(ClientError, match=f"cannot reach Triton at {url}: is the server running?"):
            run()
        assert time.monotonic() - start < limit


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("transport", ["sync", "async"])
def test_server_errors_carry_the_servers_message_and_are_not_retried(served_repo, photos, transport, protocol):
    url = served_repo.grpc_url if protocol == "grpc" else served_repo.http_url
    slow_retries = dict(url=url, retries=5, retry_delay=2.0, protocol=protocol)  # a retried error would take > 2 s

    def run(model, images, **options):
        if transport == "sync":
            with ClassificationClient(model, **slow_retries, **options) as client:
                return client.classify(images)
        return run_async(async_run(AsyncClassificationClient, model, images, **slow_retries, **options))

    cases = [
        (("no_such_model", [photos[0]]), {}, "Request for unknown model: 'no_such_model' is not found"),
        (("tiny_ort", [b"this is not an image"]), {}, "IMAGE: cannot decode image"),
        (("tiny_ort", [photos[0], b""]), {"shared_memory": "system"}, "image 1: empty image"),
        (("tiny_ort", [photos[0]]), {"ssl": True}, f"cannot reach Triton at {url}: TLS handshake failed"),
        (("tiny_ort", [photos[0]]), {"timeout": 1e-4}, f"no answer from Triton at {url} within 0.0001s"),
    ]
    for args, options, message in cases:
        start = time.monotonic()
        with pytest.raises(ClientError) as info:
            run(*args, **options)
        assert message in str(info.value)
        assert time.monotonic() - start < 2, message
    assert server_regions(served_repo.grpc_url) == []
    with pytest.raises(ClientError, match="is not a tritongen segmenter"):
        with SegmentationClient("tiny_ort", url=url, protocol=protocol) as client:
            client.segment([photos[0]])


def test_tls_options_reach_grpc(served_repo, photos, tmp_path):
    """No TLS server here: the PEM files are read and a TLS handshake is tried (and fails
    cleanly against the plaintext server) — not a hang, not a traceback."""
    url = served_repo.grpc_url
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    tls = dict(root_certificates=cert, private_key=key, certificate_chain=cert)
    start = time.monotonic()
    for run in (
        lambda: ClassificationClient("tiny_ort", url=url, **tls).classify([photos[0]]),
        lambda: run_async(async_run(AsyncClassificationClient, "tiny_ort", [photos[0]], url=url, **tls)),
    ):
        with pytest.raises(ClientError, match="TLS handshake failed"):
            run()
    assert time.monotonic() - start < 5
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ClientError):
        ClassificationClient("tiny_ort", url=url, root_certificates=garbage, timeout=5).classify([photos[0]])

    proc = run_cli("infer", "tiny_ort", photos[0], "--url", url, "--root-certificates", cert, "--timeout", "5", check=False)
    assert proc.returncode == 1 and "TLS handshake failed" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("infer", "tiny_ort", photos[0], "--url", url, "--ssl", check=False)
    assert proc.returncode == 1 and "TLS handshake failed" in proc.stderr
    assert "Handshake failed with error" not in proc.stderr  # gRPC's own log line is silenced


def test_closed_client_refuses_work(served_repo, photos):
    client = ClassificationClient("tiny_ort", url=served_repo.grpc_url)
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientError, match="closed"):
        client.classify([photos[0]])
    with pytest.raises(ClientError, match="has no task"):
        with TritonClient("tiny_ort", url=served_repo.grpc_url) as generic:
            generic.run([photos[0]])
    assert isinstance(AsyncTritonClient("tiny_ort"), AsyncTritonClient)  # constructing needs no running loop


# ---------------------------------------------------------------- CLI and examples


def test_infer_cli_with_sdk_options_equals_plain(served_repo, many):
    url = served_repo.grpc_url
    before = set(glob.glob("/dev/shm/tritongen-*"))
    plain = json.loads(run_cli("infer", "tiny_ort", *many[:10], "--url", url, "--json").stdout)
    tuned = json.loads(run_cli("infer", "tiny_ort", *many[:10], "--url", url, "--json", "--shared-memory", "system",
                               "--compression", "gzip", "--timeout", "20", "--retries", "1", "--retry-delay", "0.1").stdout)
    assert tuned == plain and len(plain) == 10
    assert set(glob.glob("/dev/shm/tritongen-*")) == before and server_regions(url) == []
    for flag, value in (("--shared-memory", "cuda"), ("--compression", "zstd")):
        proc = run_cli("infer", "tiny_ort", many[0], "--url", url, flag, value, check=False)
        assert proc.returncode == 1 and flag in proc.stderr and "Traceback" not in proc.stderr
    start = time.monotonic()
    proc = run_cli("infer", "tiny_ort", many[0], "--url", f"127.0.0.1:{free_port()}", "--retries", "0", check=False)
    assert proc.returncode == 1 and "cannot reach Triton" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30


def test_async_example_script(served_repo, many):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "clients/classify_async.py"), "tiny_ort", *map(str, many), "--url",
         served_repo.grpc_url, "--concurrency", "6", "--shared-memory", "system"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 4 * len(many)  # path + top-3 each
    assert f"{len(many)} images in" in proc.stderr
    with ClassificationClient("tiny_ort", url=served_repo.grpc_url) as client:
        first = client.classify([many[0]])[0]
    assert proc.stdout.splitlines()[1].split()[0] == str(first.label_ids[0])
