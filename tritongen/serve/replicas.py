"""Several tritonservers serving the same repository, for client-side load balancing.

Port layout: the three ports given (gRPC, HTTP, metrics) span a block ``[min, max]``; replica
``i`` gets every port shifted by ``i * (max - min + 1)``, so blocks never overlap. With the
defaults (HTTP 8000, gRPC 8001, metrics 8002) replica 0 is 8000-8002, replica 1 8003-8005, ...
gRPC clients balance over all of them with the target :attr:`ReplicaSet.grpc_target`
(``ipv4:127.0.0.1:8001,127.0.0.1:8004`` and the ``round_robin`` policy)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ServeError
from ..storage import RepositorySource, open_repository
from .server import TritonServer

MAX_PORT = 65535


def replica_ports(grpc_port: int, http_port: int, metrics_port: int, replicas: int) -> list[tuple[int, int, int]]:
    """``(grpc, http, metrics)`` of each replica (see the module's note on the layout)."""
    if replicas < 1:
        raise ServeError(f"--replicas {replicas}: at least 1")
    ports = (grpc_port, http_port, metrics_port)
    if len(set(ports)) < 3:
        raise ServeError(f"--grpc-port, --http-port and --metrics-port must differ (got {grpc_port}, {http_port}, {metrics_port})")
    stride = max(ports) - min(ports) + 1
    layout = [tuple(p + i * stride for p in ports) for i in range(replicas)]
    if max(layout[-1]) > MAX_PORT:
        raise ServeError(f"{replicas} replicas need ports up to {max(layout[-1])} (each replica shifts the ports by "
                         f"{stride}); choose lower or closer --grpc-port/--http-port/--metrics-port")
    return layout


def _log_file(log_file: Path | None, index: int, replicas: int) -> Path | None:
    if log_file is None or replicas == 1:
        return log_file
    return log_file.with_name(f"{log_file.stem}.{index}{log_file.suffix}")


@dataclass
class ReplicaSet:
    """``replicas`` copies of ``template`` (a not yet started :class:`TritonServer`): same
    repository (a storage URI is resolved once, so all serve the same published version), same
    settings, ports by :func:`replica_ports`, logs ``<log>.<i>.log``."""

    template: TritonServer
    replicas: int = 2
    servers: list[TritonServer] = field(default_factory=list, init=False)
    reported: set[int] = field(default_factory=set, init=False)  # replicas whose exit was already announced

    def __post_init__(self) -> None:
        t = self.template
        source = open_repository(t.repository)
        self.servers = [
            replace(t, repository=source, grpc_port=g, http_port=h, metrics_port=m,
                    log_file=_log_file(t.log_file, i, self.replicas), shm_prefix=f"{t.shm_prefix}r{i}_")
            for i, (g, h, m) in enumerate(replica_ports(t.grpc_port, t.http_port, t.metrics_port, self.replicas))
        ]

    @property
    def source(self) -> RepositorySource:
        return self.servers[0].repository

    @property
    def grpc_target(self) -> str:
        """One gRPC target for every replica (client-side round_robin balancing)."""
        return "ipv4:" + ",".join(s.grpc_url for s in self.servers)

    def start(self, timeout: float = 180.0) -> "ReplicaSet":
        """Start every replica, one after the other; if one fails, stop those started and raise."""
        try:
            for server in self.servers:
                server.start(timeout=timeout)
        except BaseException:
            self.stop(drain_timeout=0)
            raise
        return self

    def running(self) -> list[TritonServer]:
        return [s for s in self.servers if s.is_running()]

    def newly_exited(self) -> list[tuple[int, TritonServer]]:
        """Replicas that exited since the last call: ``(index, server)``, each reported once."""
        gone = [(i, s) for i, s in enumerate(self.servers)
                if s.process is not None and not s.is_running() and i not in self.reported]
        self.reported |= {i for i, _ in gone}
        return gone

    def stop(self, drain_timeout: float = 10.0) -> list[int | None]:
        """Drain every replica at once (in-flight requests finish on each within one
        ``drain_timeout``), then stop them all at once; the exit codes."""
        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            if drain_timeout > 0:
                list(pool.map(lambda s: s.drain(drain_timeout), self.running()))
            return list(pool.map(lambda s: s.stop(drain_timeout=0), self.servers))

    def __enter__(self) -> "ReplicaSet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
