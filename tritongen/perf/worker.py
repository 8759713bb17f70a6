"""A load-generating process: one asyncio event loop over ``tritonclient.grpc.aio``.

The parent (perf.load.LoadManager) starts several of these so that Python is not the
bottleneck, and talks to each over a pipe:

``("load", {"mode": "concurrency", "value": n})``
    closed loop: keep ``n`` requests outstanding (each slot sends again when its answer arrives).
``("load", {"mode": "rate", "value": r, "distribution": "constant"|"poisson", "start_ns": t})``
    open loop: send on a precomputed schedule whatever the answers do; a send later than
    its slot by more than ``DELAY_TOLERANCE_NS`` is counted as delayed.
``("collect", upto_ns)``
    hand over the records of requests that finished by ``upto_ns`` plus errors and the
    process's CPU time since the last collect (its own overhead).
``("stop", None)``

Timestamps are ``time.monotonic_ns()``: CLOCK_MONOTONIC, one clock for every process.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

DELAY_TOLERANCE_NS = 1_000_000  # asyncio timers are ~1 ms precise
SCHEDULE_BLOCK = 4096  # send times generated per block (open loop)
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


AUTHKEY_ENV = "TRITONGEN_PERF_AUTHKEY"


def main() -> None:
    """Process entry point: ``python -m tritongen.perf.worker ADDRESS`` (the authkey comes in the
    environment). A fresh interpreter, not multiprocessing's spawn, so that callers need no
    ``if __name__ == "__main__"`` guard and no gRPC state crosses a fork."""
    import sys
    from multiprocessing.connection import Client

    import tritongen  # noqa: F401  (zlib first, as everywhere)

    conn = Client(sys.argv[1], family="AF_UNIX", authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    spec = conn.recv()
    try:
        asyncio.run(_Worker(conn, spec).main())
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


class _Worker:
    def __init__(self, conn, spec: WorkerSpec):
        self.conn, self.spec = conn, spec
        self.records: list[tuple[int, int, int, int, int, int]] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.generation = 0
        self.in_flight: set[asyncio.Task] = set()  # open-loop requests
        self.slots: set[asyncio.Task] = set()  # closed-loop senders, one request outstanding each
        self.scheduler: asyncio.Task | None = None
        self.sent = 0
        self.cpu_mark = time.process_time()
        self.next_request = spec.index  # workers start at different data items

    async def main(self) -> None:
        from tritonclient.grpc import aio

        self.client = aio.InferenceServerClient(self.spec.url)
        loop = asyncio.get_running_loop()
        self.commands: asyncio.Queue = asyncio.Queue()
        loop.add_reader(self.conn.fileno(), self._on_command)
        self.conn.send(("ready", os.getpid()))
        try:
            while True:
                command, arg = await self.commands.get()
                if command == "load":
                    self._set_load(arg)
                elif command == "collect":
                    self.conn.send(("records", self._collect(int(arg))))
                elif command == "stop":
                    break
        finally:
            loop.remove_reader(self.conn.fileno())
            self.generation += 1
            if self.scheduler is not None:
                self.scheduler.cancel()
            pending = self.in_flight | self.slots
            if pending:  # let answers arrive rather than abandon requests mid-flight
                await asyncio.wait(pending, timeout=self.spec.timeout_s)
            await self.client.close()
            try:
                self.conn.send(("stopped", None))
            except OSError:
                pass

    def _on_command(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the parent is gone
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            message = ("stop", None)
        self.commands.put_nowait(message)

    # ----------------------------------------------------------------- load shapes
    def _set_load(self, load: dict[str, Any]) -> None:
        self.generation += 1  # slots of the old level finish their request, then stop
        if self.scheduler is not None:
            self.scheduler.cancel()  # it only sleeps; the requests it sent run on
            self.scheduler = None
        if load["mode"] == "concurrency":
            total, w, n = int(load["value"]), self.spec.index, self.spec.workers
            for _ in range(total // n + (1 if w < total % n else 0)):
                task = asyncio.create_task(self._slot(self.generation))
                self.slots.add(task)
                task.add_done_callback(self.slots.discard)
        else:
            self.scheduler = asyncio.create_task(self._schedule(self.generation, load))

    async def _slot(self, generation: int) -> None:
        while generation == self.generation:
            await self._send(delayed=False)

    def _send_times(self, load: dict[str, Any]):
        """This worker's share of the schedule: offsets (ns) from the start, block by block.

        Constant: the workers interleave (worker w sends at (k * W + w) / rate). Poisson: each
        worker is a Poisson process of rate / W; their superposition is Poisson at the rate.
        """
        rate, w, n = float(load["value"]), self.spec.index, self.spec.workers
        if load.get("distribution", "constant") == "constant":
            period = n / rate * 1e9
            k = 0
            while True:
                yield (np.arange(k, k + SCHEDULE_BLOCK) * period + w / rate * 1e9).astype(np.int64)
                k += SCHEDULE_BLOCK
        rng = np.random.default_rng(self.spec.seed * 1000 + w)
        last = 0.0
        while True:
            gaps = rng.exponential(n / rate * 1e9, SCHEDULE_BLOCK)
            times = last + np.cumsum(gaps)
            last = float(times[-1])
            yield times.astype(np.int64)

    async def _schedule(self, generation: int, load: dict[str, Any]) -> None:
        start = int(load["start_ns"])
        for block in self._send_times(load):
            for offset in block:
                target = start + int(offset)
                wait = target - time.monotonic_ns()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                if generation != self.generation:
                    return
                delayed = time.monotonic_ns() - target > DELAY_TOLERANCE_NS
                task = asyncio.create_task(self._send(delayed))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

    # ------------------------------------------------------------------- one request
    async def _send(self, delayed: bool) -> None:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        data = self.spec.requests[self.next_request % len(self.spec.requests)]
        self.next_request += self.spec.workers
        start = time.monotonic_ns()
        inputs = []
        for name, array in data.items():  # marshal: what a client pays per request
            tensor = InferInput(name, list(array.shape), self.spec.datatypes[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [InferRequestedOutput(name) for name in self.spec.outputs]
        sent = time.monotonic_ns()
        self.sent += 1
        try:
            result = await self.client.infer(
                self.spec.model, inputs, model_version=self.spec.version, outputs=outputs,
                client_timeout=self.spec.timeout_s, compression_algorithm=self.spec.compression,
            )
        except InferenceServerException as exc:
            self.error_count += 1
            if len(self.errors) < 5:
                self.errors.append(f"{exc.status() or 'error'}: {exc.message()}")
            await asyncio.sleep(0.01)  # a failing server must not turn into a busy loop
            return
        answered = time.monotonic_ns()
        for name in self.spec.outputs:
            result.as_numpy(name)
        end = time.monotonic_ns()
        self.records.append((start, end, sent - start, end - answered, answered - sent, int(delayed)))

    def _collect(self, upto_ns: int) -> dict[str, Any]:
        done = [r for r in self.records if r[1] <= upto_ns]
        self.records = [r for r in self.records if r[1] > upto_ns]
        cpu = time.process_time()
        report = {
            "records": np.array(done, dtype=np.int64).reshape(-1, len(RECORD_FIELDS)),
            "errors": self.errors, "error_count": self.error_count,
            "cpu_s": cpu - self.cpu_mark, "sent": self.sent,
            "outstanding": len(self.in_flight) + len(self.slots),
        }
        self.cpu_mark, self.errors, self.error_count, self.sent = cpu, [], 0, 0
        return report


if __name__ == "__main__":
    main()
