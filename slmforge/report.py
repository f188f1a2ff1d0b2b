"""Rich output for the CLI: a progress bar per stage and a summary table per stage and per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def _dropped(stats: Mapping[str, Any]) -> str:
    dropped = stats.get("dropped") or {}
    if not dropped:
        return "-"
    return ", ".join(f"{r} {n}" for r, n in sorted(dropped.items(), key=lambda x: -x[1]))


def stage_table(stats: Mapping[str, Any], *, title: str | None = None) -> Table:
    t = Table(title=title, show_header=True, header_style="bold", expand=False)
    for col in ("step", "stage", "status", "in", "kept", "dropped (by reason)", "modified", "quarantined", "time"):
        t.add_column(col, overflow="fold")
    add_stage_row(t, stats)
    return t


def add_stage_row(t: Table, stats: Mapping[str, Any]) -> None:
    kind = stats.get("kind")
    status = "cached" if stats.get("cached") else "ran"
    rows_in = stats.get("rows_in")
    kept = stats.get("rows_out")
    t.add_row(
        str(stats.get("step")), str(stats.get("stage")), status,
        "-" if rows_in is None or kind == "artifact" else f"{rows_in:,}",
        "-" if kept is None or kind == "artifact" else f"{kept:,}",
        _dropped(stats),
        str(stats.get("modified", "-")),
        str(stats.get("quarantined", "-")),
        f"{stats.get('seconds', 0):.1f}s",
    )


def run_table(all_stats: list[Mapping[str, Any]]) -> Table:
    t = Table(title="run summary", show_header=True, header_style="bold")
    for col in ("step", "stage", "status", "in", "kept", "dropped (by reason)", "modified", "quarantined", "time"):
        t.add_column(col, overflow="fold")
    for s in all_stats:
        add_stage_row(t, s)
    return t


class RichReporter:
    """Implements slmforge.execute.Reporter with a live progress bar and per-stage tables."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def stage_start(self, step, *, cached: bool, total: int | None) -> None:
        if cached or self.quiet:
            return
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("rows"), TimeElapsedColumn(), console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(f"{step.name} ({step.config.stage})", total=total)

    def advance(self, step, n: int) -> None:
        if self.progress is not None and self.task is not None and n:
            self.progress.advance(self.task, n)

    def stage_end(self, step, stats: Mapping[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None
        if self.quiet:
            return
        self.console.print(stage_table(stats))
        extra = step.stage.summary(stats)
        for label, value in extra:
            self.console.print(f"  {label}: {value}")
