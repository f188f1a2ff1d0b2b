"""The `slmforge` command line (typer + rich).

Only typer/rich are imported at start-up; every command imports what it needs when it runs,
so `slmforge --help` is instant and never imports torch, spaCy or Presidio.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from slmforge import cli_annotate, cli_ask, cli_dedup, cli_pii, cli_search, cli_synth, cli_train
from slmforge.cli_common import console, out, parse_sets, reporter, run_with_errors

app = typer.Typer(
    name="slmforge",
    help="Turn raw domain corpora into curated, reviewed, synthetic-augmented datasets and tuned small models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
DEFAULT_WORKSPACE = Path("workspace/demo")


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[RichHandler(console=console)])


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v info, -vv debug logs.")) -> None:
    _setup_logging(verbose)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. data/recipes/demo.yaml."),
    until: Optional[str] = typer.Option(None, help="Stop after this step."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the recipe's 'workers')."),
    executor: Optional[str] = typer.Option(None, help="local or ray (default: the recipe's 'executor')."),
    address: Optional[str] = typer.Option(None, help="Ray address: auto or host:port (with --executor ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-stage tables."),
) -> None:
    """Run a recipe: check the whole chain first, then each stage (cached stages are skipped)."""
    from slmforge.report import run_table
    from slmforge.runner import run_recipe
    from slmforge.stages import load_recipe

    overrides = {k: v for k, v in {"executor": executor, "address": address}.items() if v is not None}

    def go():
        r = load_recipe(recipe, overrides=overrides)
        return run_recipe(r, until=until, reporter=reporter(quiet=quiet), workers=workers)

    stats = run_with_errors(go)
    console.print(run_table(stats))
    cached = sum(1 for s in stats if s.get("cached"))
    console.print(f"{len(stats)} stages: {len(stats) - cached} ran, {cached} cached")
    if until is None:
        from slmforge.card import write_dataset_card

        ws = Path(load_recipe(recipe, overrides=overrides).workspace)
        console.print(f"dataset card: {run_with_errors(write_dataset_card, ws)}")


@app.command()
def card(
    workspace: Path = typer.Option(Path("workspace/demo"), "--workspace", "-w", help="Workspace of a run."),
) -> None:
    """(Re)write the dataset card of the last run: <workspace>/card/README.md with plots."""
    from slmforge.card import write_dataset_card

    console.print(f"dataset card: {run_with_errors(write_dataset_card, workspace)}")


@app.command()
def ingest(
    paths: list[str] = typer.Argument(..., help="Folders or glob patterns."),
    output: Path = typer.Option(..., "--output", "-o", help="Output Parquet (DOCUMENTS)."),
    text_field: str = typer.Option("text", help="Text column/key for jsonl, csv, parquet."),
    split_pattern: Optional[str] = typer.Option(None, help="Regex splitting txt/md files into documents."),
    workers: int = typer.Option(1, help="Worker processes."),
) -> None:
    """Read raw files into documents with stable ids; bad files are quarantined, not fatal."""
    from curation.config import IngestConfig
    from slmforge.runner import run_step

    cfg = IngestConfig(paths=paths, text_field=text_field, split_pattern=split_pattern)
    run_with_errors(run_step, cfg, [], output, workers=workers, reporter=reporter())
    console.print(f"wrote {output} (+ {output.with_suffix('.decisions.parquet').name}, "
                  f"{output.with_suffix('.quarantine.parquet').name})")


@app.command("filter")
def filter_cmd(
    input: Path = typer.Option(..., "--input", "-i", help="Parquet with id, text (and q_* scores, else computed)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output Parquet of kept rows with q_* scores."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Threshold override, e.g. --set min_words=20."),
    workers: int = typer.Option(1, help="Worker processes."),
) -> None:
    """Score (if needed) and apply the quality thresholds; drops are recorded with their rule."""
    import tempfile

    import pyarrow.parquet as pq

    from curation.quality import ScoreConfig
    from curation.quality import SCORE_COLUMNS
    from slmforge.runner import run_step
    from slmforge.stages import parse_stage

    def go():
        cfg = parse_stage({"stage": "filter", **parse_sets(set_)}, where="--set")
        src = input
        with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as tmp:
            if not set(SCORE_COLUMNS) <= set(pq.read_schema(input).names):
                src = Path(tmp) / "scored.parquet"
                run_step(ScoreConfig(), [input], src, workers=workers, reporter=reporter())
            return run_step(cfg, [src], output, workers=workers, reporter=reporter())

    run_with_errors(go)


@app.command("trace")
def trace_cmd(
    ident: str = typer.Argument(..., help="A document, chunk or example id."),
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace of the run."),
) -> None:
    """Show an id's path through every stage of the last run, and its ancestors."""
    from rich.table import Table

    from slmforge.trace import trace

    chain = run_with_errors(trace, workspace, ident)
    if not any(node["decisions"] for node in chain):
        console.print(f"[yellow]no decisions mention id {ident} in {workspace}[/]")
        raise typer.Exit(1)
    for node in chain:
        t = Table(title=f"{'  ' * node['level']}{node['id']}" + (" (ancestor)" if node["level"] else ""))
        for col in ("step", "stage", "action", "reason", "score", "detail"):
            t.add_column(col, overflow="fold")
        for d in node["decisions"]:
            t.add_row(d["step"], d["stage"], d["action"], d["reason"],
                      "" if d["score"] is None else f"{d['score']:.4g}", d["detail"] or "")
        out.print(t)
        if node["parents"]:
            out.print(f"derived from: {', '.join(node['parents'])}")


@app.command()
def stats(
    workspace: Path = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w", help="Workspace of the run."),
) -> None:
    """Summary table of the last run in a workspace."""
    import json

    from slmforge.report import run_table
    from slmforge.plan import latest_manifest

    manifest = run_with_errors(latest_manifest, workspace)
    rows = []
    for step in manifest["steps"]:
        path = workspace / step["dir"] / "stats.json"
        rows.append(json.loads(path.read_text()) if path.exists()
                    else {"step": step["name"], "stage": step["stage"], "status": "not run"})
    out.print(run_table(rows))


# sub-command modules: one line each
cli_dedup.register(app)
cli_pii.register(app)
cli_annotate.register(app)
cli_synth.register(app)
cli_train.register(app)
cli_search.register(app)
cli_ask.register(app)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
