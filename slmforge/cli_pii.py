"""CLI commands of the pii area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

from pathlib import Path

import typer

from slmforge.cli_common import console, run_with_errors

pii_app = typer.Typer(help="Find and scrub PII and secrets in a documents Parquet file.", no_args_is_help=True)


def _config(mode: str, anonymize: str, threshold: float, workers: int, entities: str | None):
    from slmforge.stages import parse_stage

    kw = dict(stage="pii", mode=mode, anonymize=anonymize, score_threshold=threshold, workers=workers)
    if entities:
        kw["entities"] = [e.strip() for e in entities.split(",") if e.strip()]
    return run_with_errors(parse_stage, kw, where="slmforge pii")


def _check(path: Path) -> None:
    import pyarrow.parquet as pq

    from schemas.errors import SchemaError

    names = pq.read_schema(path).names
    missing = [c for c in ("id", "text") if c not in names]
    if missing:
        raise SchemaError(f"{path} lacks columns {missing}", received=names,
                          expected="columns id, text", fix="pass a documents Parquet file (slmforge ingest output)")


def _run(config, input: Path, output: Path, workers: int) -> tuple[dict, list[dict]]:
    """The pii stage on ``input`` through the runner's one step path; returns its stats and its
    decisions (one ``modify`` row per changed document, the spans in ``detail``)."""
    import json

    from schemas.io import read_parquet
    from slmforge.runner import run_step

    _check(input)
    stats = run_step(config, [input], output, workers=workers)
    dec = read_parquet(output.with_suffix(".decisions.parquet")).to_pylist()
    for d in dec:
        d["spans"] = json.loads(d["detail"]).get("spans", []) if d["detail"] else []
    return stats, dec


@pii_app.command("detect")
def detect(
    input: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help="Parquet with columns id, text."),
    output: Path = typer.Option(..., "--output", help="Spans Parquet: id, start, end, entity_type, score."),
    mode: str = typer.Option("ner", help="ner | patterns"),
    threshold: float = typer.Option(0.5, help="Minimum score 0..1."),
    workers: int = typer.Option(1, help="Worker processes."),
    entities: str = typer.Option(None, help="Comma-separated entity types (default: all)."),
) -> None:
    """Write one row per found span (no original values)."""
    import tempfile

    import pyarrow as pa

    from schemas.io import write_parquet

    def go():
        from slmforge.workspace import writable_workspace

        with tempfile.TemporaryDirectory(prefix=".slmforge-pii-", dir=writable_workspace(output.parent)) as tmp:
            return _run(_config(mode, "placeholder", threshold, workers, entities), input,
                        Path(tmp) / "scrubbed.parquet", workers)

    stats, dec = run_with_errors(go)
    rows = {"id": [], "start": [], "end": [], "entity_type": [], "score": []}
    for d in dec:
        for span in d["spans"]:
            rows["id"].append(d["id"])
            for k in ("start", "end", "entity_type", "score"):
                rows[k].append(span[k])
    schema = pa.schema([("id", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                        ("entity_type", pa.string()), ("score", pa.float64())])
    write_parquet(pa.Table.from_pydict(rows, schema=schema), output)
    console.print(f"{len(rows['id'])} spans in {stats['rows_in']} documents -> {output}")


@pii_app.command("scrub")
def scrub(
    input: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help="Parquet with columns id, text."),
    output: Path = typer.Option(..., "--output", help="Same rows with every text column scrubbed (+ out.decisions.parquet)."),
    mode: str = typer.Option("ner", help="ner | patterns"),
    anonymize: str = typer.Option("placeholder", help="redact | placeholder | pseudonym"),
    threshold: float = typer.Option(0.5, help="Minimum score 0..1."),
    workers: int = typer.Option(1, help="Worker processes."),
    entities: str = typer.Option(None, help="Comma-separated entity types (default: all)."),
) -> None:
    """Replace PII/secrets in every text column (text, title, meta, source ...) and write the table back."""
    stats, dec = run_with_errors(_run, _config(mode, anonymize, threshold, workers, entities), input, output, workers)
    console.print(f"{sum(len(d['spans']) for d in dec)} spans replaced in {stats['modified']}/{stats['rows_in']} "
                  f"documents -> {output}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(pii_app, name="pii")
