"""The wire under the client plans: one class per protocol (``protocol="grpc"|"http"``).

The plans (``core.py``) are written once against tritonclient's method names
(``get_model_config``, ``infer``, ``register_system_shared_memory``, ...), which
``tritonclient.grpc`` and ``tritonclient.http`` share. What differs lives here:

- how a client is made (gRPC channel arguments / TLS credentials; HTTP network timeouts /
  ``ssl_options``), how a call's timeout and compression are passed;
- what comes back: gRPC answers protobuf messages, HTTP answers JSON dicts; configs and
  metadata are turned into the same protobuf messages (``model_config_pb2.ModelConfig``,
  ``ModelMetadataResponse``), output tensors into ``(datatype, shape)``;
- how a failure looks: HTTP's numeric statuses (``"404"``) and the socket errors of
  geventhttpclient / aiohttp become ``InferenceServerException`` with gRPC's status names, so
  ``plans.translate`` words and retries them alike.

``tritonclient.http`` objects are not thread-safe (its docstring says so): the sync HTTP session
keeps one client per thread and per timeout (geventhttpclient fixes the network timeout when the
client is made).
"""
from __future__ import annotations

import asyncio
import json
import threading
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..registry import Registry
from .options import ClientOptions
from .plans import Call

# Triton's HTTP endpoint answers TRITONSERVER_Error codes as these statuses (http_server.cc).
HTTP_STATUS_NAMES = {
    "400": "INVALID_ARGUMENT", "404": "NOT_FOUND", "409": "ALREADY_EXISTS", "429": "RESOURCE_EXHAUSTED",
    "500": "INTERNAL", "501": "UNIMPLEMENTED", "503": "UNAVAILABLE",
}


def http_message(data: dict, message):
    """A JSON answer of Triton's REST API parsed into the protobuf ``message`` gRPC answers with
    (the REST bodies follow the protobuf JSON mapping; fields a version adds are ignored)."""
    from google.protobuf import json_format

    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


def http_model_config(data: dict):
    """A model config as Triton's REST API answers it, as the protobuf gRPC answers."""
    from tritonclient.grpc import model_config_pb2

    return http_message(data, model_config_pb2.ModelConfig())


def http_model_metadata(data: dict):
    from tritonclient.grpc import service_pb2

    return http_message(data, service_pb2.ModelMetadataResponse())


class Session(ABC):
    """One client's connection(s) to the server, performing ``Call`` steps (sync)."""

    @abstractmethod
    def perform(self, call: Call) -> Any:
        """The reply of ``call``; a failure raised as ``InferenceServerException`` (gRPC status names)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""


class AsyncSession(ABC):
    """The asyncio counterpart of ``Session``, for one event loop."""

    @abstractmethod
    async def perform(self, call: Call) -> Any:
        """As ``Session.perform``."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection."""


class Protocol(ABC):
    name: ClassVar[str]
    label: ClassVar[str]  # as people write it in messages
    default_port: ClassVar[int]  # Triton's default port for it
    balances: ClassVar[bool]  # takes a target naming several replicas (ClientOptions.target) and spreads requests

    @classmethod
    def default_url(cls) -> str:
        return f"127.0.0.1:{cls.default_port}"

    @staticmethod
    @abstractmethod
    def tensors():
        """The tritonclient module whose ``InferInput`` / ``InferRequestedOutput`` this protocol sends."""

    @staticmethod
    @abstractmethod
    def connect(options: ClientOptions) -> Session:
        """A sync session (raises on a malformed endpoint or unreadable PEM file)."""

    @staticmethod
    @abstractmethod
    def connect_async(options: ClientOptions) -> AsyncSession:
        """An asyncio session; called inside the running loop."""

    @staticmethod
    @abstractmethod
    def model_config(reply: Any):
        """``get_model_config``'s reply as a ``model_config_pb2.ModelConfig``."""

    @staticmethod
    @abstractmethod
    def model_metadata(reply: Any):
        """``get_model_metadata``'s reply as a ``service_pb2.ModelMetadataResponse``."""

    @staticmethod
    @abstractmethod
    def output_tensor(result: Any, name: str) -> tuple[str, list[int]]:
        """Datatype and shape of output ``name`` in an infer result."""


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol")


# --------------------------------------------------------------------------------- gRPC


def _grpc_kwargs(call: Call) -> dict:
    kwargs = dict(call.kwargs)
    if "compression" in kwargs:
        kwargs["compression_algorithm"] = kwargs.pop("compression")
    return {**kwargs, "client_timeout": call.timeout}


class _GrpcSession(Session):
    def __init__(self, options: ClientOptions):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(**GrpcProtocol.connection(options))

    def perform(self, call: Call) -> Any:
        return getattr(self.client, call.method)(*call.args, **_grpc_kwargs(call))

    def close(self) -> None:
        self.client.close()


class _GrpcAsyncSession(AsyncSession):
    def __init__(self, options: ClientOptions):
        import tritonclient.grpc.aio as aioclient

        self.client = aioclient.InferenceServerClient(**GrpcProtocol.connection(options))

    async def perform(self, call: Call) -> Any:
        return await getattr(self.client, call.method)(*call.args, **_grpc_kwargs(call))

    async def close(self) -> None:
        await self.client.close()


# tritonclient's own channel defaults (replacing channel_args drops them, so they are repeated
# here), plus a reconnect backoff no longer than a second: gRPC's default grows to 120 s, which
# would make a retried call fail on the cached connection error long after the server is up.
_MAX_MESSAGE = 2**31 - 1
_KEEPALIVE = {
    "grpc.keepalive_time_ms": 2**31 - 1,
    "grpc.keepalive_timeout_ms": 20000,
    "grpc.keepalive_permit_without_calls": False,
    "grpc.http2.max_pings_without_data": 2,
}


# A target naming several replicas (``ipv4:A:P,B:P``, ``dns:///NAME:P``): gRPC's own round_robin
# policy keeps a subchannel (connection) to every address and sends each call to the next ready
# one; a replica that goes away leaves the rotation when its connection drops. Before that, a
# replica stopping gracefully (SIGTERM: up to 30 s letting requests in flight finish) still takes
# calls and answers them NOT_FOUND "... has no available versions" once its models are unloaded
# (measured, Triton 2.51), then UNAVAILABLE. Both are retried by gRPC after 50 ms, 100 ms, ... up
# to 4 more times, each on the next ready replica, within the call's deadline; NOT_FOUND is safe
# to retry (the request never ran) and a replica still loading a model also answers it, so the
# call moves on; a model no replica has costs ~0.75 s more before its error. gRPC only retries a
# request it still holds whole: its retry buffer is raised from 256 KiB (two photos overflow it)
# to RETRY_BUFFER per call; a larger request, or one failing 5 times, is left to the client's
# own ``retries``. A plain HOST:PORT keeps gRPC's defaults (pick_first, no retry policy): the
# client's retries alone.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "NOT_FOUND"],
}
RETRY_BUFFER = 64 << 20  # bytes of one request gRPC keeps to send it again


def balancing_channel_args(url: str) -> list[tuple[str, object]]:
    """The channel arguments that spread calls round-robin over the replicas ``url`` names and
    retry UNAVAILABLE on another one; none for a single HOST:PORT. Shared by ``tritongen perf``."""
    from .options import Target

    if not Target.parse(url).balanced:
        return []
    config = {"loadBalancingConfig": [{"round_robin": {}}],
              "methodConfig": [{"name": [{"service": "inference.GRPCInferenceService"}],
                                "retryPolicy": RETRY_POLICY}]}
    return [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER)]


@PROTOCOLS.register
class GrpcProtocol(Protocol):
    name, label, default_port, balances = "grpc", "gRPC", 8001, True

    @staticmethod
    def tensors():
        import tritonclient.grpc as grpcclient

        return grpcclient

    @staticmethod
    def connection(options: ClientOptions) -> dict:
        """Keyword arguments of ``tritonclient.grpc``'s ``InferenceServerClient`` (sync and aio alike)."""
        backoff_ms = int(min(max(options.retry_delay, 0.1), 1.0) * 1000)
        return {
            "url": options.url,
            "verbose": options.verbose,
            "ssl": options.tls,
            "root_certificates": None if options.root_certificates is None else str(options.root_certificates),
            "private_key": None if options.private_key is None else str(options.private_key),
            "certificate_chain": None if options.certificate_chain is None else str(options.certificate_chain),
            "channel_args": [
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                *_KEEPALIVE.items(),
                ("grpc.initial_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_reconnect_backoff_ms", 1000),
                *balancing_channel_args(options.url),
            ],
        }

    @staticmethod
    def connect(options: ClientOptions) -> Session:
        return _GrpcSession(options)

    @staticmethod
    def connect_async(options: ClientOptions) -> AsyncSession:
        return _GrpcAsyncSession(options)

    @staticmethod
    def model_config(reply: Any):
        return reply.config

    @staticmethod
    def model_metadata(reply: Any):
        return reply

    @staticmethod
    def output_tensor(result: Any, name: str) -> tuple[str, list[int]]:
        tensor = result.get_output(name)
        return tensor.datatype, [int(d) for d in tensor.shape]


# --------------------------------------------------------------------------------- HTTP


def _http_kwargs(call: Call) -> dict:
    kwargs = dict(call.kwargs)
    if "compression" in kwargs:
        kwargs["request_compression_algorithm"] = kwargs.pop("compression")
    return kwargs


def _http_error(exc: BaseException, url: str, timeout: float) -> BaseException:
    """An HTTP failure as the ``InferenceServerException`` gRPC would have raised."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = exc.status() or ""
        return InferenceServerException(exc.message() or str(exc), HTTP_STATUS_NAMES.get(status, status), exc.debug_details())
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return InferenceServerException(f"no answer within {timeout:g}s", "DEADLINE_EXCEEDED")
    if isinstance(exc, OSError):  # refused, reset, unreachable (geventhttpclient and aiohttp raise OSErrors)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return InferenceServerException(f"failed to connect to {url}: {reason}", "UNAVAILABLE")
    return exc


class _HttpSession(Session):
    """One ``tritonclient.http`` client per thread and per timeout (neither can be shared)."""

    def __init__(self, options: ClientOptions):
        self.options = options
        self.local = threading.local()
        self.lock = threading.Lock()
        self.clients: list = []
        self._client(options.timeout)  # a malformed endpoint fails here, when the session is made

    def _client(self, timeout: float):
        import tritonclient.http as httpclient

        clients = self.local.__dict__.setdefault("by_timeout", {})
        if timeout not in clients:
            client = httpclient.InferenceServerClient(
                self.options.url, verbose=self.options.verbose, connection_timeout=timeout, network_timeout=timeout,
                **HttpProtocol.tls(self.options))
            with self.lock:
                self.clients.append(client)
            clients[timeout] = client
        return clients[timeout]

    def perform(self, call: Call) -> Any:
        try:
            return getattr(self._client(call.timeout), call.method)(*call.args, **_http_kwargs(call))
        except Exception as exc:
            raise _http_error(exc, self.options.url, call.timeout) from None

    def close(self) -> None:
        with self.lock:
            clients, self.clients = self.clients, []
        for client in clients:
            client.close()


class _HttpAsyncSession(AsyncSession):
    """One ``tritonclient.http.aio`` client (an aiohttp session: many requests at once); each
    call's timeout is enforced here, aiohttp only has one for the whole session."""

    def __init__(self, options: ClientOptions):
        import tritonclient.http.aio as aioclient

        self.options = options
        self.client = aioclient.InferenceServerClient(options.url, verbose=options.verbose,
                                                      conn_timeout=max(options.timeout, 60.0),
                                                      **HttpProtocol.async_tls(options))

    async def perform(self, call: Call) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.client, call.method)(*call.args, **_http_kwargs(call)),
                                          call.timeout)
        except Exception as exc:
            raise _http_error(exc, self.options.url, call.timeout) from None

    async def close(self) -> None:
        await self.client.close()


@PROTOCOLS.register
class HttpProtocol(Protocol):
    """KServe v2 REST with Triton's binary tensor extension (tensors travel as raw bytes)."""

    name, label, default_port, balances = "http", "HTTP", 8000, False

    @staticmethod
    def tensors():
        import tritonclient.http as httpclient

        return httpclient

    @staticmethod
    def tls(options: ClientOptions) -> dict:
        """HTTPS through a TLS-terminating proxy (Triton's own HTTP endpoint has no TLS)."""
        if not options.tls:
            return {}
        files = {"ca_certs": options.root_certificates, "keyfile": options.private_key,
                 "certfile": options.certificate_chain}
        return {"ssl": True, "ssl_options": {k: str(v) for k, v in files.items() if v is not None}}

    @staticmethod
    def async_tls(options: ClientOptions) -> dict:
        if not options.tls:
            return {}
        import ssl

        context = ssl.create_default_context(cafile=None if options.root_certificates is None
                                             else str(options.root_certificates))
        if options.certificate_chain is not None:
            context.load_cert_chain(str(options.certificate_chain), str(options.private_key))
        return {"ssl": True, "ssl_context": context}

    @staticmethod
    def connect(options: ClientOptions) -> Session:
        return _HttpSession(options)

    @staticmethod
    def connect_async(options: ClientOptions) -> AsyncSession:
        return _HttpAsyncSession(options)

    @staticmethod
    def model_config(reply: Any):
        return http_model_config(reply)

    @staticmethod
    def model_metadata(reply: Any):
        return http_model_metadata(reply)

    @staticmethod
    def output_tensor(result: Any, name: str) -> tuple[str, list[int]]:
        tensor = result.get_output(name)
        return tensor["datatype"], [int(d) for d in tensor["shape"]]
