"""The load generator: worker processes (perf/worker.py) driven over pipes."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Listener
from dataclasses import dataclass, field

import numpy as np

from ..errors import PerfError
from .worker import AUTHKEY_ENV, RECORD_FIELDS, WorkerSpec

START_TIMEOUT_S = 60.0


@dataclass
class Collected:
    """What the workers handed over at one collect."""

    records: np.ndarray  # [n, len(RECORD_FIELDS)] int64
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    cpu_s: list[float] = field(default_factory=list)  # per worker, since the previous collect
    sent: int = 0
    outstanding: int = 0

    def __len__(self) -> int:
        return len(self.records)


class LoadManager:
    """Starts ``workers`` processes (fresh interpreters) and steers them over local sockets."""

    def __init__(self, spec: WorkerSpec, workers: int):
        if workers < 1:
            raise PerfError("--workers must be >= 1")
        self.workers = workers
        self.pipes, self.processes = [], []
        self._tmp = tempfile.TemporaryDirectory(prefix="tritongen-perf-")
        authkey = secrets.token_bytes(16)
        listener = Listener(os.path.join(self._tmp.name, "control"), family="AF_UNIX", authkey=authkey)
        try:
            env = {**os.environ, AUTHKEY_ENV: authkey.hex()}
            for _ in range(workers):
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "tritongen.perf.worker", listener.address], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                ))
            listener._listener._socket.settimeout(START_TIMEOUT_S)
            for index in range(workers):
                try:
                    conn = listener.accept()
                except OSError:
                    raise PerfError(f"load worker {index} did not start within {START_TIMEOUT_S:g}s"
                                    + self._stderr()) from None
                conn.send(WorkerSpec(**{**spec.__dict__, "index": index, "workers": workers}))
                self.pipes.append(conn)
            for index, pipe in enumerate(self.pipes):
                self._expect(pipe, "ready", START_TIMEOUT_S, index)
        except BaseException:
            listener.close()
            self.close()
            raise
        listener.close()

    def _stderr(self) -> str:
        time.sleep(0.5)  # a crashing worker is usually gone by now
        dead = [p for p in self.processes if p.poll() is not None]
        if not dead:
            return ""
        text = (dead[0].stderr.read() or "").strip().splitlines()
        return f": a worker exited {dead[0].returncode}" + (f" ({text[-1]})" if text else "")

    def _expect(self, pipe, kind: str, timeout_s: float, index: int):
        if not pipe.poll(timeout_s):
            raise PerfError(f"load worker {index} did not answer within {timeout_s:g}s")
        try:
            got, payload = pipe.recv()
        except (EOFError, OSError):
            raise PerfError(f"load worker {index} stopped answering" + self._stderr()) from None
        if got != kind:
            raise PerfError(f"load worker {index}: expected {kind!r}, got {got!r}")
        return payload

    def set_load(self, mode: str, value: float, distribution: str = "constant",
                 intervals_ns: list[int] | None = None) -> None:
        """``intervals_ns``: with the ``custom`` distribution, the gaps between consecutive sends
        (repeated when exhausted), perf_analyzer's ``--request-intervals``."""
        load = {"mode": mode, "value": value, "distribution": distribution, "intervals_ns": intervals_ns,
                "start_ns": time.monotonic_ns() + 20_000_000}  # all workers start the schedule together
        for pipe in self.pipes:
            pipe.send(("load", load))

    def collect(self, upto_ns: int, timeout_s: float = 30.0) -> Collected:
        for pipe in self.pipes:
            pipe.send(("collect", upto_ns))
        parts = [self._expect(pipe, "records", timeout_s, i) for i, pipe in enumerate(self.pipes)]
        records = [p["records"] for p in parts if len(p["records"])]
        return Collected(
            records=np.concatenate(records) if records else np.zeros((0, len(RECORD_FIELDS)), np.int64),
            errors=[e for p in parts for e in p["errors"]],
            error_count=sum(p["error_count"] for p in parts),
            cpu_s=[p["cpu_s"] for p in parts],
            sent=sum(p["sent"] for p in parts),
            outstanding=sum(p["outstanding"] for p in parts),
        )

    def close(self, timeout_s: float = 10.0) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop", None))
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stderr:
                process.stderr.close()
        for pipe in self.pipes:
            pipe.close()
        self.pipes, self.processes = [], []
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
