"""Object-storage repositories and replicas against a real S3 (moto's server on loopback) and the
real tritonserver: `tritongen publish` writes versions then the CURRENT pointer last, `serve
s3://...` loads what the pointer names, `serve --replicas 2` runs two servers behind one gRPC
target. The models are trivial identity Python models (milliseconds to write, ~5 s to serve)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tritongen.errors import ServeError, TritongenError
from tritongen.serve import check_repository, find_tritonserver, replica_ports
from tritongen.storage import StorageError, prepare, publish, resolve, upload
from tritongen.testing.identity import write_identity_model

from .conftest import TRITONGEN, free_port, pid_children_alive, run_cli, start_serve_cli, stop_serve_cli

try:
    find_tritonserver()
except ServeError as exc:
    pytest.skip(f"no tritonserver to test against: {exc}", allow_module_level=True)

moto_server = pytest.importorskip("moto.server", reason="moto[s3] runs the S3 server these tests publish to")
boto3 = pytest.importorskip("boto3", reason="boto3 is the S3 SDK `publish s3://` uses")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] talks to the servers")

BUCKET = "models"
SECRET = "tritongen-test-secret-8f3a"  # distinctive, to prove it reaches no command line or log
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> str:
    """``host:port`` of a moto S3 server with bucket ``models``; fake credentials in the environment
    (the CLI children and tritonserver inherit it)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_AWS.items():
            env.setenv(name, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        port = free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=f"http://{endpoint}").create_bucket(Bucket=BUCKET)
        yield endpoint
        server.stop()


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    """``one``: model ``identity``; ``two``: ``identity`` and ``second`` (a different repository)."""
    root = tmp_path_factory.mktemp("storage-repos")
    write_identity_model(root / "one", "identity")
    write_identity_model(root / "two", "identity")
    write_identity_model(root / "two", "second", dims=(4,))
    return {"one": root / "one", "two": root / "two"}


def keys(endpoint: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def pointer(endpoint: str, prefix: str) -> str:
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    return client.get_object(Bucket=BUCKET, Key=f"{prefix}/CURRENT")["Body"].read().decode().strip()


def identity_roundtrip(url: str, model: str = "identity", dims: int = 16, **client_args) -> None:
    client = grpcclient.InferenceServerClient(url, **client_args)
    data = np.arange(dims, dtype=np.float32).reshape(1, dims)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def success_count(grpc_port: int, model: str = "identity") -> int:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def free_block(size: int) -> int:
    """A port P with P .. P+size-1 all free on 127.0.0.1 (the replicas' port blocks)."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {size} consecutive free ports on 127.0.0.1")


def served_models(http_url: str) -> list[str]:
    request = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        import json

        return sorted(m["name"] for m in json.loads(response.read()) if m.get("state") == "READY")


def test_publish_then_serve_s3_answers_inference(s3, repos, tmp_path):
    uri = f"s3://{s3}/{BUCKET}/app"
    proc = run_cli("publish", repos["one"], uri, env={**os.environ, "COLUMNS": "200"})
    version = pointer(s3, "app")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{12}", version), version
    assert f"version {version}" in proc.stdout and f"s3://{s3}/{BUCKET}/app/versions/{version}" in proc.stdout
    assert keys(s3, "app/") == sorted([
        "app/CURRENT", f"app/manifests/{version}.json",
        f"app/versions/{version}/identity/config.pbtxt", f"app/versions/{version}/identity/1/model.py",
    ])
    assert resolve(uri).location == f"s3://{s3}/{BUCKET}/app/versions/{version}"

    served = start_serve_cli(uri, tmp_path, timeout=120)
    try:
        assert f"from {uri} (version {version})" in served.stdout_path.read_text().replace("\n", " ")
        identity_roundtrip(served.grpc_url)
        port = served.grpc_url.rsplit(":", 1)[1]
        command_lines = pid_children_alive(f"--grpc-port={port} ")
        assert any(f"--model-repository=s3://{s3}/{BUCKET}/app/versions/{version}" in c for c in command_lines)
        assert SECRET not in "".join(command_lines) + (tmp_path / f"triton-{port}.log").read_text()
    finally:
        assert stop_serve_cli(served) == 0
    assert not pid_children_alive(f"--grpc-port={served.grpc_url.rsplit(':', 1)[1]} ")


def test_republishing_identical_content_reuses_the_version(s3, repos):
    uri = f"s3://{s3}/{BUCKET}/same"
    first = publish(repos["one"], uri)
    before = keys(s3, "same/")
    second = publish(repos["one"], uri)
    assert (first.reused, second.reused) == (False, True)
    assert second.version == first.version and keys(s3, "same/") == before


def test_pointer_is_written_last_and_a_new_serve_loads_the_republished_version(s3, repos, tmp_path):
    uri = f"s3://{s3}/{BUCKET}/switch"
    old = publish(repos["one"], uri).version

    class Interrupted(Exception):
        pass

    seen = {}

    def interrupt(version):  # every file of the new version is there; CURRENT not yet touched
        seen["version"], seen["keys"], seen["pointer"] = version, keys(s3, "switch/"), pointer(s3, "switch")
        raise Interrupted

    with pytest.raises(Interrupted):
        upload(prepare(repos["two"], uri), before_pointer=interrupt)
    new = seen["version"]
    assert new != old and seen["pointer"] == old
    assert {f"switch/versions/{new}/second/config.pbtxt", f"switch/manifests/{new}.json"} <= set(seen["keys"])
    assert pointer(s3, "switch") == old and resolve(uri).version == old
    assert check_repository(uri) == ["identity"]  # what serve would load: still the old version

    served = start_serve_cli(uri, tmp_path, timeout=120)
    try:
        assert served_models(served.http_url) == ["identity"]
    finally:
        assert stop_serve_cli(served) == 0

    # The interrupted upload finished its files and manifest: publishing again reuses it.
    again = publish(repos["two"], uri)
    assert (again.version, again.reused, pointer(s3, "switch")) == (new, True, new)
    served = start_serve_cli(uri, tmp_path, timeout=120)
    try:
        assert served_models(served.http_url) == ["identity", "second"]
        identity_roundtrip(served.grpc_url, "second", dims=4)
    finally:
        assert stop_serve_cli(served) == 0


def _one_line_error(args, env=None) -> str:
    proc = run_cli(*args, check=False, timeout=120, env={**os.environ, "COLUMNS": "300", **(env or {})})
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["unknown scheme", "nothing published", "not a repository", "bucket missing",
                                  "no credentials", "endpoint unreachable", "no such directory"])
def test_bad_input_is_one_error_line(case, s3, repos, tmp_path):
    closed = free_port()
    args, env, expected = {
        "unknown scheme": (["publish", repos["one"], "ftp://host/x"], None, "unknown storage scheme 'ftp'"),
        "nothing published": (["serve", f"s3://{s3}/{BUCKET}/empty"], None, f"nothing published at s3://{s3}/{BUCKET}/empty"),
        "not a repository": (["publish", tmp_path, f"s3://{s3}/{BUCKET}/x"], None, "not a model repository"),
        "bucket missing": (["publish", repos["one"], f"s3://{s3}/nobucket/x"], None, "bucket 'nobucket' does not exist"),
        "no credentials": (["serve", f"s3://{s3}/{BUCKET}/app"], {"AWS_ACCESS_KEY_ID": ""}, "no S3 credentials"),
        "endpoint unreachable": (["publish", repos["one"], f"s3://127.0.0.1:{closed}/{BUCKET}/x"], None,
                                 f"cannot reach http://127.0.0.1:{closed}"),
        "no such directory": (["serve", tmp_path / "absent"], None, "no such model repository"),
    }[case]
    assert expected in _one_line_error(args, env)


@pytest.mark.parametrize("scheme, module, package", [("gs", "google.cloud.storage", "google-cloud-storage"),
                                                     ("as", "azure.storage.blob", "azure-storage-blob")])
def test_a_missing_sdk_names_the_package_to_install(scheme, module, package, repos):
    import importlib.util

    try:
        installed = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        installed = False
    if installed:
        pytest.skip(f"{package} is installed here: the missing-SDK message cannot show")
    line = _one_line_error(["publish", repos["one"], f"{scheme}://account/container/prefix"])
    assert f"pip install 'tritongen[" in line and package in line


def test_replica_ports_never_collide():
    assert replica_ports(8001, 8000, 8002, 3) == [(8001, 8000, 8002), (8004, 8003, 8005), (8007, 8006, 8008)]
    for ports in [(9000, 9100, 9050), (20001, 20000, 20010), (8001, 8000, 8002)]:
        layout = replica_ports(*ports, replicas=4)
        flat = [p for replica in layout for p in replica]
        assert len(set(flat)) == len(flat) and layout[0] == ports
    with pytest.raises(ServeError, match="must differ"):
        replica_ports(8001, 8001, 8002, 2)
    with pytest.raises(ServeError, match="ports up to"):
        replica_ports(60000, 65000, 65001, 3)


def test_replicas_serve_one_target_report_a_dead_replica_and_stop_cleanly(s3, repos, tmp_path):
    uri = f"s3://{s3}/{BUCKET}/replicas"
    publish(repos["one"], uri)
    base = free_block(6)
    stdout_path = tmp_path / "serve.out"
    with open(stdout_path, "w") as out:
        proc = subprocess.Popen(
            [*TRITONGEN, "serve", uri, "--replicas", "2", "--grpc-port", str(base + 1), "--http-port", str(base),
             "--metrics-port", str(base + 2), "--log-file", str(tmp_path / "triton.log")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "300"})
    try:
        deadline = time.monotonic() + 150
        while "Ctrl-C to stop" not in stdout_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, stdout_path.read_text()
            time.sleep(0.3)
        text = stdout_path.read_text()
        grpc_ports = [base + 1, base + 4]
        for i, port in enumerate(grpc_ports):
            assert f"replica {i}  gRPC 127.0.0.1:{port}  HTTP http://127.0.0.1:{base + 3 * i}" in text, text
            assert (tmp_path / f"triton.{i}.log").exists()
        target = f"ipv4:127.0.0.1:{grpc_ports[0]},127.0.0.1:{grpc_ports[1]}"
        assert target in text

        # The printed target with round_robin reaches both replicas (round_robin only picks
        # connected ones: under load the second may join a few requests late).
        counts = [0, 0]
        for _ in range(50):
            identity_roundtrip(target, channel_args=[("grpc.lb_policy_name", "round_robin")])
            counts = [success_count(port) for port in grpc_ports]
            if min(counts) > 0:
                break
        assert min(counts) > 0, counts

        # A replica that dies is reported; the other keeps answering.
        victim = next(line.split()[0] for line in pid_children_alive(f"--grpc-port={grpc_ports[1]} ")
                      if "tritonserver" in line)
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "replica 1 (gRPC" not in stdout_path.read_text():
            assert time.monotonic() < deadline, stdout_path.read_text()
            time.sleep(0.2)
        assert "is gone: killed by SIGKILL; 1 of 2 serving" in stdout_path.read_text()
        identity_roundtrip(f"127.0.0.1:{grpc_ports[0]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = stdout_path.read_text()
    assert code == 0, text
    assert "replica 0 stopped (exit code 0" in text and "replica 1 stopped" in text
    assert "Traceback" not in text
    for port in grpc_ports:
        assert not pid_children_alive(f"--grpc-port={port} ")


def test_library_errors_are_storage_errors(s3):
    with pytest.raises(StorageError, match="nothing published"):
        resolve(f"s3://{s3}/{BUCKET}/never")
    assert issubclass(StorageError, TritongenError)


@pytest.mark.parametrize("uri, parts", [
    ("s3://bucket/a/b", ("s3", "bucket", "a/b", None)),
    ("s3://10.0.0.5:9000/bkt/", ("s3", "bkt", "", "10.0.0.5:9000")),  # tritonserver's custom-endpoint form
    ("gs://bk/p", ("gs", "bk", "p", None)),
    ("as://account/container/p/q", ("as", "account/container", "p/q", None)),
])
def test_uris_split_the_way_tritonserver_reads_them(uri, parts):
    from tritongen.storage import StoreURI

    parsed = StoreURI.parse(uri)
    assert (parsed.scheme, parsed.bucket, parsed.prefix, parsed.endpoint) == parts


@pytest.mark.parametrize("uri, message", [("s3://", "no bucket"), ("s3://h:9/", "no bucket"),
                                          ("as://account", "as://account/container/prefix"),
                                          ("http://x/y", "unknown storage scheme 'http'")])
def test_malformed_uris_are_storage_errors(uri, message):
    from tritongen.storage import StoreURI

    with pytest.raises(StorageError, match=re.escape(message)):
        StoreURI.parse(uri)


def test_large_files_arrive_whole_and_caches_stay_home(s3, tmp_path):
    """A file above boto3's 8 MB multipart threshold (model weights) arrives byte for byte;
    __pycache__ and '.'-directories (a build's staging) are not published."""
    repo = tmp_path / "repo"
    model = write_identity_model(repo, "identity")
    weights = np.random.default_rng(0).bytes(9 * 1024 * 1024)
    (model / "1" / "weights.bin").write_bytes(weights)
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    write_identity_model(repo, ".tritongen-staging-1")  # a model-shaped directory a killed build left
    version = publish(repo, f"s3://{s3}/{BUCKET}/large").version
    client = boto3.client("s3", endpoint_url=f"http://{s3}")
    body = client.get_object(Bucket=BUCKET, Key=f"large/versions/{version}/identity/1/weights.bin")["Body"].read()
    assert body == weights
    assert not [k for k in keys(s3, "large/") if "__pycache__" in k or "staging" in k]
