"""``tritongen perf``: perf_analyzer's measurement method in Python, driven hard enough.

    run = run_perf("resnet", url="127.0.0.1:8001", settings=PerfSettings(levels=[1, 2, 4]), images="photos/")
    print(report.summary_text(run.results))

Inputs come from the model's metadata/config (inputs.py), inline or in shared memory (shm.py);
load from worker processes sending over gRPC or HTTP from completion callbacks or, with
``sync``, from a blocking thread per request in flight (engines.py, worker.py, load.py); windows,
stability and server statistics follow perf_analyzer (measure.py); outputs are its console
text, CSV and profile export (report.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import PerfError
from .inputs import ModelInfo, build_requests, inspect_model, parse_shapes
from .load import LoadManager
from .measure import PerfSettings, PerfStatus, Profiler
from .engines import GrpcTls
from .shm import SHARED_MEMORY
from .worker import WorkerSpec

__all__ = ["run_perf", "PerfRun", "PerfSettings", "PerfStatus", "PerfError", "GrpcTls", "parse_range", "parse_shapes",
           "default_workers"]

CONCURRENCY_PER_WORKER = 2  # outstanding requests per load process before another process helps (benchmarks/perf_client.py)
RATE_PER_WORKER = 1500.0  # requests/s one process sends on schedule (measured: benchmarks/perf_client.py)


@dataclass
class PerfRun:
    info: ModelInfo
    settings: PerfSettings
    results: list[PerfStatus]
    workers: int
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stable(self) -> bool:
        return bool(self.results) and all(r.stable for r in self.results)


def parse_range(text: str, kind: type = int) -> list:
    """perf_analyzer's ``start:end:step`` (end and step optional) -> the levels."""
    parts = text.split(":")
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise PerfError(f"range {text!r}: expected start[:end[:step]] with {kind.__name__} values") from None
    if not 1 <= len(values) <= 3 or any(v <= 0 for v in values):
        raise PerfError(f"range {text!r}: expected start[:end[:step]], all positive")
    start = values[0]
    end = values[1] if len(values) > 1 else start
    step = values[2] if len(values) > 2 else kind(1)
    if end < start:
        raise PerfError(f"range {text!r}: end is below start")
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    if count > 1000:
        raise PerfError(f"range {text!r}: {count} levels; use a larger step")
    return [kind(start + i * step) if kind is int else round(start + i * step, 6) for i in range(count)]


def default_workers(settings: PerfSettings) -> int:
    """Enough processes that Python is not the limit, no more than the machine has cores."""
    peak = max(settings.levels)
    needed = peak / CONCURRENCY_PER_WORKER if settings.mode == "concurrency" else peak / RATE_PER_WORKER
    return max(1, min(os.cpu_count() or 1, math.ceil(needed), int(peak) if settings.mode == "concurrency" else 10**6))


def _connect(url: str, model: str, timeout_s: float, protocol: str = "grpc", version: str = "", tls=None):
    from tritonclient.utils import InferenceServerException

    from .engines import ENGINES

    engine = ENGINES.lookup(protocol, PerfError)
    try:
        client = engine.control_client(url, timeout_s, tls)
    except Exception as exc:  # malformed URL
        raise PerfError(f"cannot create a {protocol} client for {url!r}: {exc}") from None
    try:
        if not client.is_server_live(client_timeout=timeout_s):
            raise PerfError(f"Triton at {url} is not live")
        if not client.is_model_ready(model, version, client_timeout=timeout_s):
            names = sorted(m.name for m in client.get_model_repository_index(client_timeout=timeout_s).models)
            shown = f"model {model!r}" + (f" version {version}" if version else "")
            raise PerfError(f"{shown} is not ready on {url} (models: {', '.join(names) or 'none'})")
        return client
    except InferenceServerException as exc:  # worded like the client SDK's errors
        from ..client.options import ClientOptions
        from ..client.plans import translate

        client.close()
        options = ClientOptions(url=url, timeout=timeout_s, ssl=tls is not None)
        raise PerfError(str(translate(exc, url, options)[0])) from None
    except PerfError:
        client.close()
        raise
    except Exception as exc:  # the HTTP client's connection errors
        client.close()
        raise PerfError(f"cannot reach Triton at {url} over {protocol}: is the server running, and is this its "
                        f"{protocol} port? ({exc})") from None


def _check_target(url: str, protocol: str, shared_memory: str) -> None:
    """A url naming several replicas (``ipv4:A:P,B:P``, ``dns:///NAME:P``) takes gRPC and no shared
    memory, as in the client SDK (same words)."""
    from ..client.options import ClientOptions
    from ..errors import ClientError

    try:
        options = ClientOptions(url=url, protocol=protocol)
    except ClientError as exc:
        raise PerfError(f"-u {url}: {exc}") from None
    if options.target.balanced and shared_memory != "none":
        raise PerfError(f"--shared-memory {shared_memory} needs one server on this host, but -u {url} spreads "
                        f"requests over several replicas")


def run_perf(
    model: str,
    url: str = "127.0.0.1:8001",
    settings: PerfSettings | None = None,
    input_data: str = "random",
    shapes: dict[str, list[int]] | None = None,
    images: str | Path | None = None,
    workers: int | None = None,
    compression: str | None = None,
    on_window: Callable[[dict[str, Any]], None] = lambda event: None,
    protocol: str = "grpc",
    version: str = "",
    headers: dict[str, str] | None = None,
    tls: GrpcTls | None = None,
) -> PerfRun:
    """``protocol``: ``grpc`` or ``http`` (KServe v2 REST with binary tensors), for the load and the
    control calls alike; ``url`` is that protocol's HOST:PORT, or with gRPC a target naming several
    replicas (``ipv4:A:P,B:P``, ``dns:///NAME:P``): the load is spread round-robin over them, the
    control calls and server statistics come from one of them. ``version``: the model version (""
    = the server's choice), ``headers``: added to every inference request, ``tls``: a TLS gRPC
    channel (perf_analyzer's ``-x``, ``-H``, ``--ssl-grpc-*``). ``settings.sync`` and
    ``settings.shared_memory`` choose perf_analyzer's ``--sync``/``--async`` and ``--shared-memory``;
    shared-memory regions live exactly as long as this call, whatever ends it."""
    settings = settings or PerfSettings()
    settings.validate()
    if compression not in (None, "gzip", "deflate"):
        raise PerfError(f"--compression {compression!r}: choose none, gzip or deflate")
    if tls is not None and protocol != "grpc":
        raise PerfError("--ssl-grpc-* options apply to -i grpc")
    _check_target(url, protocol, settings.shared_memory)
    client = _connect(url, model, settings.timeout_s, protocol, version, tls)
    try:
        from tritonclient.utils import InferenceServerException

        try:
            info = inspect_model(client, model, version)
        except InferenceServerException as exc:
            raise PerfError(f"model {model!r}: {exc.message()}") from None
        requests = build_requests(info, settings.batch_size, input_data, shapes, images)
        n_workers = workers or default_workers(settings)
        with SHARED_MEMORY.lookup(settings.shared_memory, PerfError)(settings.output_shared_memory_size) as shm:
            layout = shm.setup(client, url, info, requests, settings.batch_size)
            spec = WorkerSpec(index=0, workers=n_workers, url=url, model=model, version=version, requests=requests,
                              datatypes={t.name: t.datatype for t in info.inputs}, outputs=[t.name for t in info.outputs],
                              timeout_s=settings.timeout_s, compression=compression, protocol=protocol,
                              headers=tuple((headers or {}).items()), tls=tls, sync=settings.sync, shm=layout)
            try:
                with LoadManager(spec, n_workers) as manager:  # the workers stop before the regions go
                    profiler = Profiler(settings, info, manager, client, on_window, protocol)
                    results = profiler.sweep()
            except PerfError as exc:
                raise PerfError(shm.explain(str(exc))) from None
        return PerfRun(info, settings, results, n_workers, profiler.timeline)
    finally:
        client.close()
