"""How a client talks to Triton: protocol, endpoint, timeouts, retries, compression, TLS, shared memory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ClientError

COMPRESSIONS = ("none", "gzip", "deflate")
SHARED_MEMORY = ("none", "system")

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
    """

    url: str | None = None  # HOST:PORT; None: 127.0.0.1 and Triton's default port of the protocol
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
            raise ClientError(f"url must be HOST:PORT, got {self.url!r}")
        if "://" in self.url:
            raise ClientError(f"url is HOST:PORT, without a scheme (protocol={self.protocol!r} says how): {self.url!r}")
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
        if int(self.concurrency) != self.concurrency or self.concurrency < 1:
            raise ClientError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ClientError(f"{name}: no such file {path}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ClientError("private_key and certificate_chain go together (the client's key and certificate)")

    @property
    def tls(self) -> bool:
        return bool(self.ssl or self.root_certificates or self.private_key or self.certificate_chain)

    def retry_delays(self) -> Iterator[float]:
        """Seconds to wait before each retry: retry_delay, 2x, 4x, ... (``retries`` of them)."""
        return (self.retry_delay * 2**i for i in range(int(self.retries)))

    @property
    def compression_algorithm(self) -> str | None:
        return None if self.compression == "none" else self.compression
