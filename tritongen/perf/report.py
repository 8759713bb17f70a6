"""perf_analyzer's outputs: the console report, the CSV (same header and units), the profile export."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from .. import __version__
from .engines import ENGINES
from .inputs import ModelInfo
from .measure import PerfSettings, PerfStatus, ServerStats
from .metrics import CSV_COLUMNS as METRICS_CSV_COLUMNS
from .worker import SYNC_RATE_THREADS

_SERVER_COLUMNS = ["Network+Server Send/Recv", "Server Queue", "Server Compute Input", "Server Compute Infer",
                   "Server Compute Output"]


def _us(ns: float) -> int:
    return int(ns // 1000)


def _g(value: float) -> str:
    """A double the way C++ streams print it (6 significant digits), as perf_analyzer's CSV does."""
    return f"{value:g}"


def settings_text(settings: PerfSettings, workers: int, protocol: str = "grpc") -> str:
    lines = ["*** Measurement Settings ***", f"  Batch size: {settings.batch_size}", "  Service Kind: Triton"]
    if settings.measurement_mode == "time_windows":
        lines += ['  Using "time_windows" mode for stabilization',
                  f"  Measurement window: {settings.measurement_interval_ms} msec"]
    else:
        lines += ['  Using "count_windows" mode for stabilization',
                  f"  Minimum number of samples in each window: {settings.measurement_request_count}"]
    if settings.mode == "request_rate":
        lines.append(f"  Using {'uniform' if settings.distribution == 'constant' else 'poisson'} distribution on request generation")
    processes = f"{workers} load process{'es' if workers > 1 else ''}"
    if settings.sync:
        threads = "a thread per request in flight" if settings.mode == "concurrency" else f"{SYNC_RATE_THREADS} threads each"
        lines.append(f"  Using synchronous calls for inference ({processes}, {threads})")
    else:
        lines.append(f"  Using asynchronous calls for inference ({processes}, {ENGINES[protocol].completion})")
    if settings.shared_memory != "none":
        lines.append(f"  Using {settings.shared_memory} shared memory for inputs and outputs")
    lines.append(f"  Stabilizing using p{settings.percentile} latency" if settings.percentile
                 else "  Stabilizing using average latency")
    return "\n".join(lines) + "\n"


def _server_lines(stats: ServerStats, composing: list[str], all_stats: dict[str, ServerStats], depth: int = 1) -> list[str]:
    ident = " " * (2 * depth)
    n = stats.counts["success"]
    if n == 0:
        return [f"{ident}  Request count: 0"]
    cumm_us = stats.ns["success"] / n / 1000
    lines = [f"{ident}  Inference count: {stats.inference_count}", f"{ident}  Execution count: {stats.execution_count}",
             f"{ident}  Successful request count: {n}"]
    if not composing:
        queue, compute = stats.avg_us("queue"), stats.compute_us
        overhead = max(cumm_us - queue - compute, 0)
        lines.append(
            f"{ident}  Avg request latency: {int(cumm_us)} usec (overhead {int(overhead)} usec + queue {int(queue)} usec + "
            f"compute input {int(stats.avg_us('compute_input'))} usec + compute infer {int(stats.avg_us('compute_infer'))} "
            f"usec + compute output {int(stats.avg_us('compute_output'))} usec)"
        )
        return lines + [""]
    queue = sum(all_stats[m].avg_us("queue") for m in composing)
    compute = sum(all_stats[m].compute_us for m in composing)
    overhead = max(cumm_us - queue - compute, 0)
    lines += [f"{ident}  Avg request latency: {int(cumm_us)} usec (overhead {int(overhead)} usec + queue {int(queue)} usec "
              f"+ compute {int(compute)} usec)", "", f"{ident}Composing models: "]
    for name in composing:
        lines.append(f"{ident}{name}, version: ")
        lines += _server_lines(all_stats[name], [], all_stats, depth + 1)
    return lines


def level_text(status: PerfStatus) -> str:
    label = "Request concurrency" if status.mode == "concurrency" else "Request Rate"
    lines = [f"{label}: {status.value:g}", "  Client: ", f"    Request count: {status.request_count}"]
    if status.delayed_request_count:
        lines.append(f"    Delayed Request Count: {status.delayed_request_count}")
    lines.append(f"    Throughput: {_g(status.infer_per_sec)} infer/sec")
    if not status.percentile:
        lines.append(f"    Avg latency: {_us(status.avg_latency_ns)} usec (standard deviation {status.std_latency_us} usec)")
    lines += [f"    p{p} latency: {_us(ns)} usec" for p, ns in status.percentile_latency_ns.items()]
    request_us = _us(status.avg_send_ns + status.avg_wait_ns + status.avg_recv_ns)
    engine = ENGINES[status.protocol]  # perf_analyzer's wording per protocol: "Avg gRPC time" / "Avg HTTP time"
    lines.append(f"    Avg {engine.label} time: {request_us} usec ({engine.exchange_label} "
                 f"{_us(status.avg_send_ns + status.avg_recv_ns)} usec + response wait {_us(status.avg_wait_ns)} usec)")
    cpu = status.client_cpu_pct
    lines.append(f"    Load generator: {len(cpu)} process{'es' if len(cpu) > 1 else ''}, CPU "
                 + ", ".join(f"{c:.0f}%" for c in cpu) + " of one core"
                 + (f"; {status.achieved_concurrency:.2f} requests outstanding on average" if status.mode == "concurrency" else ""))
    lines.append("  Server: ")
    lines += _server_lines(status.model_stats, status.composing, status.server)
    if status.metrics is not None:
        lines += ["  Server Prometheus Metrics: ", *status.metrics.text_lines()]
    return "\n".join(lines) + "\n"


def summary_text(results: list[PerfStatus]) -> str:
    lines = ["Inferences/Second vs. Client " + ("p{} Batch Latency".format(results[0].percentile) if results and results[0].percentile
                                                else "Average Batch Latency")]
    for r in results:
        label = "Concurrency" if r.mode == "concurrency" else "Request Rate"
        lines.append(f"{label}: {r.value:g}, throughput: {_g(r.infer_per_sec)} infer/sec, latency "
                     f"{_us(r.stabilizing_latency_ns)} usec")
    return "\n".join(lines) + "\n"


def csv_header(mode: str, include_server: bool, cache: bool, percentiles: list[int], verbose: bool,
               stabilize_on_percentile: bool, metrics: bool = False) -> list[str]:
    header = ["Concurrency" if mode == "concurrency" else "Request Rate", "Inferences/Second", "Client Send"]
    if include_server:
        header += _SERVER_COLUMNS + (["Server Cache Hit", "Server Cache Miss"] if cache else [])
    header += ["Client Recv"] + [f"p{p} latency" for p in percentiles]
    if verbose:
        header += (["Avg latency"] if not stabilize_on_percentile else []) + ["request/response", "response wait"]
        if metrics:
            header += METRICS_CSV_COLUMNS
    return header


def write_csv(path: str | Path, results: list[PerfStatus], info: ModelInfo, verbose: bool = False) -> list[Path]:
    """perf_analyzer's ``-f`` file (rows by increasing throughput; µs as integers), plus one file per
    composing model of an ensemble, named ``<model>_v<version>.<file>`` beside it. Returns the files."""
    path = Path(path)
    if not results:
        return []
    first = results[0]
    header = csv_header(first.mode, True, info.response_cache, list(first.percentile_latency_ns), verbose,
                        bool(first.percentile), metrics=first.metrics is not None)
    ordered = sorted(results, key=lambda r: r.infer_per_sec)
    rows = []
    for r in ordered:
        parts = r.breakdown_us()
        client_wait_us = (r.avg_latency_ns - r.avg_send_ns - r.avg_recv_ns) / 1000
        network_us = max(client_wait_us - sum(parts.values()), 0)
        row = [f"{r.value:g}", _g(r.infer_per_sec), _us(r.avg_send_ns), int(network_us), *(int(v) for v in parts.values())]
        s = r.model_stats
        if info.response_cache:
            row += [int(s.avg_us("cache_hit")), int(s.avg_us("cache_miss"))]
        row += [_us(r.avg_recv_ns)] + [_us(ns) for ns in r.percentile_latency_ns.values()]
        if verbose:
            if not r.percentile:
                row.append(_us(r.avg_latency_ns))
            row += [_us(r.avg_send_ns + r.avg_recv_ns), _us(r.avg_wait_ns)]
            if r.metrics is not None:
                row += r.metrics.csv_values()
        rows.append(row)
    written = [_write_rows(path, header, rows)]
    composing_header = header[: header.index("Client Recv") + 1]
    for name in info.composing:
        sub_rows = []
        for r in ordered:
            s = r.server.get(name, ServerStats())
            ratio = s.counts["success"] / r.model_stats.counts["success"] if r.model_stats.counts["success"] else 0.0
            cumm = s.ns["success"] / s.counts["success"] / 1000 if s.counts["success"] else 0.0
            overhead = max(cumm - s.avg_us("queue") - s.compute_us, 0)
            sub = [f"{r.value:g}", _g(ratio * r.infer_per_sec), 0, int(overhead), int(s.avg_us("queue")),
                   int(s.avg_us("compute_input")), int(s.avg_us("compute_infer")), int(s.avg_us("compute_output"))]
            if info.response_cache:
                sub += [int(s.avg_us("cache_hit")), int(s.avg_us("cache_miss"))]
            sub_rows.append(sub + [0])
        written.append(_write_rows(path.with_name(f"{name}_v{info.version}.{path.name}"), composing_header, sub_rows))
    return written


def _write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def write_profile_export(path: str | Path, timeline: list[dict], info: ModelInfo, url: str) -> Path:
    """perf_analyzer's ``--profile-export-file`` layout: every request of every window, wall-clock ns."""
    path = Path(path)
    to_wall = time.time_ns() - time.monotonic_ns()
    experiments = []
    for level in timeline:
        requests, boundaries = [], []
        for w in level["windows"]:
            boundaries.append(w.start_ns + to_wall)
            for row in w.records:
                requests.append({"timestamp": int(row[0]) + to_wall, "sequence_id": 0,
                                 "response_timestamps": [int(row[1]) + to_wall]})
        if level["windows"]:
            boundaries.append(level["windows"][-1].end_ns + to_wall)
        experiments.append({"experiment": {"mode": level["mode"], "value": level["value"]},
                            "requests": requests, "window_boundaries": boundaries})
    doc = {"experiments": experiments, "version": f"tritongen {__version__}", "service_kind": "triton",
           "endpoint": url, "model": info.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
