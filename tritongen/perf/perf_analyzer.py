"""NVIDIA's C++ perf_analyzer: found in this environment, run against a served model, its CSV read.

``tritonclient==2.51.0`` (the served tritonserver's version) ships ``perf_analyzer`` in its wheel,
so pip puts it in the environment's ``bin/``. It links ``libcudart.so.12`` (the
``nvidia-cuda-runtime-cu12`` wheel: its ``lib/`` directory goes on ``LD_LIBRARY_PATH`` here, nobody
exports anything) and ``libb64.so.0d`` (Debian's ``libb64-0d``). ``scripts/setup.sh`` installs
all three.

    analyzer = find_perf_analyzer()          # None when missing; perf_analyzer_problem() says why
    result = run_perf_analyzer("demo", "127.0.0.1:8001", concurrency=[1, 2], images=["cat.jpg"])
    for level in result.levels:
        print(level.concurrency, level.throughput, level.p50_ms, level.p99_ms)

Encoded images for a BYTES input (a tritongen ensemble's ``IMAGE``) travel in perf_analyzer's
``--input-data`` JSON: ``{"data": [{"IMAGE": {"b64": base64(<uint32 LE length> + bytes),
"shape": [1]}}, ...]}`` — Triton's serialized BYTES tensor, one element.
"""
from __future__ import annotations

import base64
import csv
import functools
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import PerfError
from ..residue import owned_temp_dir

BINARY = "perf_analyzer"
CUDA_RUNTIME_PACKAGE = "nvidia.cuda_runtime"  # the nvidia-cuda-runtime-cu12 wheel's package
CUDART = "libcudart.so.12"
# What to do when a shared library is missing (perf_analyzer's loader names the file).
LIBRARY_FIXES = {
    "libb64.so.0d": "install Debian's libb64-0d (apt-get install libb64-0d; bash scripts/setup.sh does)",
    CUDART: "pip install nvidia-cuda-runtime-cu12 (bash scripts/setup.sh does)",
}
UNSTABLE_EXIT = 2  # perf_analyzer's exit code when a level does not stabilise (no CSV is written)
_SERVER_FIELDS = {"queue_us": "Server Queue", "compute_input_us": "Server Compute Input",
                  "compute_infer_us": "Server Compute Infer", "compute_output_us": "Server Compute Output"}


# ------------------------------------------------------------------------------ finding it


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and what it needs to start: ``library_dirs`` go first on ``LD_LIBRARY_PATH``."""

    binary: Path
    version: str
    library_dirs: tuple[Path, ...] = ()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, self.library_dirs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return env

    def command(self, *args: str) -> list[str]:
        return [str(self.binary), *args]

    def shell_prefix(self) -> str:
        """How to run it by hand: ``LD_LIBRARY_PATH=... /path/perf_analyzer``."""
        dirs = os.pathsep.join(map(str, self.library_dirs))
        return f"LD_LIBRARY_PATH={dirs} {self.binary}" if dirs else str(self.binary)


def cuda_runtime_lib_dir() -> Path | None:
    """``.../site-packages/nvidia/cuda_runtime/lib`` of the installed nvidia-cuda-runtime-cu12 wheel."""
    try:
        spec = importlib.util.find_spec(CUDA_RUNTIME_PACKAGE)
    except (ImportError, ValueError):  # "nvidia" missing altogether
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(root) / "lib"
        if (lib / CUDART).exists():
            return lib
    return None


def _binary_candidates() -> list[Path]:
    found = [Path(sysconfig.get_path("scripts")) / BINARY, Path(sys.executable).parent / BINARY]
    on_path = shutil.which(BINARY)
    return found + ([Path(on_path)] if on_path else [])


@functools.lru_cache(maxsize=1)
def _locate() -> tuple[PerfAnalyzer | None, str]:
    binary = next((p for p in _binary_candidates() if p.is_file() and os.access(p, os.X_OK)), None)
    if binary is None:
        return None, (f"{BINARY} is not installed: it comes in the tritonclient wheel "
                      "(pip install 'tritonclient[grpc,http]==2.51.0'; bash scripts/setup.sh does)")
    lib = cuda_runtime_lib_dir()
    analyzer = PerfAnalyzer(binary, "", (lib,) if lib else ())
    try:
        proc = subprocess.run(analyzer.command("--version"), capture_output=True, text=True, timeout=30,
                              env=analyzer.env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{binary} does not run: {exc}"
    text = proc.stdout + proc.stderr
    missing = re.search(r"error while loading shared libraries: ([^:\s]+)", text)
    if missing:
        name = missing.group(1)
        return None, f"{binary} cannot load {name}: {LIBRARY_FIXES.get(name, 'install the library that provides it')}"
    version = re.search(r"Perf Analyzer Version (\S+)", text)
    if proc.returncode != 0 or not version:
        return None, f"{binary} --version failed (exit {proc.returncode}): {text.strip()[-300:]}"
    return PerfAnalyzer(binary, version.group(1), analyzer.library_dirs), ""


def find_perf_analyzer() -> PerfAnalyzer | None:
    """perf_analyzer, checked to start (``--version``) with the libraries it needs; None when it cannot."""
    return _locate()[0]


def perf_analyzer_problem() -> str | None:
    """Why :func:`find_perf_analyzer` found nothing usable (one sentence with the fix), or None."""
    analyzer, reason = _locate()
    return None if analyzer else reason


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ServerStep:
    """One composing model's share of a level (per request, µs), from its ``<model>_v<N>.<csv>``."""

    model: str
    throughput: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us


@dataclass(frozen=True)
class PerfAnalyzerLevel:
    """One row of perf_analyzer's ``-f`` CSV (its µs turned into ms where the name says so)."""

    concurrency: int
    throughput: float  # infer/s
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float | None  # only with --verbose-csv
    client_send_us: float
    network_us: float  # "Network+Server Send/Recv"
    client_recv_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    steps: tuple[ServerStep, ...] = ()  # an ensemble's composing models

    @property
    def server_queue_us(self) -> float:
        """Queueing inside the server: an ensemble's is its composing models' (its own row says ~0)."""
        return sum(s.queue_us for s in self.steps) if self.steps else self.queue_us

    @property
    def server_compute_us(self) -> float:
        if self.steps:
            return sum(s.compute_us for s in self.steps)
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us


@dataclass
class PerfAnalyzerResult:
    model: str
    url: str
    version: str
    levels: list[PerfAnalyzerLevel] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)  # concurrency -> why it has no row (e.g. unstable)
    commands: list[list[str]] = field(default_factory=list)
    output: str = ""  # perf_analyzer's console report(s)

    def level(self, concurrency: int) -> PerfAnalyzerLevel | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(row: dict[str, str], key: str, default: float = 0.0) -> float:
    value = row.get(key)
    return float(value) if value not in (None, "") else default


def parse_csv(path: str | Path) -> list[PerfAnalyzerLevel]:
    """perf_analyzer's ``-f`` CSV (concurrency mode) plus the ``<model>_v<N>.<name>`` files it writes
    beside it for an ensemble's composing models; levels by increasing concurrency."""
    path = Path(path)
    rows = _rows(path)
    if rows and "Concurrency" not in rows[0]:
        raise PerfError(f"{path}: not a concurrency-mode perf_analyzer CSV (columns {list(rows[0])})")
    steps: dict[int, list[ServerStep]] = {}
    pattern = re.compile(rf"^(?P<model>.+)_v\d+\.{re.escape(path.name)}$")
    for sub in sorted(path.parent.iterdir()):
        match = pattern.match(sub.name)
        if not match:
            continue
        for row in _rows(sub):
            steps.setdefault(int(float(row["Concurrency"])), []).append(ServerStep(
                match["model"], _num(row, "Inferences/Second"),
                **{name: _num(row, column) for name, column in _SERVER_FIELDS.items()}))
    levels = []
    for row in rows:
        concurrency = int(float(row["Concurrency"]))
        levels.append(PerfAnalyzerLevel(
            concurrency=concurrency, throughput=_num(row, "Inferences/Second"),
            **{f"p{p}_ms": _num(row, f"p{p} latency") / 1000 for p in (50, 90, 95, 99)},
            avg_ms=_num(row, "Avg latency") / 1000 if row.get("Avg latency") else None,
            client_send_us=_num(row, "Client Send"), network_us=_num(row, "Network+Server Send/Recv"),
            client_recv_us=_num(row, "Client Recv"),
            **{name: _num(row, column) for name, column in _SERVER_FIELDS.items()},
            steps=tuple(steps.get(concurrency, ())),
        ))
    return sorted(levels, key=lambda lv: lv.concurrency)


# ------------------------------------------------------------------------------ running it


def _serialized_bytes(data: bytes) -> bytes:
    """One element of Triton's BYTES tensor wire format: uint32 little-endian length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def write_image_input_data(path: str | Path, input_name: str, images: Sequence[bytes | str | Path]) -> Path:
    """perf_analyzer's ``--input-data`` JSON sending each encoded image (one per request, in turn)."""
    if not images:
        raise PerfError("no images to send")
    data = []
    for image in images:
        raw = image if isinstance(image, bytes) else Path(image).read_bytes()
        data.append({input_name: {"b64": base64.b64encode(_serialized_bytes(raw)).decode("ascii"), "shape": [1]}})
    path = Path(path)
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


def _image_list(images: Sequence[bytes | str | Path] | str | Path) -> list[bytes | str | Path]:
    if isinstance(images, (str, Path)):
        from .inputs import _images

        return list(_images(Path(images)))
    return list(images)


def bytes_input(url: str, model: str, protocol: str = "grpc", timeout_s: float = 30.0) -> str:
    """The name of ``model``'s one BYTES input (where encoded images go), from the server's metadata."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client_module

            with client_module.InferenceServerClient(url) as client:
                inputs = [(t.name, t.datatype) for t in client.get_model_metadata(model, client_timeout=timeout_s).inputs]
        else:
            import tritonclient.http as client_module

            client = client_module.InferenceServerClient(url, network_timeout=timeout_s)
            try:
                inputs = [(t["name"], t["datatype"]) for t in client.get_model_metadata(model)["inputs"]]
            finally:
                client.close()
    except Exception as exc:  # tritonclient's InferenceServerException, connection errors
        raise PerfError(f"cannot read model {model!r}'s inputs from {url}: {exc}") from None
    names = [name for name, datatype in inputs if datatype == "BYTES"]
    if len(names) != 1 or len(inputs) != 1:
        raise PerfError(f"images need a model with one BYTES input; {model!r} takes {inputs}")
    return names[0]


def run_perf_analyzer(
    model: str,
    url: str = "127.0.0.1:8001",
    concurrency: int | Sequence[int] = 1,
    *,
    images: Sequence[bytes | str | Path] | str | Path | None = None,
    input_data: str | Path | None = None,
    input_name: str | None = None,
    measurement_interval_ms: int = 1000,
    stability_percentage: float = 10.0,
    max_trials: int = 10,
    batch_size: int = 1,
    protocol: str = "grpc",
    percentile: int | None = None,
    work_dir: str | Path | None = None,
    timeout_s: float = 300.0,
    analyzer: PerfAnalyzer | None = None,
    extra_args: Sequence[str] = (),
    sync: bool | None = None,
    shared_memory: str = "none",
    output_shared_memory_size: int | None = None,
) -> PerfAnalyzerResult:
    """Load ``model`` at each concurrency with perf_analyzer and read its CSV.

    One perf_analyzer process per level, so a level that does not stabilise (perf_analyzer then
    exits 2 and writes nothing) is listed in ``failures`` and the others still count. ``images``
    (encoded files, bytes, or a directory) go to the model's BYTES input; otherwise
    ``input_data`` (``random``, ``zero`` or a JSON file) is passed through. Errors that concern
    every level (unknown model, server down) raise :class:`PerfError`. ``sync``: ``--sync`` (True) or
    ``--async`` (False); None leaves perf_analyzer's default (sync for models without sequence
    batching). ``shared_memory`` / ``output_shared_memory_size``: its ``--shared-memory`` and
    ``--output-shared-memory-size``."""
    analyzer = analyzer or find_perf_analyzer()
    if analyzer is None:
        raise PerfError(f"perf_analyzer is not available: {perf_analyzer_problem()}")
    if protocol not in ("grpc", "http"):
        raise PerfError(f"protocol {protocol!r}: choose grpc or http")
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    if not levels or any(int(c) != c or c < 1 for c in levels):
        raise PerfError(f"concurrency levels must be whole numbers >= 1, got {levels}")
    if images is not None and input_data is not None:
        raise PerfError("give images or input_data, not both")
    with owned_temp_dir("tritongen-pa-") as tmp:
        work = (Path(work_dir) if work_dir is not None else Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        data_arg = None
        if input_data is not None:  # a file is read from each level's directory
            data_arg = str(input_data) if str(input_data) in ("random", "zero") else str(Path(input_data).resolve())
        if images is not None:
            name = input_name or bytes_input(url, model, protocol)
            data_arg = str(write_image_input_data(work / "input_data.json", name, _image_list(images)))
        base = ["-m", model, "-u", url, "-i", protocol, "-b", str(batch_size), "-p", str(measurement_interval_ms),
                "-s", f"{stability_percentage:g}", "-r", str(max_trials), "--verbose-csv"]
        if data_arg is not None:
            base += ["--input-data", data_arg]
        if percentile is not None:
            base += ["--percentile", str(percentile)]
        if sync is not None:
            base.append("--sync" if sync else "--async")
        if shared_memory != "none":
            base += ["--shared-memory", shared_memory]
        if output_shared_memory_size is not None:
            base += ["--output-shared-memory-size", str(output_shared_memory_size)]
        result = PerfAnalyzerResult(model, url, analyzer.version)
        outputs = []
        for level in levels:
            level_dir = work / f"c{level}"
            level_dir.mkdir(exist_ok=True)
            csv_path = level_dir / "perf_analyzer.csv"
            # A bare file name, run in its directory: perf_analyzer names an ensemble's composing-model
            # files "<model>_v<N>." + the -f argument, so a path with directories would lose them.
            cmd = analyzer.command(*base, "--concurrency-range", str(level), "-f", csv_path.name, *extra_args)
            result.commands.append(cmd)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=analyzer.env(),
                                      cwd=level_dir)
            except subprocess.TimeoutExpired:
                raise PerfError(f"perf_analyzer did not finish within {timeout_s:g}s at concurrency {level}") from None
            text = proc.stdout + proc.stderr
            outputs.append(text)
            if proc.returncode == 0 and csv_path.exists():
                result.levels += parse_csv(csv_path)
            elif proc.returncode == UNSTABLE_EXIT and "stable measurement" in text:
                result.failures[level] = (f"no stable measurement within {max_trials} windows of "
                                          f"{measurement_interval_ms} ms (±{stability_percentage:g}%)")
            else:
                raise PerfError(f"perf_analyzer failed at concurrency {level} (exit {proc.returncode}): "
                                f"{_error_line(text)}")
        result.output = "\n".join(outputs)
    return result


def _error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "failed"))]
    return (errors or lines or ["no output"])[-1][:500]
