"""How a client talks to Triton: protocol, endpoint, timeouts, retries, compression, TLS, shared memory."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ClientError

COMPRESSIONS = ("none", "gzip", "deflate")
SHARED_MEMORY = ("none", "system")

TARGET_FORMS = "HOST:PORT, ipv4:ADDR:PORT,ADDR:PORT,... , ipv6:[ADDR]:PORT,... or dns:///NAME:PORT"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/,\[\]]+):(\d{1,5})$")


def _addresses(version: int, example: str) -> Callable[[str, str], tuple[str, ...]]:
    """``ipv4:`` / ``ipv6:`` targets: comma-separated numeric addresses with ports (gRPC's naming
    syntax: no host names there, IPv6 as [ADDR]:PORT)."""

    def parse(url: str, body: str) -> tuple[str, ...]:
        addresses = tuple(a.strip() for a in body.split(","))
        for address in addresses:
            match = _HOST_PORT.match(address)
            try:
                ip = ipaddress.ip_address(match.group(1).strip("[]")) if match else None
            except ValueError:
                ip = None
            if ip is None or ip.version != version:
                raise ClientError(f"url {url!r}: {address!r} is not an IPv{version} ADDRESS:PORT; a gRPC target "
                                  f"lists them like ipv{version}:{example} (names go in dns:///NAME:PORT)")
        return addresses

    return parse


def _dns_name(url: str, body: str) -> tuple[str, ...]:
    """``dns:[//AUTHORITY/]NAME:PORT``: every address NAME resolves to is a replica."""
    name = body[2:].partition("/")[2] if body.startswith("//") else body
    if not _HOST_PORT.match(name):
        raise ClientError(f"url {url!r}: expected dns:///NAME:PORT (a port is required)")
    return (name,)


# gRPC name-resolver schemes a url may carry (https://github.com/grpc/grpc/blob/master/doc/naming.md):
# each turns the rest of the url into its address(es). Adding a scheme is adding an entry.
RESOLVERS: dict[str, Callable[[str, str], tuple[str, ...]]] = {
    "ipv4": _addresses(4, "127.0.0.1:8001,127.0.0.1:8011"),
    "ipv6": _addresses(6, "[::1]:8001,[::1]:8011"),
    "dns": _dns_name,
}


@dataclass(frozen=True)
class Target:
    """Where requests go: one HOST:PORT (``scheme`` None), or a gRPC target whose resolver yields
    several replicas (``ipv4:``/``ipv6:`` lists, a ``dns:`` name), balanced round-robin."""

    url: str
    scheme: str | None
    addresses: tuple[str, ...]

    @property
    def balanced(self) -> bool:
        return self.scheme is not None

    @classmethod
    def parse(cls, url: str) -> "Target":
        scheme, _, body = url.partition(":")
        if scheme in RESOLVERS:
            return cls(url, scheme, RESOLVERS[scheme](url, body))
        if "://" in url:
            raise ClientError(f"url is {TARGET_FORMS}, without a scheme such as grpc:// or http:// "
                              f"(the protocol says how to talk): {url!r}")
        return cls(url, None, (url,))


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings shared by the sync and asyncio clients.

    ``timeout`` bounds every inference and health RPC (seconds); reading the model's config and
    (un)registering shared memory get at least 5 s, so a call that timed out can still clean up
    its regions on the server. A call the server answers with UNAVAILABLE (not
    up yet, restarting, unreachable) or with what a model being reloaded after its backend
    process died answers (``plans._model_recovering``) is tried again ``retries`` times,
    ``retry_delay`` seconds after the first failure and twice as long after each next one; no
    other error is retried.
    ``compression`` compresses requests (``gzip``/``deflate``). TLS is on with ``ssl=True`` or
    any of the PEM files (paths). ``shared_memory="system"`` moves the images and the
    fixed-size outputs through POSIX shared memory (server on this host only).
    ``concurrency`` caps the requests one asyncio call keeps in flight. ``protocol``: ``grpc``
    or ``http`` (KServe v2 REST with binary tensors); both give the same answers.

    ``url`` is one server's HOST:PORT, or with gRPC a target naming several replicas of the same
    repository — ``ipv4:10.0.0.1:8001,10.0.0.2:8001`` or ``dns:///triton.svc:8001`` (every
    address the name resolves to): requests are spread over the replicas with gRPC's
    ``round_robin`` policy, and one failing because its replica is stopping or gone (UNAVAILABLE,
    or NOT_FOUND from a replica unloading its models) is tried again on another replica, by gRPC
    itself (``protocols.RETRY_POLICY``) and then by ``retries`` above. HTTP and shared
    memory need one server.
    """

    url: str | None = None  # HOST:PORT or a gRPC target (TARGET_FORMS); None: 127.0.0.1, the protocol's default port
    protocol: str = "grpc"
    timeout: float = 30.0
    retries: int = 3  # 0.5 + 1 + 2 s: a model reloaded after a crash answers again within them
    retry_delay: float = 0.5
    compression: str = "none"
    shared_memory: str = "none"
    ssl: bool = False
    root_certificates: str | Path | None = None
    private_key: str | Path | None = None
    certificate_chain: str | Path | None = None
    concurrency: int = 4
    verbose: bool = False

    def __post_init__(self) -> None:
        from .protocols import PROTOCOLS

        protocol = PROTOCOLS.lookup(self.protocol, ClientError)
        if self.url is None:
            object.__setattr__(self, "url", protocol.default_url())
        if not isinstance(self.url, str) or not self.url.strip():
            raise ClientError(f"url must be {TARGET_FORMS}, got {self.url!r}")
        target = Target.parse(self.url)
        if target.balanced and not protocol.balances:
            raise ClientError(f"url {self.url!r} names several replicas, which only gRPC balances: {protocol.label} "
                              f"takes one HOST:PORT (use protocol='grpc', or one replica's {protocol.label} address)")
        if not self.timeout or self.timeout <= 0:
            raise ClientError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if int(self.retries) != self.retries or self.retries < 0:
            raise ClientError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if self.retry_delay < 0:
            raise ClientError(f"retry_delay must be >= 0 seconds, got {self.retry_delay!r}")
        if self.compression not in COMPRESSIONS:
            raise ClientError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.shared_memory not in SHARED_MEMORY:
            raise ClientError(f"shared_memory must be one of {', '.join(SHARED_MEMORY)}, got {self.shared_memory!r}")
        if target.balanced and self.shared_memory != "none":
            raise ClientError(f"shared_memory={self.shared_memory!r} needs one server on this host, but url "
                              f"{self.url!r} spreads requests over several replicas")
        if int(self.concurrency) != self.concurrency or self.concurrency < 1:
            raise ClientError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ClientError(f"{name}: no such file {path}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ClientError("private_key and certificate_chain go together (the client's key and certificate)")

    @property
    def target(self) -> Target:
        return Target.parse(self.url)

    @property
    def tls(self) -> bool:
        return bool(self.ssl or self.root_certificates or self.private_key or self.certificate_chain)

    def retry_delays(self) -> Iterator[float]:
        """Seconds to wait before each retry: retry_delay, 2x, 4x, ... (``retries`` of them)."""
        return (self.retry_delay * 2**i for i in range(int(self.retries)))

    @property
    def compression_algorithm(self) -> str | None:
        return None if self.compression == "none" else self.compression
