"""``tritongen bench tables``: FastDeploy's published tables, regenerated on this CPU, ours beside theirs.

Each source is quantized and timed by :func:`tritongen.bench.runtime.run_benchmark` (ONNX
Runtime and Paddle Inference on the CPU, 1 thread, batch 1, runtime and end-to-end latency,
FP32 vs INT8 interleaved, median) and set beside the FastDeploy rows of the model it faces
(:mod:`tritongen.bench.reference`). A source that cannot be measured becomes a skipped entry
with its reason; the others still run.

Files (:meth:`TablesReport.write_csv`): our rows in exactly the columns of FastDeploy's
``benchmarks.csv`` (``int8_acc`` / ``metric``: our INT8-vs-FP32 fidelity on held-out images,
not an accuracy on a labelled set), and ``<stem>_vs_fastdeploy.csv``: one line per (model,
backend, latency) with ours and FastDeploy's CPU numbers side by side. ``"None"`` marks a
value that was not measured or not published, as in FastDeploy's file.
"""
from __future__ import annotations

import csv
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rich.table import Table

from ..errors import TritongenError
from ..measure.cpu import CpuInfo, cpu_info  # the one place this module learns about the CPU
from .reference import COLUMNS, Backend, Family, Hardware, Latency, ModelMatch, ReferenceRow, known_names, match_model, source_name

VS_SUFFIX = "_vs_fastdeploy"
VS_COLUMNS: tuple[str, ...] = (
    "family", "model", "fastdeploy_model", "backend", "hardware", "latency",
    "fp32_ms", "int8_ms", "max_speedup", "int8_vs_fp32", "metric",
    "fastdeploy_fp32_ms", "fastdeploy_int8_ms", "fastdeploy_max_speedup", "fastdeploy_fp32_acc", "fastdeploy_int8_acc",
    "fastdeploy_metric", "note",
)
TABLES_CSV, TABLES_PNG = "bench_tables.csv", "bench_tables.png"

Step = Callable[[str], None]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "None" if value is None else f"{value:.{digits}f}"


def _published(value: float | None) -> str:
    return "None" if value is None else str(value)


@dataclass(frozen=True)
class TableRow:
    """One of our rows: FP32 vs INT8 on this CPU."""

    family: Family
    model: str
    backend: Backend
    latency: Latency
    fp32_ms: float
    int8_ms: float
    fidelity: float | None  # INT8 vs FP32 on held-out images, by ``metric`` (as run_benchmark reports it)
    metric: str
    method: str
    hardware: Hardware = Hardware.CPU

    @property
    def max_speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    def csv_row(self) -> dict[str, str]:
        return {"family": self.family.value, "model": self.model, "backend": self.backend.value,
                "hardware": self.hardware.value, "latency": self.latency.value, "fp32_ms": _fmt(self.fp32_ms),
                "int8_ms": _fmt(self.int8_ms), "int8_fp16_ms": "None", "int8_fp16_pm_ms": "None",
                "max_speedup": _fmt(self.max_speedup), "fp32_acc": "None", "int8_acc": _fmt(self.fidelity, 4),
                "metric": self.metric or "None", "method": self.method}


@dataclass
class MeasuredModel:
    source: str
    name: str  # what was matched against FastDeploy's tables
    match: type[ModelMatch] | None
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)
    without_rows: dict[Backend, str] = field(default_factory=dict)  # a runtime run_benchmark could not time, and why


@dataclass(frozen=True)
class SkippedModel:
    source: str
    name: str
    reason: str  # one line


@dataclass(frozen=True)
class SideBySide:
    """Ours and FastDeploy's numbers for one (model, backend, latency); either side may be missing."""

    family: Family
    model: str
    fastdeploy_model: str | None
    backend: Backend
    latency: Latency
    ours: TableRow | None
    theirs: ReferenceRow | None
    note: str = ""

    def csv_row(self) -> dict[str, str]:
        o, t = self.ours, self.theirs
        return {
            "family": self.family.value, "model": self.model, "fastdeploy_model": self.fastdeploy_model or "None",
            "backend": self.backend.value, "hardware": Hardware.CPU.value, "latency": self.latency.value,
            "fp32_ms": _fmt(o and o.fp32_ms), "int8_ms": _fmt(o and o.int8_ms), "max_speedup": _fmt(o and o.max_speedup),
            "int8_vs_fp32": _fmt(o and o.fidelity, 4), "metric": (o.metric if o else "") or "None",
            "fastdeploy_fp32_ms": _published(t and t.fp32_ms), "fastdeploy_int8_ms": _published(t and t.int8_ms),
            "fastdeploy_max_speedup": _published(t and t.max_speedup), "fastdeploy_fp32_acc": _published(t and t.fp32_acc),
            "fastdeploy_int8_acc": _published(t and t.int8_acc), "fastdeploy_metric": t.metric if t else "None",
            "note": self.note,
        }


@dataclass
class TablesReport:
    cpu: CpuInfo
    runs: int
    warmup: int
    models: list[MeasuredModel] = field(default_factory=list)
    skipped: list[SkippedModel] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # what tables_command wrote

    @property
    def rows(self) -> list[TableRow]:
        return [row for model in self.models for row in model.rows]

    @property
    def fastdeploy(self) -> list[ReferenceRow]:
        """FastDeploy's rows (every backend and hardware) of the models we measured, each once."""
        seen = dict.fromkeys(row for model in self.models if model.match for row in model.match.rows())
        return list(seen)

    @property
    def warning(self) -> str | None:
        if self.cpu.vnni:
            return None
        return (f"{self.cpu.model} has no VNNI ({self.cpu.isa}): INT8 kernels run about as fast as FP32 here; "
                "FastDeploy's 2-4x INT8 speedups need AVX512-VNNI, AVX-VNNI or AMX")

    def side_by_side(self) -> list[SideBySide]:
        """One line per (model, backend, latency) of ours and FastDeploy's CPU rows of the model it faces."""
        lines = []
        for model in self.models:
            ours = {(r.backend, r.latency): r for r in model.rows}
            theirs = {(r.backend, r.latency): r for r in (model.match.rows() if model.match else ())
                      if r.hardware is Hardware.CPU}
            family = model.rows[0].family
            fastdeploy_model = model.match.fastdeploy if model.match else None
            note = model.match.note if model.match and model.match.fastdeploy else "FastDeploy published no row: ours only"
            order = list(Backend), list(Latency)
            for key in sorted(ours.keys() | theirs.keys(), key=lambda k: (order[0].index(k[0]), order[1].index(k[1]))):
                why = model.without_rows.get(key[0]) if key not in ours else None
                line_note = "; ".join(n for n in (note, why and f"ours not measured: {why}") if n)
                lines.append(SideBySide(family, model.rows[0].model, fastdeploy_model, *key, ours.get(key),
                                        theirs.get(key), line_note))
        return lines

    def write_csv(self, path: str | Path) -> tuple[Path, Path]:
        """Our rows in FastDeploy's columns at ``path``; ours beside theirs in ``<stem>_vs_fastdeploy.csv``."""
        path = Path(path)
        vs_path = path.with_name(f"{path.stem}{VS_SUFFIX}{path.suffix or '.csv'}")
        write_csv(path, COLUMNS, [r.csv_row() for r in self.rows])
        write_csv(vs_path, VS_COLUMNS, [line.csv_row() for line in self.side_by_side()])
        return path, vs_path

    def rich_table(self) -> Table:
        """The console view: ours (this CPU) beside FastDeploy's published numbers."""
        table = Table(title=f"FP32 vs INT8 on {self.cpu} — 1 thread, batch 1, median of {self.runs} interleaved runs; "
                            "FD = FastDeploy's published tables", title_justify="left")
        for name, justify in (("model", "left"), ("FastDeploy model", "left"), ("backend", "left"), ("latency", "left"),
                              ("FP32 ms", "right"), ("INT8 ms", "right"), ("speedup", "right"), ("INT8 vs FP32", "left"),
                              ("FD FP32 ms", "right"), ("FD INT8 ms", "right"), ("FD speedup", "right"),
                              ("FD accuracy FP32→INT8", "left")):
            table.add_column(name, justify=justify)
        previous = None
        for line in self.side_by_side():
            o, t = line.ours, line.theirs
            if previous is not None and line.model != previous:
                table.add_section()
            previous = line.model
            table.add_row(
                line.model, line.fastdeploy_model or "—", line.backend.value, line.latency.value,
                f"{o.fp32_ms:.2f}" if o else "—", f"{o.int8_ms:.2f}" if o else "—",
                f"{o.max_speedup:.2f}x" if o else "—",
                f"{o.metric} {o.fidelity:.4f}" if o and o.fidelity is not None else "—",
                _cell(t and t.fp32_ms), _cell(t and t.int8_ms), _cell(t and t.max_speedup, "x"),
                f"{t.metric} {_cell(t.fp32_acc)}→{_cell(t.int8_acc)}" if t else "—",
            )
        return table

    def messages(self) -> list[str]:
        """Lines to print under the table: the CPU warning, notes per model, skipped sources."""
        lines = [f"warning: {self.warning}"] if self.warning else []
        for model in self.models:
            lines += [f"note: {model.name}: {note}" for note in model.notes]
        lines += [f"skipped: {s.name}{'' if s.source in s.reason else f' ({s.source})'}: {s.reason}" for s in self.skipped]
        return lines


def write_csv(path: Path, columns: Sequence[str], records: list[dict[str, str]]) -> Path:
    """``records`` under ``columns`` (FastDeploy's benchmarks.csv columns for rows of ours)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(records)
    return path


def _cell(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:g}{unit}"


# ------------------------------------------------------------------------------------ measuring


def _measure(source: str | Path, calib_dir: str | Path, runs: int, warmup: int, step: Step):
    """The one call of run_benchmark: FP32 vs INT8, ONNX Runtime and Paddle Inference, runtime and end-to-end."""
    from ..quantize.config import QuantizeConfig
    from .runtime import run_benchmark

    return run_benchmark(source, QuantizeConfig(Path(calib_dir)), runs=runs, warmup=warmup, step=step)


def table_rows(bench) -> list[TableRow]:
    """run_benchmark's rows in FastDeploy's terms (family cls/det/seg, its backend names)."""
    return [TableRow(Family.of_intake(r.family), r.model, Backend(r.backend), Latency(r.latency), r.fp32_ms, r.int8_ms,
                     r.agreement, r.metric, r.method) for r in bench.rows]


def _notes(bench, cpu: CpuInfo) -> list[str]:
    """run_benchmark's notes minus what the report says once for all models (the CPU and what it means)."""
    notes = []
    for note in bench.notes:
        if note.startswith("CPU:"):
            continue
        notes.append(note.replace(f", {cpu}: {cpu.int8_expectation()}", "").replace(f": {cpu.int8_expectation()}", ""))
    return notes


def _native_errors() -> tuple[type[BaseException], ...]:
    """What the runtimes raise when an INT8 model cannot run (ONNX Runtime's pybind errors are plain Exceptions)."""
    errors: list[type[BaseException]] = [RuntimeError, ValueError, OSError, MemoryError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        errors += [getattr(ort_state, name) for name in ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph",
                                                         "NotImplemented", "EPFail", "NoSuchFile") if hasattr(ort_state, name)]
    except ImportError:
        pass
    return tuple(errors)


def _one_line(exc: BaseException, bug: bool = False) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if bug:  # not a limit of the model or the runtimes: say where, so it can be reported
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text = (f"internal error (a tritongen bug, please report it): {type(exc).__name__}: {text} "
                f"at {Path(frame.filename).name}:{frame.lineno}")
    elif not isinstance(exc, TritongenError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 400 else text[:397] + "..."


def run_tables(
    sources: Sequence[str | Path],
    calib_dir: str | Path,
    runs: int = 30,
    warmup: int = 5,
    step: Step = lambda message: None,
    as_name: str | None = None,
) -> TablesReport:
    """Measure every source and set it beside FastDeploy's rows of the model it faces.

    ``as_name`` (one source only) names the model to match instead of its directory / zoo name."""
    if not sources:
        raise TritongenError("no source given: pass export directories or zoo names")
    if as_name is not None:
        if len(sources) != 1:
            raise TritongenError(f"--as names one source, got {len(sources)}; run them one at a time")
        if match_model(as_name) is None:
            raise TritongenError(f"--as {as_name!r}: unknown model; known: {', '.join(known_names())}")
    if not Path(calib_dir).is_dir():
        raise TritongenError(f"--calib-dir {calib_dir}: no such directory")
    report = TablesReport(cpu_info(), runs, warmup)
    expected = (TritongenError, *_native_errors())  # a model tritongen or a runtime cannot handle: its reason
    for source in sources:
        name = as_name or source_name(source)
        match = match_model(name)
        step(f"{name}: quantizing and timing FP32 vs INT8")
        try:
            bench = _measure(source, calib_dir, runs, warmup, lambda message, name=name: step(f"{name}: {message}"))
            rows = table_rows(bench)
        except expected as exc:
            reason = _one_line(exc)
        except Exception as exc:  # noqa: BLE001  (one model's crash must not cost the others' measurements)
            reason = _one_line(exc, bug=True)
        else:
            without_rows = {Backend(label): why for label, why in bench.skipped.items()}
            if rows:
                notes = [match.note] if match and match.note else []
                if match is None:
                    notes.append(f"not in FastDeploy's tables; --as NAME sets it beside one of: {', '.join(known_names())}")
                elif match.fastdeploy is None:
                    notes.append("FastDeploy published no row for this model: ours only")
                report.models.append(MeasuredModel(str(source), name, match, rows, notes + _notes(bench, report.cpu),
                                                   without_rows))
                continue
            reason = "; ".join(f"{label}: {why}" for label, why in without_rows.items()) or "no rows measured"
        step(f"{name}: skipped: {reason}")
        report.skipped.append(SkippedModel(str(source), name, reason))
    return report


def tables_command(
    sources: Sequence[str | Path],
    calib_dir: str | Path,
    output_dir: str | Path,
    runs: int = 30,
    warmup: int = 5,
    as_name: str | None = None,
    step: Step = lambda message: None,
) -> TablesReport:
    """``tritongen bench tables``: measure, then write bench_tables.csv, bench_tables_vs_fastdeploy.csv and
    bench_tables.png into ``output_dir``. Fails (writing nothing) when no source could be measured."""
    from .chart import speedup_chart

    report = run_tables(sources, calib_dir, runs=runs, warmup=warmup, step=step, as_name=as_name)
    if not report.models:
        raise TritongenError("nothing measured: " + "; ".join(f"{s.name}: {s.reason}" for s in report.skipped))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report.files = [*report.write_csv(output / TABLES_CSV), speedup_chart(report, output / TABLES_PNG)]
    return report


__all__ = ["run_tables", "tables_command", "TablesReport", "TableRow", "MeasuredModel", "SkippedModel", "SideBySide",
           "VS_COLUMNS", "TABLES_CSV", "TABLES_PNG"]
