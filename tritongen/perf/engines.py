"""How a load worker puts a request on the wire: one class per protocol (``-i grpc|http``).

Both send bytes built once per distinct request — perf_analyzer prepares its data up front, and
building an ``InferInput``/protobuf per request cost more client CPU than the server spent on a
light model (measured on 2 cores: tritonclient's ``async_infer`` reached 49–68 % of
perf_analyzer's throughput; the same requests pre-serialized 70–86 % over gRPC, and over HTTP/1.1
more than perf_analyzer itself, at ~30 µs of client CPU a request).

Two ways to send, perf_analyzer's ``--async`` and ``--sync``:

``send(index, on_done)`` (async) sends request ``index``; ``on_done(answered_ns, parsed_ns, error)``
runs when the answer is in (``answered_ns``: last byte received; ``parsed_ns``: after
unmarshalling the response, which perf_analyzer times as "Client Recv"; ``error``: None or a
message).

``open_blocking()`` (sync) gives a :class:`BlockingConnection` of its own (a gRPC channel, an
HTTP connection) for one thread; its ``infer(index)`` sends, blocks until the answer is in and
returns an :class:`Outcome` with the same times.

With ``--shared-memory system`` the request bytes carry region references instead of tensor data
(``spec.shm``: a perf.shm.ShmLayout); the answers then carry no output data either.
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import selectors
import socket
import threading
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from ..client.protocols import balancing_channel_args, http_message, http_model_config, http_model_metadata
from ..registry import Registry

OnDone = Callable[[int, int, "str | None"], None]


@dataclass(frozen=True)
class GrpcTls:
    """perf_analyzer's ``--ssl-grpc-*``: PEM files (None: the system's roots / no client certificate)."""

    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None

    def credentials(self):
        import grpc

        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(read(self.root_certificates), read(self.private_key),
                                            read(self.certificate_chain))


def wire_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The tensor's bytes as Triton's binary protocols carry them (BYTES: 4-byte length + bytes each)."""
    if datatype == "BYTES":
        from tritonclient.utils import serialize_byte_tensor

        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size > 0 else b""
    return np.ascontiguousarray(array).tobytes()


class Outcome(NamedTuple):
    """One blocking request: when it was sent, answered, unmarshalled (monotonic ns), and its error."""

    sent_ns: int
    answered_ns: int
    parsed_ns: int
    error: str | None


class BlockingConnection(ABC):
    """One thread's own connection for sync mode: one request at a time, blocking."""

    @abstractmethod
    def infer(self, index: int) -> Outcome:
        """Send request ``index`` and wait for its answer (or its error, or the timeout)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""


class Engine(ABC):
    protocol: ClassVar[str]
    label: ClassVar[str]  # how perf_analyzer names the protocol in "Avg <label> time"
    exchange_label: ClassVar[str]  # perf_analyzer's name for send + receive in that line
    completion: ClassVar[str]  # how async answers come back, for the settings text

    def __init__(self, spec: Any):
        self.spec = spec

    @abstractmethod
    def send(self, index: int, on_done: OnDone) -> None:
        """Send request ``index``; ``on_done`` runs once with its outcome."""

    @abstractmethod
    def open_blocking(self) -> BlockingConnection:
        """A connection of its own for one sync-mode thread."""

    @abstractmethod
    def close(self) -> None:
        """Close the connections (answers still in flight are abandoned)."""

    @staticmethod
    @abstractmethod
    def control_client(url: str, timeout_s: float, tls: GrpcTls | None = None) -> Any:
        """A client for ``perf``'s control calls over this protocol, answering with the protobuf
        messages ``tritonclient.grpc`` returns."""


ENGINES: Registry[type[Engine]] = Registry("protocol", key="protocol")


@ENGINES.register
class GrpcEngine(Engine):
    """Unary ``ModelInfer``, the request protobuf serialized once per distinct request: async on one
    channel with completion callbacks, sync on a channel per thread with blocking calls.

    ``spec.url`` may name several replicas (``ipv4:A:P,B:P``, ``dns:///NAME:P``): every channel
    then spreads its calls round-robin over them and retries a call its replica refused while
    stopping (UNAVAILABLE, NOT_FOUND) on another replica, as
    the client SDK does (``client.protocols.balancing_channel_args``); a call that still fails is
    one of perf's errors, never dropped."""

    protocol = "grpc"
    label = "gRPC"
    exchange_label = "(un)marshal request/response"
    completion = "gRPC callbacks"
    METHOD = "/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, spec: Any):
        super().__init__(spec)
        import grpc
        from tritonclient.grpc import service_pb2

        self._grpc, self._response = grpc, service_pb2.ModelInferResponse
        self.payloads = []
        for index, data in enumerate(spec.requests):
            request = service_pb2.ModelInferRequest(model_name=spec.model, model_version=spec.version or "")
            for name, array in data.items():
                tensor = request.inputs.add()
                tensor.name, tensor.datatype = name, spec.datatypes[name]
                tensor.shape.extend(int(d) for d in array.shape)
                if spec.shm is None:
                    request.raw_input_contents.append(wire_bytes(array, spec.datatypes[name]))
                else:
                    spec.shm.inputs[index][name].fill(tensor.parameters)
            for name in spec.outputs:
                output = request.outputs.add()
                output.name = name
                if spec.shm is not None:
                    spec.shm.outputs[name].fill(output.parameters)
            self.payloads.append(request.SerializeToString())
        self.channel = self._channel()
        self.metadata = tuple((name.lower(), value) for name, value in spec.headers) or None
        self.call = self.channel.unary_unary(self.METHOD)
        self.compression = {None: None, "gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}[spec.compression]

    def _channel(self, own_connection: bool = False):
        """``own_connection``: a subchannel (TCP connection) not shared with the process's other channels."""
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   *([("grpc.use_local_subchannel_pool", 1)] if own_connection else []),
                   *balancing_channel_args(self.spec.url)]
        if self.spec.tls is None:
            return self._grpc.insecure_channel(self.spec.url, options=options)
        return self._grpc.secure_channel(self.spec.url, self.spec.tls.credentials(), options=options)

    def open_blocking(self) -> BlockingConnection:
        return _GrpcBlocking(self)

    def send(self, index: int, on_done: OnDone) -> None:
        future = self.call.future(self.payloads[index], timeout=self.spec.timeout_s, compression=self.compression,
                                  metadata=self.metadata)
        future.add_done_callback(lambda f: self._finish(f, on_done))

    def _finish(self, future, on_done: OnDone) -> None:
        answered = time.monotonic_ns()
        try:
            raw = future.result()
        except self._grpc.RpcError as exc:
            on_done(answered, answered, f"{exc.code().name}: {exc.details()}")
            return
        except Exception as exc:  # cancelled at close
            on_done(answered, answered, str(exc) or type(exc).__name__)
            return
        self._response.FromString(raw)
        on_done(answered, time.monotonic_ns(), None)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def control_client(url: str, timeout_s: float, tls: GrpcTls | None = None) -> Any:
        """tritonclient.grpc passes ``url`` to gRPC as the channel target, with gRPC's default
        pick_first policy: with a target naming several replicas, every control call (readiness,
        config, statistics) goes to the same one, so the server-side numbers are that replica's."""
        import tritonclient.grpc as grpcclient

        if tls is None:
            return grpcclient.InferenceServerClient(url=url)
        return grpcclient.InferenceServerClient(url=url, ssl=True, root_certificates=tls.root_certificates,
                                                private_key=tls.private_key, certificate_chain=tls.certificate_chain)


class _GrpcBlocking(BlockingConnection):
    """A channel of its own and blocking ``ModelInfer`` calls. The request bytes are ready, so
    "sent" is when the call starts: gRPC's blocking call does not say when the last byte left."""

    def __init__(self, engine: GrpcEngine):
        self.engine = engine
        self.channel = engine._channel(own_connection=True)
        self.call = self.channel.unary_unary(engine.METHOD)

    def infer(self, index: int) -> Outcome:
        engine = self.engine
        sent = time.monotonic_ns()
        try:
            raw = self.call(engine.payloads[index], timeout=engine.spec.timeout_s, compression=engine.compression,
                            metadata=engine.metadata)
        except engine._grpc.RpcError as exc:
            answered = time.monotonic_ns()
            return Outcome(sent, answered, answered, f"{exc.code().name}: {exc.details()}")
        answered = time.monotonic_ns()
        engine._response.FromString(raw)
        return Outcome(sent, answered, time.monotonic_ns(), None)

    def close(self) -> None:
        self.channel.close()


class _HttpControl:
    """The few control calls ``perf`` makes (liveness, model metadata / config, statistics) over
    KServe v2 REST, answered as the protobuf messages tritonclient.grpc returns, so the rest of
    ``perf`` reads one shape whichever protocol carries the load."""

    def __init__(self, url: str, timeout_s: float):
        import tritonclient.http as httpclient

        self.client = httpclient.InferenceServerClient(url=url, network_timeout=timeout_s, connection_timeout=timeout_s)

    _message = staticmethod(http_message)

    def is_server_live(self, client_timeout=None) -> bool:
        return self.client.is_server_live()

    def is_model_ready(self, model: str, version: str = "", client_timeout=None) -> bool:
        return self.client.is_model_ready(model, version)

    def get_model_repository_index(self, client_timeout=None):
        from tritonclient.grpc import service_pb2

        return self._message({"models": self.client.get_model_repository_index()}, service_pb2.RepositoryIndexResponse())

    def get_model_metadata(self, model: str, version: str = "", client_timeout=None):
        return http_model_metadata(self.client.get_model_metadata(model, version))

    def get_model_config(self, model: str, version: str = "", client_timeout=None):
        from tritonclient.grpc import service_pb2

        return service_pb2.ModelConfigResponse(config=http_model_config(self.client.get_model_config(model, version)))

    def get_inference_statistics(self, model_name: str = "", version: str = "", client_timeout=None):
        from tritonclient.grpc import service_pb2

        return self._message(self.client.get_inference_statistics(model_name, version), service_pb2.ModelStatisticsResponse())

    def register_system_shared_memory(self, name: str, key: str, byte_size: int, offset: int = 0, client_timeout=None):
        self.client.register_system_shared_memory(name, key, byte_size, offset)

    def unregister_system_shared_memory(self, name: str = "", client_timeout=None):
        self.client.unregister_system_shared_memory(name)

    def get_system_shared_memory_status(self, region_name: str = "", client_timeout=None):
        from tritonclient.grpc import service_pb2

        regions = self.client.get_system_shared_memory_status(region_name)
        return self._message({"regions": {r["name"]: r for r in regions}}, service_pb2.SystemSharedMemoryStatusResponse())

    def close(self) -> None:
        self.client.close()


@dataclass
class _HttpAnswer:
    status: str  # "200", "400", ...
    fields: dict[str, str]  # header fields, lower-case names
    body: bytes

    @property
    def error(self) -> str | None:
        if self.status == "200":
            return None
        try:
            message = json.loads(self.body).get("error", self.body[:200].decode(errors="replace"))
        except ValueError:
            message = self.body[:200].decode(errors="replace")
        return f"HTTP {self.status}: {message}"

    @property
    def closes(self) -> bool:
        return self.fields.get("connection", "").lower() == "close"

    def unmarshal(self) -> None:
        """Parse the JSON header: the unmarshalling perf_analyzer times as "Client Recv"."""
        json.loads(self.body[: int(self.fields.get("inference-header-content-length", len(self.body)))])


def _take_answer(buffer: bytearray) -> _HttpAnswer | None:
    """The first complete HTTP response in ``buffer`` (removed from it), or None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(fields.get("content-length", 0))
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    status = lines[0].split(" ", 2)
    return _HttpAnswer(status[1] if len(status) > 1 else "?", fields, body)


class _Connection:
    """One keep-alive HTTP/1.1 connection with at most one request on it."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = bytearray()
        self.on_done: OnDone | None = None
        self.deadline = 0.0
        self.pending = memoryview(b"")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@ENGINES.register
class HttpEngine(Engine):
    """KServe v2 REST with Triton's binary tensor extension over keep-alive HTTP/1.1 connections,
    one per request in flight (what perf_analyzer's HTTP client does): async driven by one
    selector thread, sync by blocking sockets, one per thread; each distinct request's bytes are
    built once."""

    protocol = "http"
    label = "HTTP"
    exchange_label = "send/recv"
    completion = "one selector thread each"

    @staticmethod
    def control_client(url: str, timeout_s: float, tls: GrpcTls | None = None) -> Any:
        return _HttpControl(url, timeout_s)

    def __init__(self, spec: Any):
        super().__init__(spec)
        host, _, port = spec.url.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"HTTP endpoint {spec.url!r}: expected HOST:PORT")
        self.address = (host.strip("[]"), int(port))
        version = f"/versions/{spec.version}" if spec.version else ""
        self.requests = [self._request(f"/v2/models/{spec.model}{version}/infer", index, data)
                         for index, data in enumerate(spec.requests)]
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.queue: collections.deque = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.closed = False
        self.thread: threading.Thread | None = None  # the selector loop, started by the first async send

    def _request(self, path: str, index: int, data: dict[str, np.ndarray]) -> bytes:
        inputs, raws = [], []
        for name, array in data.items():
            tensor = {"name": name, "shape": [int(d) for d in array.shape], "datatype": self.spec.datatypes[name]}
            if self.spec.shm is None:
                raws.append(wire_bytes(array, self.spec.datatypes[name]))
                tensor["parameters"] = {"binary_data_size": len(raws[-1])}
            else:
                tensor["parameters"] = self.spec.shm.inputs[index][name].as_json()
            inputs.append(tensor)
        outputs = [{"name": name, "parameters": {"binary_data": True} if self.spec.shm is None
                    else self.spec.shm.outputs[name].as_json()} for name in self.spec.outputs]
        header = json.dumps({"inputs": inputs, "outputs": outputs}, separators=(",", ":")).encode()
        body = header + b"".join(raws)
        encoding = ""
        if self.spec.compression == "gzip":
            body, encoding = gzip.compress(body), "Content-Encoding: gzip\r\n"
        elif self.spec.compression == "deflate":
            body, encoding = zlib.compress(body), "Content-Encoding: deflate\r\n"
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.spec.headers)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.spec.url}\r\nContent-Type: application/octet-stream\r\n"
                f"{extra}Inference-Header-Content-Length: {len(header)}\r\n{encoding}Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    def open_blocking(self) -> BlockingConnection:
        return _HttpBlocking(self)

    # ------------------------------------------------------------------ sending
    def send(self, index: int, on_done: OnDone) -> None:
        if threading.current_thread() is self.thread:
            self._start(index, on_done)
            return
        if self.thread is None:  # callers send one at a time (the worker's send lock)
            self.thread = threading.Thread(target=self._loop, name="tritongen-http-load", daemon=True)
            self.thread.start()
        self.queue.append((index, on_done))
        os.write(self.wake_w, b"x")

    def _start(self, index: int, on_done: OnDone) -> None:
        try:
            conn = self.idle.pop() if self.idle else self._connect()
        except OSError as exc:
            now = time.monotonic_ns()
            on_done(now, now, f"UNAVAILABLE: cannot connect to {self.spec.url}: {exc.strerror or exc}")
            return
        conn.on_done, conn.deadline = on_done, time.monotonic() + self.spec.timeout_s
        conn.pending = memoryview(self.requests[index])
        self.busy.add(conn)
        self._write(conn)

    def _connect(self) -> _Connection:
        conn = _Connection(*self.address)
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        return conn

    def _write(self, conn: _Connection) -> None:
        try:
            while conn.pending:
                sent = conn.sock.send(conn.pending)
                conn.pending = conn.pending[sent:]
        except BlockingIOError:
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        except OSError as exc:
            self._fail(conn, f"UNAVAILABLE: {exc.strerror or exc}")

    # ------------------------------------------------------------------ receiving
    def _loop(self) -> None:
        while not self.closed:
            timeout = min((c.deadline for c in self.busy), default=time.monotonic() + 0.5) - time.monotonic()
            for key, events in self.selector.select(max(timeout, 0.0)):
                if key.data is None:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    while self.queue:
                        self._start(*self.queue.popleft())
                    continue
                conn = key.data
                if events & selectors.EVENT_WRITE and conn.pending:
                    self._write(conn)
                    if not conn.pending and conn in self.busy:
                        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                if events & selectors.EVENT_READ:
                    self._read(conn)
            now = time.monotonic()
            for conn in [c for c in self.busy if c.deadline <= now]:
                self._fail(conn, f"DEADLINE_EXCEEDED: no answer within {self.spec.timeout_s:g}s")

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, f"UNAVAILABLE: {exc.strerror or exc}")
            return
        if not chunk:
            self._fail(conn, "UNAVAILABLE: the server closed the connection")
            return
        conn.buffer += chunk
        if conn.on_done is None:
            return
        answer = _take_answer(conn.buffer)
        if answer is None:
            return
        answered = time.monotonic_ns()
        on_done, conn.on_done = conn.on_done, None
        self.busy.discard(conn)
        if answer.closes:
            self.selector.unregister(conn.sock)
            conn.close()
        else:
            self.idle.append(conn)
        if answer.error is not None:
            on_done(answered, answered, answer.error)
            return
        answer.unmarshal()
        on_done(answered, time.monotonic_ns(), None)

    def _fail(self, conn: _Connection, message: str) -> None:
        on_done, conn.on_done = conn.on_done, None
        self.busy.discard(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
        if on_done is not None:
            now = time.monotonic_ns()
            on_done(now, now, message)

    def close(self) -> None:
        self.closed = True
        os.write(self.wake_w, b"x")
        if self.thread is not None:
            self.thread.join(5)
        for conn in [*self.idle, *self.busy]:
            conn.close()
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


class _HttpBlocking(BlockingConnection):
    """A blocking keep-alive socket of its own: send the request, read until its answer is whole."""

    def __init__(self, engine: HttpEngine):
        self.engine = engine
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def infer(self, index: int) -> Outcome:
        engine = self.engine
        try:
            if self.sock is None:
                self.sock = socket.create_connection(engine.address, timeout=engine.spec.timeout_s)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + engine.spec.timeout_s
            self.sock.sendall(engine.requests[index])
            sent = time.monotonic_ns()
            while (answer := _take_answer(self.buffer)) is None:
                self.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return self._broken("UNAVAILABLE: the server closed the connection")
                self.buffer += chunk
        except socket.timeout:
            return self._broken(f"DEADLINE_EXCEEDED: no answer within {engine.spec.timeout_s:g}s")
        except OSError as exc:
            return self._broken(f"UNAVAILABLE: cannot reach {engine.spec.url}: {exc.strerror or exc}")
        answered = time.monotonic_ns()
        if answer.closes:
            self.close()
        if answer.error is not None:
            return Outcome(sent, answered, answered, answer.error)
        answer.unmarshal()
        return Outcome(sent, answered, time.monotonic_ns(), None)

    def _broken(self, message: str) -> Outcome:
        """The connection is in an unknown state (a late answer may still come): drop it."""
        self.close()
        now = time.monotonic_ns()
        return Outcome(now, now, now, message)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.buffer = None, bytearray()
