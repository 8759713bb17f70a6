"""A load-generating process: sends through a protocol engine (``perf/engines.py``: gRPC or HTTP,
each request's bytes built once), completion-driven (async, the default) or from blocking threads
(sync, perf_analyzer's ``--sync``).

The parent (perf.load.LoadManager) starts several of these so that Python is not the
bottleneck, and talks to each over a local socket:

``("load", {"mode": "concurrency", "value": n})``
    closed loop: keep ``n`` requests outstanding; each answer's callback sends the next (async),
    or ``n`` threads each send, wait for the answer, send again (sync, as perf_analyzer's
    ``ConcurrencyWorker`` does: one thread per request in flight, its own connection).
``("load", {"mode": "rate", "value": r, "distribution": "constant"|"poisson", "start_ns": t})``
    open loop: a scheduler thread sends on a precomputed schedule whatever the answers do (async),
    or hands each due send to a pool of ``SYNC_RATE_THREADS`` blocking threads (sync); a send
    later than its slot by more than ``DELAY_TOLERANCE_NS`` is counted as delayed.
``("collect", upto_ns)``
    hand over the records of requests that finished by ``upto_ns`` plus errors and the
    process's CPU time since the last collect (its own overhead).
``("stop", None)``

Why callbacks and not asyncio: the engines complete requests on their own threads; sending the
next request from the completion callback costs no event-loop round trip, which measured faster
than ``tritonclient.grpc.aio`` on the same machine (benchmarks/perf_client.py). Request bytes are
built once (perf_analyzer prepares its data up front as well): "Client Send" is the time the
send call takes, "Client Recv" the unmarshalling of the answer.

Timestamps are ``time.monotonic_ns()``: CLOCK_MONOTONIC, one clock for every process.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

DELAY_TOLERANCE_NS = 1_000_000
STOP_WAIT_S = 10.0  # how long a stopping worker waits for answers still in flight
SCHEDULE_BLOCK = 4096  # send times generated per block (open loop)
SYNC_RATE_THREADS = 4  # blocking senders per load process, open loop sync (perf_analyzer: --max-threads, 4 there)
# Record columns: start, end, client send (marshal), client recv (unmarshal), response wait, delayed
RECORD_FIELDS = ("start_ns", "end_ns", "send_ns", "recv_ns", "wait_ns", "delayed")


@dataclass
class WorkerSpec:
    index: int
    workers: int
    url: str
    model: str
    version: str
    requests: list[dict[str, np.ndarray]]
    datatypes: dict[str, str]
    outputs: list[str]
    timeout_s: float
    compression: str | None = None
    seed: int = 0
    protocol: str = "grpc"  # a key of perf.engines.ENGINES
    headers: tuple[tuple[str, str], ...] = ()  # added to every inference request (-H)
    tls: Any = None  # perf.engines.GrpcTls for a TLS gRPC channel (--ssl-grpc-*)
    sync: bool = False  # blocking calls, one thread per request in flight (--sync), else completion-driven (--async)
    shm: Any = None  # perf.shm.ShmLayout: requests point at shared-memory regions (--shared-memory system)


AUTHKEY_ENV = "TRITONGEN_PERF_AUTHKEY"


def main() -> None:
    """Process entry point: ``python -m tritongen.perf.worker ADDRESS`` (the authkey comes in the
    environment). A fresh interpreter, not multiprocessing's spawn, so that callers need no
    ``if __name__ == "__main__"`` guard and no gRPC state crosses a fork."""
    import sys
    from multiprocessing.connection import Client

    import tritongen  # noqa: F401  (zlib first, as everywhere)

    conn = Client(sys.argv[1], family="AF_UNIX", authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    try:
        _Worker(conn, conn.recv()).serve()
    except (KeyboardInterrupt, EOFError, OSError):
        pass
    finally:
        conn.close()


class _Worker:
    def __init__(self, conn, spec: WorkerSpec):
        from .engines import ENGINES

        self.conn, self.spec = conn, spec
        self.engine = ENGINES.lookup(spec.protocol)(spec)
        # Sends come from several threads (scheduler, completion callbacks): the counters must not
        # interleave. Reentrant: a completion callback may run inside send when the answer is already there.
        self.send_lock = threading.RLock()
        self.records: list[tuple[int, int, int, int, int, int]] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.generation = 0
        self.outstanding = 0
        self.sent = 0
        self.next_request = spec.index  # workers start at different data items
        self.scheduler: threading.Thread | None = None
        self.cpu_mark = time.process_time()

    def serve(self) -> None:
        self.conn.send(("ready", os.getpid()))
        try:
            while True:
                command, arg = self.conn.recv()
                if command == "load":
                    self._set_load(arg)
                elif command == "collect":
                    self.conn.send(("records", self._collect(int(arg))))
                elif command == "stop":
                    break
        finally:
            self.generation += 1  # no new sends; let answers arrive rather than abandon requests
            deadline = time.monotonic() + min(self.spec.timeout_s, STOP_WAIT_S)
            while self.outstanding > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.engine.close()
            try:
                self.conn.send(("stopped", None))
            except OSError:
                pass

    # ----------------------------------------------------------------- load shapes
    def _set_load(self, load: dict[str, Any]) -> None:
        self.generation += 1  # chains of the old level end at their next answer; the old schedule stops
        generation = self.generation
        if load["mode"] == "concurrency":
            total, w, n = int(load["value"]), self.spec.index, self.spec.workers
            for _ in range(total // n + (1 if w < total % n else 0)):
                if self.spec.sync:
                    threading.Thread(target=self._sync_chain, args=(generation,), daemon=True).start()
                else:
                    self._send(generation, chained=True)
        else:
            due = None
            if self.spec.sync:
                due = queue.SimpleQueue()
                for _ in range(SYNC_RATE_THREADS):
                    threading.Thread(target=self._sync_pool, args=(generation, due), daemon=True).start()
            self.scheduler = threading.Thread(target=self._schedule, args=(generation, load, due), daemon=True)
            self.scheduler.start()

    def _send_times(self, load: dict[str, Any]):
        """This worker's share of the schedule: offsets (ns) from the start, block by block.

        Constant: the workers interleave (worker w sends at (k * W + w) / rate). Poisson: each
        worker is a Poisson process of rate / W; their superposition is Poisson at the rate.
        Custom: the send times the given gaps add up to, repeated; worker w takes sends w, w + W, ...
        """
        rate, w, n = float(load["value"]), self.spec.index, self.spec.workers
        if load.get("distribution") == "custom":  # the given gaps, repeated; worker w takes every n-th send
            gaps = np.asarray(load["intervals_ns"], dtype=np.int64)
            repeats = n * max(1, -(-SCHEDULE_BLOCK // len(gaps)))  # a cycle of a multiple of n sends
            cycle = np.cumsum(np.tile(gaps, repeats))
            k = 0
            while True:
                yield (cycle[w::n] + k * int(cycle[-1])).astype(np.int64)
                k += 1
        if load.get("distribution", "constant") == "constant":
            period = n / rate * 1e9
            k = 0
            while True:
                yield (np.arange(k, k + SCHEDULE_BLOCK) * period + w / rate * 1e9).astype(np.int64)
                k += SCHEDULE_BLOCK
        rng = np.random.default_rng(self.spec.seed * 1000 + w)
        last = 0.0
        while True:
            times = last + np.cumsum(rng.exponential(n / rate * 1e9, SCHEDULE_BLOCK))
            last = float(times[-1])
            yield times.astype(np.int64)

    def _schedule(self, generation: int, load: dict[str, Any], due: queue.SimpleQueue | None) -> None:
        """``due``: sync mode's queue of send times for the blocking threads (None: send from here)."""
        start = int(load["start_ns"])
        for block in self._send_times(load):
            for offset in block:
                target = start + int(offset)
                wait = target - time.monotonic_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                if generation != self.generation:
                    return
                if due is not None:
                    due.put(target)
                else:
                    self._send(generation, chained=False, delayed=time.monotonic_ns() - target > DELAY_TOLERANCE_NS)

    # ------------------------------------------------------------------ sync mode
    def _sync_chain(self, generation: int) -> None:
        """One request in flight at a time, on a connection of its own, until the level changes."""
        conn = self.engine.open_blocking()
        try:
            while generation == self.generation:
                if self._blocking(conn, delayed=False) is not None:
                    time.sleep(0.01)  # a failing server must not turn into a busy loop
        finally:
            conn.close()

    def _sync_pool(self, generation: int, due: queue.SimpleQueue) -> None:
        """Open loop, sync: send each due request (late when every thread was busy at its slot)."""
        conn = self.engine.open_blocking()
        try:
            while generation == self.generation:
                try:
                    target = due.get(timeout=0.1)
                except queue.Empty:
                    continue
                if generation == self.generation:
                    self._blocking(conn, delayed=time.monotonic_ns() - target > DELAY_TOLERANCE_NS)
        finally:
            conn.close()

    def _blocking(self, conn, delayed: bool) -> str | None:
        with self.send_lock:
            index = self._claim_request()
        start = time.monotonic_ns()
        outcome = conn.infer(index)
        self._finish(start, outcome.sent_ns, outcome.answered_ns, outcome.parsed_ns, outcome.error, delayed)
        return outcome.error

    # ------------------------------------------------------------------- one request
    def _claim_request(self) -> int:
        """The data item the next request sends (workers take every W-th); counts it outstanding.
        Called with ``send_lock`` held."""
        index = self.next_request % len(self.spec.requests)
        self.next_request += self.spec.workers
        self.outstanding += 1
        self.sent += 1
        return index

    def _send(self, generation: int, chained: bool, delayed: bool = False) -> None:
        with self.send_lock:
            index = self._claim_request()
            timing = {"start": time.monotonic_ns()}

            def done(answered: int, parsed: int, error: str | None) -> None:
                self._done(timing, answered, parsed, error, generation, chained, delayed)

            self.engine.send(index, done)
            timing.setdefault("sent", time.monotonic_ns())

    def _done(self, timing: dict[str, int], answered: int, parsed: int, error: str | None, generation: int,
              chained: bool, delayed: bool) -> None:
        sent = timing.setdefault("sent", answered)  # the answer can beat the return of send
        self._finish(timing["start"], sent, answered, parsed, error, delayed)
        if chained and generation == self.generation:
            if error is not None:
                time.sleep(0.01)  # a failing server must not turn into a busy loop
            self._send(generation, chained=True)

    def _finish(self, start: int, sent: int, answered: int, parsed: int, error: str | None, delayed: bool) -> None:
        """Record one request (or its error); it is no longer outstanding."""
        record = None
        if error is None:
            record = (start, parsed, sent - start, parsed - answered, max(answered - sent, 0), int(delayed))
        with self.send_lock:
            self.outstanding -= 1
            if record is not None:
                self.records.append(record)
            else:
                self._error(error)

    def _error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(message)

    def _collect(self, upto_ns: int) -> dict[str, Any]:
        with self.send_lock:
            records, self.records = self.records, []
        done = [r for r in records if r[1] <= upto_ns]
        later = [r for r in records if r[1] > upto_ns]
        if later:
            with self.send_lock:
                self.records = later + self.records
        cpu = time.process_time()
        report = {
            "records": np.array(done, dtype=np.int64).reshape(-1, len(RECORD_FIELDS)),
            "errors": self.errors, "error_count": self.error_count,
            "cpu_s": cpu - self.cpu_mark, "sent": self.sent, "outstanding": self.outstanding,
        }
        self.cpu_mark, self.errors, self.error_count, self.sent = cpu, [], 0, 0
        return report


if __name__ == "__main__":
    main()
