"""CLI commands of the annotate area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from slmforge.cli_common import fail as _fail

console = Console()
annotate_app = typer.Typer(help="Expert review in Argilla: embedded server, push queues, pull answers.",
                           no_args_is_help=True)


@annotate_app.command()
def serve(port: int = typer.Option(None, help="Server port on 127.0.0.1 (default 6900 or SLMFORGE_ARGILLA_PORT).")) -> None:
    """Start the embedded Argilla server (own venv, SQLite, Redis on a private socket, rq worker, SQLite search)."""
    from curation.annotate.embedded import Embedded, ensure_venv, start
    from schemas.errors import SlmforgeError

    emb = Embedded.from_env(port=port)
    try:
        with console.status(f"preparing the server venv in {emb.venv} (first time: a few minutes)…"):
            ensure_venv(emb)
        with console.status("starting redis, worker and server…"):
            info = start(emb)
    except SlmforgeError as exc:
        _fail(exc)
    console.print(f"[green]Argilla is up[/green] at {info['url']} in {info['seconds']:.1f} s "
                  f"(started: {', '.join(info['started']) or 'nothing, already running'})")
    console.print(f"  username: [bold]{info['username']}[/bold]  password: [bold]{info['password']}[/bold]")
    console.print(f"  API key:  [bold]{info['api_key']}[/bold]   data: {emb.home}")
    console.print("  stop with: slmforge annotate stop")


@annotate_app.command()
def stop() -> None:
    """Stop every process `annotate serve` started (data stays for the next start)."""
    from curation.annotate.embedded import Embedded, stop as stop_all

    stopped = stop_all(Embedded.from_env())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@annotate_app.command()
def status(workspace: str = typer.Option("argilla", help="Argilla workspace.")) -> None:
    """Show the server's processes and progress per queue."""
    from curation.annotate.embedded import Embedded, running
    from schemas.errors import SlmforgeError

    emb = Embedded.from_env()
    alive = running(emb)
    console.print("embedded: " + (", ".join(f"{k} (pid {v})" for k, v in alive.items()) or "not running"))
    try:
        from curation.annotate.client import connect, progress

        rows = progress(connect(), workspace=workspace)
    except SlmforgeError as exc:
        _fail(exc)
    table = Table("queue", "records", "completed", "pending", "done %")
    for r in rows:
        pct = 100.0 * r["completed"] / r["total"] if r["total"] else 0.0
        table.add_row(r["queue"], str(r["total"]), str(r["completed"]), str(r["pending"]), f"{pct:.0f}")
    console.print(table)


def _stage_config(path: Path, kind: str):
    from schemas.yamlsafe import load_yaml

    from curation.annotate.config import AnnotateConfig, AnnotateMergeConfig

    data = load_yaml(path.read_text(), where=str(path))
    model = AnnotateConfig if kind == "annotate" else AnnotateMergeConfig
    data.setdefault("stage", kind)
    return model.model_validate(data)


def _read(paths: list[Path]):
    import pyarrow as pa

    from schemas.io import read_parquet, read_parquet_dir

    return pa.concat_tables([read_parquet_dir(p) if p.is_dir() else read_parquet(p) for p in paths],
                            promote_options="default")


@annotate_app.command()
def push(inputs: list[Path] = typer.Argument(..., help="Parquet files or stage folders with part-*.parquet."),
         config: Path = typer.Option(..., "--config", "-c", help="YAML of an `annotate` stage (rules, text_column …).")) -> None:
    """Route rows into queues and push them (idempotent: record ids are our ids)."""
    from curation.annotate.stage import AnnotateStage
    from schemas.errors import SlmforgeError

    try:
        pushed = AnnotateStage(_stage_config(config, "annotate")).push(_read(inputs))
    except SlmforgeError as exc:
        _fail(exc)
    table = Table("queue", "records pushed")
    for q, n in pushed.items():
        table.add_row(q, str(n))
    console.print(table)


@annotate_app.command()
def pull(inputs: list[Path] = typer.Argument(..., help="The rows that were pushed (Parquet files or folders)."),
         queue: list[str] = typer.Option(..., "--queue", "-q", help="Queue(s) to merge."),
         out: Path = typer.Option(..., "--out", "-o", help="Folder for part-00000.parquet, decisions.parquet, agreement.json."),
         text_column: str = typer.Option("text", help="Column a correction replaces."),
         workspace: str = typer.Option("argilla", help="Argilla workspace.")) -> None:
    """Merge submitted answers: drop rejected rows, apply corrections (origin=annotated), report agreement."""
    from curation.annotate.merge import agreement
    from curation.annotate.stage import AnnotateMergeStage
    from curation.annotate.config import AnnotateMergeConfig
    from schemas.errors import SlmforgeError
    from schemas.io import write_json, write_parquet

    stage = AnnotateMergeStage(AnnotateMergeConfig(queues=queue, text_column=text_column, workspace=workspace))
    try:
        answers = stage.pull()
        result = stage.merge(_read(inputs), answers)
    except SlmforgeError as exc:
        _fail(exc)
    write_parquet(result.table, out / "part-00000.parquet")
    write_parquet(result.decisions, out / "decisions.parquet")
    agree = agreement(answers)
    write_json({"counters": dict(result.counters), "agreement": agree}, out / "agreement.json")
    console.print(f"merged {len(answers)} answers → {result.table.num_rows} rows in {out}")
    for k, v in sorted(result.counters.items()):
        console.print(f"  {k}: {v}")
    for k, v in agree.items():
        console.print(f"  agreement {k}: alpha={v['alpha']} kappa={v['kappa']}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(annotate_app, name="annotate")
