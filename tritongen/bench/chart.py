"""The INT8 speedup chart of ``tritongen bench tables``: ours on this CPU vs FastDeploy's published tables.

Grouped horizontal bars, one group per (model, runtime) on runtime latency: our speedup
(FP32 ms / INT8 ms) beside FastDeploy's ``max_speedup`` of the model it faces, and a dashed
line at 1.0x (INT8 no faster than FP32). Drawn on matplotlib's Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from .reference import Latency

if TYPE_CHECKING:
    from .tables import SideBySide, TablesReport

OURS, THEIRS, BAND = "#1f77b4", "#ff7f0e", "#f3f3f3"


def speedup_chart(report: "TablesReport", path: str | Path) -> Path:
    """Write the PNG to ``path``; return it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = [line for line in report.side_by_side() if line.latency is Latency.RUNTIME]
    footer = [report.warning] if report.warning else []
    footer += [f"{m.name}: {m.match.note}" for m in report.models if m.match and m.match.note]
    footer += [f"skipped {s.name}: {s.reason}" for s in report.skipped]
    footer = [textwrap.fill(text, 150, subsequent_indent="  ") for text in footer]
    footer_lines = sum(text.count("\n") + 1 for text in footer)

    groups = len(lines)
    plot_in, footer_in, head_in = max(1.0, 0.62 * groups), 0.16 * footer_lines + (0.2 if footer else 0.0), 1.2
    fig = Figure(figsize=(11.0, plot_in + footer_in + head_in + 0.55), dpi=110)
    FigureCanvasAgg(fig)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.30, right=0.97, top=1 - head_in / height, bottom=(footer_in + 0.55) / height)
    ax = fig.add_subplot(1, 1, 1)

    ours = [line.ours.max_speedup if line.ours else None for line in lines]
    theirs = [line.theirs.max_speedup if line.theirs else None for line in lines]
    top = max([v for v in ours + theirs if v is not None] + [1.0]) * 1.15
    bar = 0.36
    for i, line in enumerate(lines):  # one shaded band per model
        if _model_index(lines, i) % 2 == 0:
            ax.axhspan(i - 0.5, i + 0.5, color=BAND, zorder=0)
    for offset, values, colour, label, missing in (
        (-bar / 2, ours, OURS, "tritongen, this CPU", "not measured"),
        (bar / 2, theirs, THEIRS, "FastDeploy, published", "no FastDeploy row"),
    ):
        ys = [i + offset for i, v in enumerate(values) if v is not None]
        widths = [v for v in values if v is not None]
        bars = ax.barh(ys, widths, bar, color=colour, label=label, zorder=2)
        for text in ax.bar_label(bars, labels=[f"{v:.2f}x" for v in widths], padding=3, fontsize=8, zorder=4):
            text.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
        for i, v in enumerate(values):
            if v is None:
                ax.text(0.02 * top, i + offset, missing, va="center", ha="left", fontsize=7.5, color="0.45", zorder=3)
    ax.axvline(1.0, color="0.15", linestyle="--", linewidth=1, zorder=3)
    ax.text(1.0, 1.0, " 1.0x: INT8 no faster", transform=ax.get_xaxis_transform(), va="bottom", ha="left", fontsize=8)
    ax.set_yticks(range(groups))
    ax.set_yticklabels([_label(line) for line in lines], fontsize=8.5)
    ax.set_ylim(groups - 0.5, -0.5)  # first model on top
    ax.set_xlim(0, top)
    ax.set_xlabel("INT8 speedup = FP32 ms / INT8 ms (runtime latency)")
    ax.grid(axis="x", color="0.85", zorder=1)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 1 - 0.6 / height), ncol=2,
               fontsize=8.5, frameon=False)
    if not groups:
        ax.text(0.5, 0.5, "no runtime rows", transform=ax.transAxes, ha="center", va="center")
    fig.suptitle(f"INT8 speedup on this CPU vs FastDeploy's published tables "
                 f"(1 thread, batch 1, median of {report.runs} runs)", fontsize=11.5, y=1 - 0.12 / height)
    vnni = "" if report.cpu.vnni else " — no VNNI: INT8 is not expected to beat FP32 here"
    fig.text(0.5, 1 - 0.42 / height, f"this CPU: {report.cpu.model} — ISA: {report.cpu.isa}{vnni}", ha="center",
             va="top", fontsize=9, color="0.25" if report.cpu.vnni else "#b00020")
    if footer:
        fig.text(0.01, 0.08 / height, "\n".join(footer), fontsize=7.5, color="0.3", va="bottom", ha="left")
    path = Path(path)
    fig.savefig(path)
    return path


def _model_index(lines: list["SideBySide"], i: int) -> int:
    return len(dict.fromkeys(line.model for line in lines[: i + 1])) - 1


def _label(line: "SideBySide") -> str:
    faced = line.fastdeploy_model or "none (ours only)"
    return f"{line.model} · {line.backend.value}\nFastDeploy: {faced}"


__all__ = ["speedup_chart"]
