"""CLI commands of the synth area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""

    @app.command("synth")
    def synth_cmd(
        recipe: Path = typer.Option(..., "--recipe", "-r", help="YAML recipe with 'chunk' and 'synth' steps."),
        until: Optional[str] = typer.Option(
            None, help="Stop after this step (default: the recipe's last synth or synth_filter step)."),
        workers: Optional[int] = typer.Option(None, help="Worker processes (default: the recipe's 'workers')."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-stage tables."),
    ) -> None:
        """Run a recipe up to and including its synth_filter step: chunks -> judged, filtered examples."""
        from rich.console import Console

        from slmforge.stages import load_recipe
        from schemas.errors import ConfigError
        from slmforge.cli_common import run_with_errors
        from slmforge.report import RichReporter, run_table
        from slmforge.runner import run_recipe

        console = Console()

        def go():
            r = load_recipe(recipe)
            target = until
            if target is None:
                synth_steps = [s.step_name for s in r.stages if s.stage == "synth"]
                if not synth_steps:
                    raise ConfigError(
                        f"{recipe}: the recipe has no 'synth' step",
                        received=", ".join(s.step_name for s in r.stages),
                        expected="a step with 'stage: synth'",
                        fix="add '- stage: chunk' and '- stage: synth' entries (see docs/synth.md), or pass --until",
                    )
                target = [s.step_name for s in r.stages if s.stage in ("synth", "synth_filter")][-1]
            return run_recipe(r, until=target, reporter=RichReporter(console, quiet=quiet), workers=workers)

        stats = run_with_errors(go)
        console.print(run_table(stats))
        last = stats[-1]
        console.print(f"{last.get('step')}: {last.get('rows_out')} examples in {recipe}")
