"""Progress bars for long steps: on stderr (stdout carries results), and only on a terminal
(a transient bar in a log or pipe leaves nothing but blank lines)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def progress_bar(*columns: str | ProgressColumn, enabled: bool = True) -> Progress:
    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not (enabled and console.is_terminal))
