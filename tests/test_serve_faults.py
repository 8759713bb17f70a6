"""Faults on the real tritonserver: a backend process killed under load, stopping after a
crash, a start that fails, stopping while requests are in flight.

One tiny classifier (conftest's `clas_export`) is built twice for python-onnxruntime: as an
ensemble (`ens` over ens_preprocess / ens_runtime / ens_postprocess) and fused (`fus`, two
instances). What Triton 2.51 answers in the gap is recorded in tritongen/serve/watchdog.py.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tritongen.errors import ServeError
from tritongen.serve import TritonServer, check_repository, find_tritonserver
from tritongen.serve import server as server_module
from tritongen.serve.watchdog import Stub, children, group_members

from .conftest import free_port, run_cli, start_serve_cli, stop_serve_cli

try:
    find_tritonserver()
except ServeError as exc:
    pytest.skip(f"no tritonserver to test against: {exc}", allow_module_level=True)

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] talks to the server in these tests")
from tritonclient.utils import InferenceServerException  # noqa: E402

RECOVERY_LIMIT_S = 30.0
PROMPT_STOP_S = 10.0  # before: 15 s of Triton's exit timeout, then exit 1


@pytest.fixture(scope="module")
def repos(clas_export, tmp_path_factory) -> dict[str, Path]:
    from tritongen.build import build

    root = tmp_path_factory.mktemp("faults")
    build(clas_export, root / "ensemble", backend="python-onnxruntime", name="ens", layout="ensemble", instances=1)
    build(clas_export, root / "fused", backend="python-onnxruntime", name="fus", layout="fused", instances=2)
    return {"ensemble": root / "ensemble", "fused": root / "fused"}


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    return [photos[0].read_bytes(), photos[1].read_bytes()]


def infer(client, model: str, image: bytes, timeout: float = 30.0) -> tuple[list[int], np.ndarray]:
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    result = client.infer(model, [tensor], client_timeout=timeout)
    return result.as_numpy("LABEL_IDS")[0].tolist(), result.as_numpy("SCORES")[0]


def same(got, expected) -> bool:
    return got[0] == expected[0] and np.allclose(got[1], expected[1], atol=1e-5)


def stub(server: TritonServer, instance: str) -> Stub:
    stubs = [s for s in map(Stub.of, children(server.process.pid)) if s is not None]
    found = [s for s in stubs if s.instance == instance]
    assert found, f"no stub {instance} among {[s.instance for s in stubs]}"
    return found[0]


def group_members_of(pid: int) -> list:
    """The processes under ``pid`` (`tritongen serve` -> tritonserver -> stubs)."""
    from tritongen.serve.watchdog import processes

    found, parents = [], {pid}
    for _ in range(3):
        level = [p for p in processes() if p.ppid in parents and p.state != "Z"]
        found += level
        parents = {p.pid for p in level}
    return found


def assert_nothing_left(server: TritonServer) -> None:
    alive = [p for p in group_members(server.process.pid) if p.state != "Z"]
    assert not alive, f"processes of the server's group still running: {alive}"
    shm = sorted(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert not shm, f"shared-memory regions of the server left: {shm}"


class Load(threading.Thread):
    """Requests back to back through tritonclient.grpc; every answer must equal the one the
    model gave for that image before the fault."""

    def __init__(self, url: str, model: str, images: list[bytes], expected: list):
        super().__init__(daemon=True)
        self.url, self.model, self.images, self.expected = url, model, images, expected
        self.sent = self.ok = 0
        self.errors: Counter = Counter()  # (status, message start) -> count
        self.wrong: list = []
        self.ok_times: list[float] = []
        self.error_times: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self.halt.is_set():
                i = self.sent % len(self.images)
                self.sent += 1
                try:
                    got = infer(client, self.model, self.images[i])
                except InferenceServerException as exc:
                    self.errors[(str(exc.status()).rsplit(".", 1)[-1], (exc.message() or "")[:70])] += 1
                    self.error_times.append(time.monotonic())
                    time.sleep(0.02)  # NOT_FOUND comes back at once: do not flood two cores
                    continue
                if same(got, self.expected[i]):
                    self.ok += 1
                    self.ok_times.append(time.monotonic())
                else:
                    self.wrong.append((i, got))
        finally:
            client.close()

    def answering_again(self) -> float | None:
        """When the first correct answer after the last error came."""
        last_error = max(self.error_times, default=None)
        return None if last_error is None else next((t for t in self.ok_times if t > last_error), None)


class Readiness(threading.Thread):
    """/v2/health/ready every 50 ms: (time, HTTP status)."""

    def __init__(self, http_url: str):
        super().__init__(daemon=True)
        self.url = f"http://{http_url}/v2/health/ready"
        self.codes: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    code = response.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except OSError:
                code = 0
            self.codes.append((time.monotonic(), code))


def test_killed_runtime_stub_is_reloaded_under_load_and_stop_is_prompt(repos, images, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repos["ensemble"], repo)
    (repo / ".tritongen-staging-dead" / "new").mkdir(parents=True)  # what a killed build leaves: never loaded
    shutil.copytree(repo / "ens_runtime", repo / ".tritongen-staging-dead" / "new" / "ens_runtime")
    lines: list[str] = []
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log",
                          on_fault=lines.append)
    with server:
        assert sorted(server.model_states()) == ["ens", "ens_postprocess", "ens_preprocess", "ens_runtime"]
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            expected = [infer(client, "ens", image) for image in images]
        load = Load(server.grpc_url, "ens", images, expected)
        readiness = Readiness(server.http_url)
        load.start()
        readiness.start()
        victim = stub(server, "ens_runtime_0_0")
        try:
            deadline = time.monotonic() + 30
            while load.ok < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert load.ok >= 20 and not load.errors, f"no steady load before the kill: {load.errors}"
            sent_before = load.sent
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            deadline = killed + RECOVERY_LIMIT_S
            while not (server.crashes and server.crashes[0].recovered_at) and time.monotonic() < deadline:
                time.sleep(0.1)
            ok_at_recovery = load.ok
            while load.ok < ok_at_recovery + 20 and time.monotonic() < deadline:  # and it goes on answering
                time.sleep(0.05)
        finally:
            load.halt.set()
            readiness.halt.set()
            load.join(60)
            readiness.join(10)
        print(f"\nsent {load.sent} ok {load.ok} errors {dict(load.errors)} (sent before the kill: {sent_before})")
        assert not load.wrong, f"wrong answers: {load.wrong[:3]}"
        answered_again = load.answering_again()
        assert load.errors and answered_again is not None, f"no correct answer {RECOVERY_LIMIT_S:.0f} s after the kill; log lines: {lines}"
        print(f"answering again {answered_again - killed:.2f} s after kill -9")
        assert answered_again - killed < RECOVERY_LIMIT_S
        assert load.ok >= ok_at_recovery + 20

        (crash,) = server.crashes
        assert (crash.model, crash.instance, crash.pid, crash.error) == ("ens_runtime", "ens_runtime_0_0", victim.pid, None)
        assert "SIGKILL" in crash.cause and 0 < crash.downtime < RECOVERY_LIMIT_S
        assert len(lines) == 2 and "ens_runtime_0_0" in lines[0] and "reloaded ens_runtime, ens" in lines[1]
        # what clients see in the gap (documented in serve/watchdog.py): only these
        allowed = {"INTERNAL": "Stub process", "NOT_FOUND": "has no available versions", "UNAVAILABLE": ""}
        for (status, message), _ in load.errors.items():
            assert status in allowed and allowed[status] in message, (status, message)
        not_ready = [t for t, code in readiness.codes if code != 200 and killed < t < answered_again]
        assert not_ready, "/v2/health/ready never said not-ready while the model reloaded"
        print(f"/v2/health/ready not 200 for {not_ready[-1] - not_ready[0]:.2f} s of the gap")
        assert readiness.codes[-1][1] == 200
        assert {m["state"] for m in server.model_states().values()} == {"READY"}
        stop_promptly(server, "stop after the crash")


def stop_promptly(server: TritonServer, what: str) -> None:
    """Stop ``server`` (still inside its ``with``: the exit's stop is then a no-op) within
    PROMPT_STOP_S, leaving no process and no shared memory."""
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    print(f"{what} took {took:.1f} s")
    assert took < PROMPT_STOP_S
    assert_nothing_left(server)


def test_poll_mode_reports_a_crash_without_repairing_it_and_stops_promptly(repos, images, tmp_path):
    lines: list[str] = []
    server = TritonServer(repos["fused"], free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log",
                          model_control="poll", on_fault=lines.append)
    with server:
        assert not server.recovers
        victim = stub(server, "fus_0_0")
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not server.crashes and time.monotonic() < deadline:
            time.sleep(0.1)
        (crash,) = server.crashes
        assert crash.recovered_at is None and "poll" in crash.error
        assert len(lines) == 1 and "fus_0_0" in lines[0] and "until the server restarts" in lines[0]
        statuses = Counter()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            for _ in range(6):  # two instances: some requests reach the dead one (its version can never unload now)
                try:
                    infer(client, "fus", images[0])
                    statuses["OK"] += 1
                except InferenceServerException as exc:
                    assert "is not healthy" in exc.message()
                    statuses[str(exc.status()).rsplit(".", 1)[-1]] += 1
        print(f"\nwith a dead instance and no recovery: {dict(statuses)}")
        stop_promptly(server, "stop after an unrepaired crash")


def test_stop_after_tritonserver_itself_died_cleans_up(repos, tmp_path):
    lines: list[str] = []
    server = TritonServer(repos["fused"], free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log",
                          on_fault=lines.append)
    with server:
        assert len(list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))) == 2  # one region per instance
        os.kill(server.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lines == ["tritonserver exited (code -9)"]
        started = time.monotonic()
        assert server.stop() == -signal.SIGKILL
        assert time.monotonic() - started < PROMPT_STOP_S
    assert_nothing_left(server)


def test_start_on_a_port_bound_but_not_listening_names_the_port(repos, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound, never listening: a connect test misses it
        port = holder.getsockname()[1]
        server = TritonServer(repos["fused"], port, free_port(), free_port(), log_file=tmp_path / "triton.log")
        with pytest.raises(ServeError) as caught:
            server.start()
    first = str(caught.value).splitlines()[0]
    assert f"port {port}" in first and "--grpc-port" in first and "already in use" in first
    assert server.process is None  # refused before starting anything


def test_failed_start_puts_the_cause_first_and_leaves_nothing(repos, tmp_path, monkeypatch):
    """The port is taken after the check (a race the check cannot close): Triton's own message
    comes first, without its CUDA probing, and the models it had loaded leave no trace."""
    monkeypatch.setattr(server_module, "_port_in_use", lambda port: False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        server = TritonServer(repos["ensemble"], port, free_port(), free_port(), log_file=tmp_path / "triton.log")
        with pytest.raises(ServeError) as caught:
            server.start(timeout=120)
    message = str(caught.value)
    print(f"\n{message}")
    first = message.splitlines()[0]
    assert first.startswith("tritonserver could not start: failed to start GRPC service")
    assert f"127.0.0.1:{port}" in first and "already in use" in first
    assert "cuda" not in message.lower() and "full log" in message
    assert "CUDA" in (tmp_path / "triton.log").read_text()  # the noise is in the log, not in the message
    assert_nothing_left(server)


def test_check_repository_skips_dot_directories_and_names_a_config_that_is_not_utf8(repos, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repos["fused"], repo)
    hidden = repo / ".hidden"
    hidden.mkdir()
    (hidden / "config.pbtxt").write_text((repo / "fus" / "config.pbtxt").read_text().replace('name: "fus"', 'name: ".hidden"'))
    assert check_repository(repo) == ["fus"]

    config = repo / "fus" / "config.pbtxt"
    config.write_bytes(b"# r\xe9sum\xe9 in Latin-1\n" + config.read_bytes())
    with pytest.raises(ServeError, match="not UTF-8") as caught:
        check_repository(repo)
    assert str(config) in str(caught.value)
    proc = run_cli("serve", repo, "--grpc-port", free_port(), "--http-port", free_port(), "--metrics-port", free_port(),
                   check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not UTF-8" in proc.stderr and str(config) in proc.stderr


def test_sigterm_lets_requests_in_flight_finish(repos, images, tmp_path):
    """The runtime model holds requests 3 s in its batcher; SIGTERM to `tritongen serve` arrives
    while 4 ensemble requests wait there: all 4 are answered, correctly."""
    repo = tmp_path / "repo"
    shutil.copytree(repos["ensemble"], repo)
    runtime = repo / "ens_runtime" / "config.pbtxt"
    text = runtime.read_text()
    assert "max_queue_delay_microseconds: 0" in text
    runtime.write_text(text.replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 3000000"))
    served = start_serve_cli(repo, tmp_path)
    results: dict[int, object] = {}

    def request(i: int) -> None:
        with grpcclient.InferenceServerClient(served.grpc_url) as client:
            try:
                results[i] = infer(client, "ens", images[0])
            except InferenceServerException as exc:
                results[i] = exc

    try:
        with grpcclient.InferenceServerClient(served.grpc_url) as client:
            expected = infer(client, "ens", images[0])  # waits out the 3 s delay alone
            # first a crash: serve says so and reloads (the drain below runs on the reloaded model)
            runtime_stubs = [p for p in group_members_of(served.process.pid) if "ens_runtime/1/model.py" in " ".join(p.argv)]
            assert len(runtime_stubs) == 1, runtime_stubs
            os.kill(runtime_stubs[0].pid, signal.SIGKILL)
            deadline = time.monotonic() + RECOVERY_LIMIT_S
            while "reloaded ens_runtime" not in served.stdout_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "ens_runtime_0_0" in served.stdout_path.read_text()
            assert same(infer(client, "ens", images[0]), expected)
        threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all 4 queued in ens_runtime's batcher
    finally:
        code = stop_serve_cli(served, timeout=90)
    for t in threads:
        t.join(60)
    output = served.stdout_path.read_text()
    assert code == 0, output
    failed = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not failed, f"requests in flight failed on SIGTERM: {failed}"
    assert len(results) == 4 and all(same(r, expected) for r in results.values())
    assert "letting requests in flight finish" in output
    # exit code 0, or -9 when the crashed version could not unload (a request had reached the dead process)
    assert re.search(r"tritonserver stopped \(exit code (0|-9); 1 backend crash\(es\), 1 recovered", output), output
    with pytest.raises(urllib.error.URLError):  # and the server is gone
        urllib.request.urlopen(f"http://{served.http_url}/v2/health/live", timeout=2)
