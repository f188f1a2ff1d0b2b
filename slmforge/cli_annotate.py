"""CLI commands of the annotate area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from slmforge.cli_common import SET_HELP, parse_sets, reporter, run_with_errors
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


def push_step(inputs: list[Path], out: Path, *, config_file: Path | None, fields: dict) -> dict:
    """The ``annotate`` stage on ``inputs`` through the runner's one step path (:func:`slmforge.runner.run_step`):
    ``out`` is its step folder (stats.json, queues.json, decisions/quarantine.parquet), as in a recipe."""
    import tempfile

    from slmforge.cli_common import parquet_inputs, stage_config
    from slmforge.runner import run_step
    from slmforge.workspace import writable_workspace

    config = stage_config("annotate", fields, config_file=config_file, where="slmforge annotate push")
    files = parquet_inputs(inputs)
    _check_columns(config, files)
    if len(inputs) == 1:  # one Parquet file or one stage folder: the stage reads it as it is
        return run_step(config, {"input": Path(inputs[0])}, out, reporter=reporter())
    from schemas.io import write_parquet

    with tempfile.TemporaryDirectory(prefix=".slmforge-push-", dir=writable_workspace(Path(out).parent)) as tmp:
        write_parquet(_concat(files), Path(tmp) / "input.parquet")  # several inputs: the rows of all, in order
        return run_step(config, {"input": Path(tmp) / "input.parquet"}, out, reporter=reporter())


def pull_step(inputs: list[Path], out: Path, *, config_file: Path | None, fields: dict, workers: int = 1) -> dict:
    """The ``annotate_merge`` stage on ``inputs`` (each Parquet file one shard) through :func:`run_step`;
    ``out`` gets its part files, decisions/quarantine.parquet, stats.json (agreement included) and agreement.json."""
    import json
    import os
    import tempfile

    from schemas.io import read_parquet, write_json
    from slmforge.cli_common import parquet_inputs, stage_config
    from slmforge.runner import run_step
    from slmforge.workspace import writable_workspace

    config = stage_config("annotate_merge", fields, config_file=config_file, where="slmforge annotate pull")
    files = parquet_inputs(inputs)
    _check_columns(config, files)
    with tempfile.TemporaryDirectory(prefix=".slmforge-pull-", dir=writable_workspace(Path(out))) as tmp:
        stats = run_step(config, files, None, workers=workers, workspace=Path(tmp), reporter=reporter())
        step_dir = Path(stats.pop("stage_dir"))
        stats["answers"] = read_parquet(step_dir / "_work" / "answers.parquet").num_rows
        stats["agreement"] = json.loads((step_dir / "_work" / "agreement.json").read_text())
        for old in [*Path(out).glob("part-*.parquet"), *(Path(out) / n for n in OUT_FILES)]:
            old.unlink(missing_ok=True)  # a re-pull replaces the previous one, never mixes with it
        for f in [*sorted(step_dir.glob("part-*.parquet")), step_dir / "decisions.parquet",
                  step_dir / "quarantine.parquet"]:
            os.replace(f, Path(out) / f.name)
    write_json(stats["agreement"], Path(out) / "agreement.json")
    write_json(stats, Path(out) / "stats.json")
    return stats


#: the files a pull writes into --out besides part-*.parquet (removed first by a re-pull)
OUT_FILES = ("decisions.parquet", "quarantine.parquet", "stats.json", "agreement.json")


def _check_columns(config, files: list[Path]) -> None:
    """The stage's plan-time column check on every input file, before anything is pushed or pulled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.errors import SchemaError
    from slmforge.stages import load_stage

    stage = load_stage(config)
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as exc:
            raise SchemaError(f"{f} is not a readable Parquet file", received=f"{type(exc).__name__}: {exc}",
                              expected="Parquet files or stage folders with part-*.parquet",
                              fix="pass the output of a slmforge step (or a Parquet file with id and text)") from None
        stage.check({str(f): dict(zip(schema.names, schema.types))})


def _concat(files: list[Path]):
    import pyarrow as pa

    from schemas.io import read_parquet

    return pa.concat_tables([read_parquet(f) for f in files], promote_options="default")


@annotate_app.command()
def push(inputs: list[Path] = typer.Argument(..., help="Parquet files or stage folders with part-*.parquet."),
         out: Path = typer.Option(..., "--out", "-o", help="Step folder: stats.json, queues.json, "
                                  "decisions.parquet, quarantine.parquet (rows without an id)."),
         config: Optional[Path] = typer.Option(None, "--config", "-c",
                                               help="YAML of an `annotate` stage (rules, text_column …)."),
         set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Route rows into queues and push them (idempotent: record ids are our ids)."""
    stats = run_with_errors(push_step, inputs, out, config_file=config, fields=parse_sets(set_))
    table = Table("queue", "records pushed")
    for key, n in stats.items():
        if key.startswith("queue:"):
            table.add_row(key.removeprefix("queue:"), str(n))
    console.print(table)
    if stats.get("quarantined"):
        console.print(f"[yellow]{stats['quarantined']} rows without an id quarantined[/] "
                      f"-> {out / 'quarantine.parquet'}")
    console.print(f"{stats['rows']} rows read; wrote {out}")


@annotate_app.command()
def pull(inputs: list[Path] = typer.Argument(..., help="The rows that were pushed (Parquet files or folders)."),
         queue: Optional[list[str]] = typer.Option(None, "--queue", "-q", help="Queue(s) to merge."),
         out: Path = typer.Option(..., "--out", "-o", help="Folder for part-*.parquet, decisions.parquet, "
                                  "quarantine.parquet, stats.json, agreement.json."),
         text_column: Optional[str] = typer.Option(None, help="Column a correction replaces (default text)."),
         workspace: Optional[str] = typer.Option(None, help="Argilla workspace (default argilla)."),
         config: Optional[Path] = typer.Option(None, "--config", "-c",
                                               help="YAML of an `annotate_merge` stage (queues, conflict …)."),
         set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
         workers: int = typer.Option(1, help="Worker processes.")) -> None:
    """Merge submitted answers: drop rejected rows, apply corrections (origin=annotated), report agreement."""
    fields = {"queues": queue or None, "text_column": text_column, "workspace": workspace, **parse_sets(set_)}
    stats = run_with_errors(pull_step, inputs, out, config_file=config, fields=fields, workers=workers)
    console.print(f"merged {stats['answers']} answers → {stats['rows_out']} rows in {out}")
    for k, v in sorted(stats["counters"].items()):
        console.print(f"  {k}: {v}")
    for k, v in stats["agreement"].items():
        console.print(f"  agreement {k}: alpha={v['alpha']} kappa={v['kappa']}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(annotate_app, name="annotate")
