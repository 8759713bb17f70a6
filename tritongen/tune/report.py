"""The table of tried configurations (rich) and the throughput-vs-p99 chart (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .candidate import short_name

if TYPE_CHECKING:
    from rich.table import Table

    from .search import TuneResult


def verdict(result: "TuneResult", trial) -> str:
    if trial.error:
        return "refused" if "refused" in trial.error or "invalid" in trial.error else "failed"
    budget = result.objective.latency_budget_ms is not None
    text = ("within budget" if budget else "fast enough") if trial.feasible else ("over budget" if budget else "too slow")
    if not trial.stable:
        text += ", unstable"
    if result.chosen is trial:
        text = "CHOSEN · " + text
    return text


def trials_table(result: "TuneResult") -> "Table":
    """One row per trial: the change from its parent, every tuned model's settings (changed ones
    bold), throughput, p50/p99, the model with the longest queue, and the verdict."""
    from rich.table import Table
    from rich.text import Text

    title = (f"tune {result.model} at concurrency {result.concurrency}: {result.objective.describe()} "
             f"— {len(result.trials)} configurations, stopped: {result.stop_reason}")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("change")
    names = result.target.tuned
    for name in names:
        table.add_column(short_name(name, result.prefix))
    for column in ("infer/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_column("longest queue")
    table.add_column("result")
    for t in result.trials:
        cells = [Text(t.candidate[name].short(), style="bold" if t.candidate[name] != result.baseline[name] else "")
                 for name in names]
        if t.error:
            measured = ["—", "—", "—", "", t.error]
        else:
            busiest = t.busiest
            queue = f"{short_name(busiest, result.prefix)} {t.queue_us[busiest] / 1000:.2f} ms" if busiest else ""
            measured = [f"{t.throughput:.1f}", f"{t.p50_ms:.2f}", f"{t.p99_ms:.2f}", queue, verdict(result, t)]
        parent = f" (from #{t.parent})" if t.parent not in (None, t.index - 1) else ""
        style = "green" if result.chosen is t else ("red" if t.error else None)
        table.add_row(str(t.index), Text(t.change + parent), *cells, *(Text(m) for m in measured), style=style)
    return table


def plot_trials(result: "TuneResult", path: str | Path) -> Path:
    """Throughput against p99 for every measured trial, numbered, the chosen one marked, the
    latency budget (or minimum throughput) drawn as a dashed line. Returns the PNG's path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    measured = [t for t in result.trials if t.ok]
    fig = Figure(figsize=(8.0, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ok = [t for t in measured if t.feasible]
    over = [t for t in measured if not t.feasible]
    if ok:
        ax.scatter([t.p99_ms for t in ok], [t.throughput for t in ok], color="#1f77b4", label="meets the objective", zorder=3)
    if over:
        ax.scatter([t.p99_ms for t in over], [t.throughput for t in over], color="#aaaaaa", label="does not", zorder=3)
    for t in measured:
        ax.annotate(f"#{t.index}", (t.p99_ms, t.throughput), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if t.parent is not None:
            parent = result.trials[t.parent - 1]
            if parent.ok:
                ax.annotate("", (t.p99_ms, t.throughput), (parent.p99_ms, parent.throughput),
                            arrowprops={"arrowstyle": "->", "color": "#cccccc", "lw": 0.8}, zorder=1)
    if result.chosen is not None:
        c = result.chosen
        ax.scatter([c.p99_ms], [c.throughput], s=260, facecolors="none", edgecolors="#d62728", linewidths=2,
                   label=f"chosen (#{c.index})", zorder=4)
    objective = result.objective
    # the objective's line, unless it lies far off the measured points (it would squash them into a corner)
    p99s, throughputs = [t.p99_ms for t in measured] or [1.0], [t.throughput for t in measured] or [1.0]
    if objective.latency_budget_ms is not None:
        label = f"latency budget {objective.latency_budget_ms:g} ms"
        if objective.latency_budget_ms <= 2 * max(p99s):
            ax.axvline(objective.latency_budget_ms, color="#d62728", linestyle="--", linewidth=1, label=label)
        else:
            ax.plot([], [], " ", label=label + " (off the chart)")
    else:
        label = f"min throughput {objective.min_throughput:g}/s"
        if objective.min_throughput <= 2 * max(throughputs):
            ax.axhline(objective.min_throughput, color="#d62728", linestyle="--", linewidth=1, label=label)
        else:
            ax.plot([], [], " ", label=label + " (off the chart)")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title(f"tritongen tune {result.model} · concurrency {result.concurrency} · {objective.describe()}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
