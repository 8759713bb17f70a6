"""``tritongen bench serving``: what serving costs, in-process vs Triton, measured side by side in one run.

For each image model of a repository (built here from an export, or given):

1. **End-to-end at concurrency 1.** The in-process pipeline — :class:`tritongen.predict.LocalPredictor`'s
   path (decode, preprocess, runtime, postprocess, typed results) on the repository's own artifacts
   (``pipeline.json``, ``runtime.json`` and the model files the server loads, so the same runtime:
   ONNX Runtime for python-onnxruntime, Paddle Inference for python-paddle) — and the served model
   through the tritongen gRPC client, on the same images, runs interleaved (A, B, B, A, ...) so
   that load on a noisy machine hits both alike; median and p90.
2. **Where the served time goes.** Triton's statistics extension over exactly those served runs:
   per composing model (or the one model of a fused layout) queue, compute input / infer /
   output per request.
3. **Throughput under load.** ``tritongen perf`` (:func:`tritongen.perf.run_perf`) at concurrency
   1 … 2 × cores, and NVIDIA's C++ perf_analyzer (:mod:`tritongen.perf.perf_analyzer`) at the same
   levels when it is installed; both tools' numbers are reported.

    report = bench_serving("demo/colour_classifier", name="demo", runs=30)
    print("\\n".join(report.lines()))
    report.write_csv("serving.csv"); report.plot("serving.png")
"""
from __future__ import annotations

import csv
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from ..emit.pbtxt import read_configs
from ..errors import PerfError, TritongenError
from ..measure import CpuInfo, Latency, cpu_info, interleaved_latency, usable_cores
from ..predict import LocalPredictor
from ..residue import owned_temp_dir

DEFAULT_IMAGE_COUNT = 8
DEFAULT_IMAGE_HW = (480, 640)  # VGA photos: what a camera or an upload typically sends
RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime", "paddle": "Paddle Inference"}
STAT_KINDS = ("queue", "compute_input", "compute_infer", "compute_output")
IN_PROCESS, SERVED, SERVER_STEP, LOAD = "in-process", "served", "server step", "load"
TRITONGEN_PERF, PERF_ANALYZER = "tritongen perf", "perf_analyzer"
CSV_COLUMNS = (
    "model", "layout", "backend", "runtime", "measurement", "tool", "concurrency", "requests",
    "throughput_infer_per_s", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
    "step", "queue_us", "compute_input_us", "compute_infer_us", "compute_output_us", "compute_us",
    "server_request_us", "stable", "cpu", "isa", "note",
)


def default_concurrency(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to 2 × cores (2 × cores included)."""
    cores = cores or usable_cores()
    levels, c = [], 1
    while c < 2 * cores:
        levels.append(c)
        c *= 2
    return levels + [2 * cores]


# ------------------------------------------------------------------------------ the repository's models


@dataclass(frozen=True)
class ServedModel:
    """One image model of a repository and where its pipeline's files are."""

    name: str
    layout: str  # "ensemble" for an ensemble, else the build's layout (tritongen_build.json) or "single"
    backend: str  # tritongen backend (tritongen_build.json), e.g. python-onnxruntime
    composing: tuple[str, ...]  # an ensemble's models, in step order (recursively)
    pipeline_file: Path  # pipeline.json: decode/preprocess/postprocess settings
    runtime_dir: Path  # the version directory holding runtime.json and the network files
    runtime: str  # the runner runtime.json names: onnxruntime | paddle

    @property
    def steps(self) -> tuple[str, ...]:
        """The models whose statistics make up a request: the composing ones, or the model itself."""
        return self.composing or (self.name,)


def _version_dir(model_dir: Path) -> Path | None:
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return versions[-1] if versions else None


def _composing(name: str, configs: dict[str, Any]) -> list[str]:
    order, pending = [], [s.model_name for s in configs[name].ensemble_scheduling.step]
    while pending:
        step = pending.pop(0)
        if step in order or step not in configs:
            continue
        order.append(step)
        pending.extend(s.model_name for s in configs[step].ensemble_scheduling.step)
    return order


def repository_models(repository: str | Path, names: Sequence[str] = ()) -> list[ServedModel]:
    """The image models of ``repository`` (``names``, or every model that takes one encoded image
    and is no ensemble's step), with the files their pipeline runs from."""
    repository = Path(repository)
    configs = read_configs(repository)
    if not configs:
        raise TritongenError(f"{repository}: no models (expected <model>/config.pbtxt)")
    steps = {s for name in configs for s in _composing(name, configs)}
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise TritongenError(f"{repository} has no model {', '.join(map(repr, unknown))} (models: {', '.join(configs)})")

    def takes_image(config) -> bool:
        return len(config.input) == 1 and config.input[0].data_type == 13  # TYPE_STRING

    chosen = list(names) or [n for n, c in configs.items() if n not in steps and takes_image(c)]
    if not chosen:
        raise TritongenError(f"{repository}: no model takes an encoded image (models: {', '.join(configs)})")
    models = []
    for name in chosen:
        config = configs[name]
        composing = _composing(name, configs) if config.platform == "ensemble" else []
        info_file = repository / name / "tritongen_build.json"
        info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {}
        pipeline = runtime = None
        for model in [name, *composing]:
            version = _version_dir(repository / model)
            if version is None:
                continue
            if pipeline is None and (version / "pipeline.json").exists():
                pipeline = version / "pipeline.json"
            if runtime is None and (version / "runtime.json").exists():
                runtime = version
        if pipeline is None or runtime is None or not takes_image(config):
            raise TritongenError(f"model {name!r} in {repository} is not a tritongen image model "
                                 "(no encoded-image input, pipeline.json or runtime.json)")
        layout = "ensemble" if config.platform == "ensemble" else str(info.get("layout", "single"))
        runner = json.loads((runtime / "runtime.json").read_text(encoding="utf-8"))["runtime"]
        models.append(ServedModel(name, layout, str(info.get("backend") or f"python-{runner}"), tuple(composing),
                                  pipeline, runtime, runner))
    return models


class RepositoryPredictor(LocalPredictor):
    """:class:`LocalPredictor`'s pipeline (its ``predict``) on a repository's own artifacts: the
    ``pipeline.json`` its Python models read and the runner ``runtime.json`` names, with the
    model files and thread count the server loads."""

    def __init__(self, model: ServedModel):  # noqa: super().__init__ builds from a ModelSpec instead
        from ..processing.pipeline import PipelineConfig, Preprocessor, postprocessor
        from ..processing.runners import Network
        from ..tasks import task_named

        self.config = config = PipelineConfig.load(model.pipeline_file)
        self.preprocess = Preprocessor(config)
        self.postprocess = postprocessor(config)
        self.runner = Network(model.runtime_dir)  # the runner and in-graph NMS handling the served model runs
        self.spec = SimpleNamespace(task_kind=task_named(config.task))  # predict() decodes with it


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class StepTime:
    """One model's server-side time per request (µs), from Triton's statistics."""

    model: str
    requests: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def total_us(self) -> float:
        return self.queue_us + self.compute_input_us + self.compute_infer_us + self.compute_output_us


@dataclass(frozen=True)
class LoadLevel:
    """Served throughput and latency at one concurrency, from one load tool."""

    tool: str
    concurrency: int
    throughput: float | None  # infer/s; None: no result (see note)
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    queue_us: float | None = None  # server side per request, summed over the steps
    compute_us: float | None = None
    stable: bool = True
    note: str = ""


@dataclass
class ModelBench:
    model: ServedModel
    in_process: Latency
    served: Latency
    steps: list[StepTime]
    load: list[LoadLevel]
    notes: list[str] = field(default_factory=list)
    server_request_us: float | None = None  # the served model's own request time inside Triton (its "success")

    @property
    def ratio(self) -> float:
        """Served median ÷ in-process median (end to end, concurrency 1)."""
        return self.served.median_ms / self.in_process.median_ms

    def tool_levels(self, tool: str) -> list[LoadLevel]:
        return sorted((lv for lv in self.load if lv.tool == tool), key=lambda lv: lv.concurrency)


@dataclass
class ServingReport:
    repository: Path
    cpu: CpuInfo
    cores: int
    images: str  # where the images came from
    image_count: int
    runs: int
    concurrency: list[int]
    models: list[ModelBench]
    perf_analyzer: str | None  # "perf_analyzer 2.51.0 (path)" when used
    perf_analyzer_note: str | None  # why it was not used
    files: list[Path] = field(default_factory=list)

    # ---------------------------------------------------------------- console

    def lines(self) -> list[str]:
        out = [f"CPU: {self.cpu.model}; ISA: {self.cpu.isa}; {self.cores} cores (server, client and in-process "
               "runs share them)",
               f"images: {self.image_count} from {self.images}; 1 image per request; {self.runs} interleaved runs "
               "in-process / served",
               f"load tools: {TRITONGEN_PERF}" + (f" and {self.perf_analyzer}" if self.perf_analyzer else
                                                  f" (perf_analyzer not used: {self.perf_analyzer_note})")]
        for bench in self.models:
            m = bench.model
            runtime = RUNTIME_LABELS.get(m.runtime, m.runtime)
            out += ["", f"{m.name} ({m.layout}, {m.backend}: {runtime})",
                    "  end to end, concurrency 1          median      p90",
                    f"    in-process (LocalPredictor)   {bench.in_process.median_ms:8.2f} ms {bench.in_process.p90_ms:8.2f} ms",
                    f"    served (gRPC client)          {bench.served.median_ms:8.2f} ms {bench.served.p90_ms:8.2f} ms",
                    f"    served / in-process: {bench.ratio:.2f}x median "
                    f"({bench.served.median_ms - bench.in_process.median_ms:+.2f} ms), "
                    f"{bench.served.p90_ms / bench.in_process.p90_ms:.2f}x p90"]
            if bench.steps:
                out.append("  server per request at concurrency 1 (Triton statistics, µs): "
                           "queue / compute input / infer / output = total")
                for s in bench.steps:
                    out.append(f"    {s.model:<28} {s.queue_us:8.0f} {s.compute_input_us:8.0f} {s.compute_infer_us:8.0f} "
                               f"{s.compute_output_us:8.0f} = {s.total_us:8.0f}   ({s.requests} requests)")
                if bench.server_request_us is not None:  # Triton's averages: set against the client's mean
                    inside = bench.server_request_us / 1000
                    summed = sum(s.total_us for s in bench.steps) / 1000
                    out.append(f"    request inside Triton {inside:.2f} ms of the served mean {bench.served.mean_ms:.2f} "
                               f"ms; the rest, {bench.served.mean_ms - inside:.2f} ms: client and gRPC"
                               + (f" (the steps' times add up to {summed:.2f} ms: Triton's per-step timers overlap)"
                                  if summed > inside * 1.02 else ""))
            tools = [t for t in (TRITONGEN_PERF, PERF_ANALYZER) if bench.tool_levels(t)]
            if tools:
                out.append("  served under load: " + " | ".join(f"{t}: infer/s, p50 / p90 / p99 ms" for t in tools))
                for c in self.concurrency:
                    cells = []
                    for tool in tools:
                        lv = next((x for x in bench.tool_levels(tool) if x.concurrency == c), None)
                        cells.append(_level_cell(lv))
                    out.append(f"    concurrency {c:<3} " + " | ".join(cells))
            out += [f"  note: {n}" for n in bench.notes]
        return out

    # ---------------------------------------------------------------- CSV

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for bench in self.models:
            m = bench.model
            base = {"model": m.name, "layout": m.layout, "backend": m.backend, "runtime": m.runtime,
                    "cpu": self.cpu.model, "isa": self.cpu.isa}
            for kind, tool, lat in ((IN_PROCESS, "LocalPredictor", bench.in_process),
                                    (SERVED, "tritongen gRPC client", bench.served)):
                rows.append({**base, "measurement": kind, "tool": tool, "concurrency": 1, "requests": lat.runs,
                             "throughput_infer_per_s": _f(1000 / lat.mean_ms), "latency_p50_ms": _f(lat.median_ms),
                             "latency_p90_ms": _f(lat.p90_ms), "stable": True,
                             "server_request_us": _f(bench.server_request_us) if kind == SERVED else "",
                             "note": "interleaved with the other, end to end"})
            for s in bench.steps:
                rows.append({**base, "measurement": SERVER_STEP, "tool": "Triton statistics", "concurrency": 1,
                             "requests": s.requests, "step": s.model, "queue_us": _f(s.queue_us),
                             "compute_input_us": _f(s.compute_input_us), "compute_infer_us": _f(s.compute_infer_us),
                             "compute_output_us": _f(s.compute_output_us),
                             "compute_us": _f(s.compute_input_us + s.compute_infer_us + s.compute_output_us),
                             "stable": True})
            for lv in sorted(bench.load, key=lambda x: (x.tool, x.concurrency)):
                rows.append({**base, "measurement": LOAD, "tool": lv.tool, "concurrency": lv.concurrency,
                             "throughput_infer_per_s": _f(lv.throughput), "latency_p50_ms": _f(lv.p50_ms),
                             "latency_p90_ms": _f(lv.p90_ms), "latency_p99_ms": _f(lv.p99_ms),
                             "queue_us": _f(lv.queue_us), "compute_us": _f(lv.compute_us), "stable": lv.stable,
                             "note": lv.note})
        return [{col: row.get(col, "") for col in CSV_COLUMNS} for row in rows]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows(self.rows())
        self.files.append(path)
        return path

    # ---------------------------------------------------------------- chart

    def plot(self, path: str | Path) -> Path:
        """p50 latency and throughput vs concurrency: one colour per model, one line style per tool;
        the in-process median as a star at concurrency 1."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(12, 5), dpi=100)
        FigureCanvasAgg(fig)
        lat_ax, thr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        styles = {TRITONGEN_PERF: ("-", "o"), PERF_ANALYZER: ("--", "s")}
        for i, bench in enumerate(self.models):
            colour = colours[i % len(colours)]
            for tool, (style, marker) in styles.items():
                levels = [lv for lv in bench.tool_levels(tool) if lv.throughput is not None]
                if not levels:
                    continue
                label = f"{bench.model.name} ({bench.model.layout}), {tool}"
                xs = [lv.concurrency for lv in levels]
                lat_ax.plot(xs, [lv.p50_ms for lv in levels], style, marker=marker, color=colour, label=label)
                thr_ax.plot(xs, [lv.throughput for lv in levels], style, marker=marker, color=colour, label=label)
            lat_ax.plot([1], [bench.in_process.median_ms], "*", markersize=13, color=colour,
                        label=f"{bench.model.name}: in-process median")
        lat_ax.set(xlabel="concurrency (requests outstanding)", ylabel="p50 latency, ms", title="latency vs concurrency")
        thr_ax.set(xlabel="concurrency (requests outstanding)", ylabel="throughput, images/s",
                   title="throughput vs concurrency")
        for ax in (lat_ax, thr_ax):
            ax.set_xticks(self.concurrency)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        lat_ax.legend(fontsize=7, loc="upper left")
        thr_ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"tritongen bench serving — {self.cpu.model} ({self.cpu.isa}), {self.cores} cores; "
                     "1 image per request", fontsize=10)
        fig.tight_layout()
        fig.savefig(str(path))
        self.files.append(path)
        return path


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _level_cell(lv: LoadLevel | None) -> str:
    if lv is None:
        return f"{'—':>8}"
    if lv.throughput is None:
        return f"{'—':>8} ({lv.note})"
    text = f"{lv.throughput:8.1f} {lv.p50_ms:7.2f} / {lv.p90_ms:7.2f} / {lv.p99_ms:7.2f}"
    return text + ("" if lv.stable else " (unstable)")


# ------------------------------------------------------------------------------ measuring


def _step_times(before: dict, after: dict, models: Sequence[str]) -> list[StepTime]:
    steps = []
    for name in models:
        delta = after[name] - before[name]
        steps.append(StepTime(name, delta.counts["success"], *(delta.avg_us(kind) for kind in STAT_KINDS)))
    return steps


def _tritongen_perf_levels(model: str, url: str, levels: list[int], images_dir: Path, settings_kw: dict,
                           notes: list[str]) -> list[LoadLevel]:
    """``run_perf`` over ``levels``; an unstable level ends its sweep, so the rest get their own."""
    from ..perf import PerfSettings, run_perf

    results, remaining = [], list(levels)
    while remaining:
        try:
            run = run_perf(model, url, PerfSettings(levels=remaining, **settings_kw), images=images_dir)
        except PerfError as exc:
            notes.append(f"{TRITONGEN_PERF} at concurrency {remaining}: {exc}")
            break
        if not run.results:
            break
        results += run.results
        done = {int(r.value) for r in run.results}
        remaining = [c for c in remaining if c not in done]
    out = []
    for r in results:
        breakdown = r.breakdown_us()
        pct = r.percentile_latency_ns
        warnings = [w for w in r.warnings if "keep up" in w]
        out.append(LoadLevel(TRITONGEN_PERF, int(r.value), r.infer_per_sec, pct[50] / 1e6, pct[90] / 1e6, pct[99] / 1e6,
                             breakdown["queue"], breakdown["compute_input"] + breakdown["compute_infer"]
                             + breakdown["compute_output"], r.stable,
                             "; ".join(w.split("(", 1)[-1].rstrip(")") for w in warnings)))
    return out


def _perf_analyzer_levels(model: str, url: str, levels: list[int], images: list[bytes], settings_kw: dict,
                          notes: list[str]) -> list[LoadLevel]:
    from ..perf.perf_analyzer import run_perf_analyzer

    try:
        result = run_perf_analyzer(model, url, levels, images=images,
                                   measurement_interval_ms=settings_kw["measurement_interval_ms"],
                                   stability_percentage=settings_kw["stability_percentage"],
                                   max_trials=settings_kw["max_trials"])
    except PerfError as exc:
        notes.append(f"{PERF_ANALYZER}: {exc}")
        return []
    out = [LoadLevel(PERF_ANALYZER, lv.concurrency, lv.throughput, lv.p50_ms, lv.p90_ms, lv.p99_ms,
                     lv.server_queue_us, lv.server_compute_us) for lv in result.levels]
    out += [LoadLevel(PERF_ANALYZER, c, None, stable=False, note=why) for c, why in result.failures.items()]
    return out


def _prepare_images(images: str | Path | None, work: Path) -> tuple[Path, list[bytes], str]:
    """(directory, encoded images, where they came from): ``images`` or generated photos."""
    from ..perf.inputs import _images

    if images is not None:
        directory = Path(images)
        try:
            return directory, _images(directory), str(directory)
        except PerfError as exc:
            raise TritongenError(str(exc).replace("--images", "images")) from None
    import cv2

    from ..convert.onnx import synthetic_photo

    directory = work / "images"
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(DEFAULT_IMAGE_COUNT):
        ok, encoded = cv2.imencode(".jpg", synthetic_photo(*DEFAULT_IMAGE_HW, seed=i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        (directory / f"photo_{i}.jpg").write_bytes(encoded.tobytes())
    h, w = DEFAULT_IMAGE_HW
    return directory, _images(directory), f"synthetic photos ({w}x{h} JPEG, tritongen.convert.onnx.synthetic_photo)"


def is_repository(source: str | Path) -> bool:
    path = Path(source)
    return path.is_dir() and any(path.glob("*/config.pbtxt"))


def _build_kwargs(layout: str | None, build_options: dict[str, Any]) -> dict[str, Any]:
    from ..build import build

    kwargs = dict(build_options)
    if layout is not None:
        params = inspect.signature(build).parameters
        if "layout" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TritongenError("--layout: this tritongen's build has no layout option")
        kwargs["layout"] = layout
    return kwargs


def bench_serving(
    source: str | Path,
    name: str | Sequence[str] | None = None,
    *,
    images: str | Path | None = None,
    runs: int = 30,
    warmup: int = 3,
    concurrency: Sequence[int] | None = None,
    backend: str | None = None,
    layouts: Sequence[str] = (),
    output: str | Path | None = None,
    force: bool = False,
    measurement_interval_ms: int = 2000,
    stability_percentage: float = 20.0,
    max_trials: int = 10,
    use_perf_analyzer: bool = True,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    step: Callable[[str], None] = lambda message: None,
    **build_options: Any,
) -> ServingReport:
    """Measure in-process vs served for ``source`` (export directory / zoo name: built first with
    :func:`tritongen.build.build`; or a model repository, served as it is).

    ``name``: the build's ensemble name; for a repository, the model(s) to measure (default: every
    image model). ``layouts``: build once per layout (models ``NAME_<layout>`` when more than one)
    and compare them. ``output``: where to build (default: a temporary directory, removed after).
    ``build_options`` go to :func:`tritongen.build.build` as they are."""
    from ..serve import TritonServer
    from ..serve.server import free_port

    if runs < 3:
        raise TritongenError("runs must be at least 3")
    levels = sorted(set(concurrency)) if concurrency else default_concurrency()
    if any(c < 1 for c in levels):
        raise TritongenError(f"concurrency levels must be >= 1, got {levels}")
    names = [name] if isinstance(name, str) else list(name or [])
    with owned_temp_dir("tritongen-bench-serving-") as tmp:
        work = Path(tmp)
        if is_repository(source):
            if backend or layouts or build_options:
                raise TritongenError(f"{source} is a model repository, already built: --backend / --layout / "
                                     "build options apply to an export")
            repository = Path(source)
        else:
            repository = Path(output) if output is not None else work / "model_repository"
            names = _build_all(source, repository, names, backend, list(layouts), force, build_options, step)
        models = repository_models(repository, names)
        images_dir, encoded, images_from = _prepare_images(images, work)

        from ..perf.perf_analyzer import find_perf_analyzer, perf_analyzer_problem

        analyzer = find_perf_analyzer() if use_perf_analyzer else None
        analyzer_note = None if analyzer else (perf_analyzer_problem() if use_perf_analyzer else "not asked for")
        settings_kw = dict(measurement_interval_ms=measurement_interval_ms, stability_percentage=stability_percentage,
                           max_trials=max_trials)
        server = TritonServer(repository, free_port(), free_port(), free_port())
        step(f"serving {repository} (gRPC {server.grpc_port})")
        benches = []
        with server:
            for model in models:
                benches.append(_bench_model(model, server.grpc_url, encoded, images_dir, levels, runs, warmup,
                                            settings_kw, analyzer is not None, step))
        report = ServingReport(repository=repository, cpu=cpu_info(), cores=usable_cores(), images=images_from,
                               image_count=len(encoded), runs=runs, concurrency=levels, models=benches,
                               perf_analyzer=f"perf_analyzer {analyzer.version} ({analyzer.binary})" if analyzer else None,
                               perf_analyzer_note=analyzer_note)
        if csv_path is not None:
            report.write_csv(csv_path)
        if plot_path is not None:
            report.plot(plot_path)
    return report


def _build_all(source, repository: Path, names: list[str], backend, layouts: list[str], force: bool,
               build_options: dict, step) -> list[str]:
    from ..build import build

    if len(names) > 1:
        raise TritongenError("building takes one --name (the ensemble name)")
    name = names[0] if names else None
    if len(layouts) > 1 and name is None:
        name = Path(str(source)).name.replace("-", "_").replace(".", "_")
    built = []
    for layout in layouts or [None]:
        model_name = f"{name}_{layout}" if len(layouts) > 1 else name
        step(f"building {source} ({backend or 'default backend'}" + (f", {layout} layout" if layout else "") + ")")
        result = build(source, repository, backend=backend, name=model_name, force=force, step=step,
                       **_build_kwargs(layout, build_options))
        if not result.repository.served_locally:
            raise TritongenError(f"{result.repository.backend} is not served by the local tritonserver; "
                                 "bench serving needs python-onnxruntime or python-paddle")
        built.append(result.repository.ensemble)
    return built


def _bench_model(model: ServedModel, url: str, encoded: list[bytes], images_dir: Path, levels: list[int], runs: int,
                 warmup: int, settings_kw: dict, with_perf_analyzer: bool, step) -> ModelBench:
    import tritonclient.grpc as grpcclient

    from ..client import client_for
    from ..perf.measure import server_snapshot

    notes: list[str] = []
    step(f"{model.name}: in-process ({RUNTIME_LABELS.get(model.runtime, model.runtime)}) vs served, "
         f"{runs} interleaved runs")
    predictor = RepositoryPredictor(model)
    stats_client = grpcclient.InferenceServerClient(url)
    try:
        with client_for(model.name, url=url, timeout=60) as client:
            def local(i: int) -> object:
                return predictor.predict([encoded[i % len(encoded)]])

            def served(i: int) -> object:
                return client.run([encoded[i % len(encoded)]])

            for i in range(max(warmup, 1)):  # both paths warm before the statistics start counting
                local(i)
                served(i)
            watched = list(dict.fromkeys([model.name, *model.steps]))
            before = server_snapshot(stats_client, watched, 30.0)
            in_process, served_latency = interleaved_latency(local, served, runs, warmup=0)
            after = server_snapshot(stats_client, watched, 30.0)
    finally:
        stats_client.close()
    steps = _step_times(before, after, model.steps)
    own = after[model.name] - before[model.name]
    server_request_us = own.avg_us("success") if own.counts["success"] else None
    del predictor  # its runtime's threads and memory are not needed while the server is loaded
    step(f"{model.name}: {TRITONGEN_PERF} at concurrency {', '.join(map(str, levels))}")
    load = _tritongen_perf_levels(model.name, url, levels, images_dir, settings_kw, notes)
    if with_perf_analyzer:
        step(f"{model.name}: {PERF_ANALYZER} at concurrency {', '.join(map(str, levels))}")
        load += _perf_analyzer_levels(model.name, url, levels, encoded, settings_kw, notes)
    for lv in load:
        if not lv.stable and lv.throughput is not None:
            notes.append(f"{lv.tool} at concurrency {lv.concurrency} did not stabilise within {settings_kw['max_trials']} "
                         f"windows (±{settings_kw['stability_percentage']:g}%): its last windows are reported")
    return ModelBench(model, in_process, served_latency, steps, load, notes, server_request_us)

