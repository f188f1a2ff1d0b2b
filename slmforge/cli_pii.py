"""CLI commands of the pii area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

from pathlib import Path

import typer

pii_app = typer.Typer(help="Find and scrub PII and secrets in a documents Parquet file.", no_args_is_help=True)


def _config(mode: str, anonymize: str, threshold: float, workers: int, entities: str | None):
    from curation.pii.config import PiiConfig

    kw = dict(mode=mode, anonymize=anonymize, score_threshold=threshold, workers=workers)
    if entities:
        kw["entities"] = [e.strip() for e in entities.split(",") if e.strip()]
    return PiiConfig(**kw)


def _read(path: Path):
    import pyarrow.parquet as pq

    from schemas.errors import SchemaError

    table = pq.read_table(path)
    missing = [c for c in ("id", "text") if c not in table.column_names]
    if missing:
        raise SchemaError(f"{path} lacks columns {missing}", received=table.column_names,
                          expected="columns id, text", fix="pass a documents Parquet file (slmforge ingest output)")
    return table


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
    import pyarrow as pa
    from rich.console import Console

    from curation.pii import find_pii
    from schemas.io import write_parquet

    table = _read(input)
    spans = find_pii(table.column("text").to_pylist(), config=_config(mode, "placeholder", threshold, workers, entities))
    rows = {"id": [], "start": [], "end": [], "entity_type": [], "score": []}
    for doc_id, found in zip(table.column("id").to_pylist(), spans):
        for s in found:
            rows["id"].append(doc_id)
            for k in ("start", "end", "entity_type", "score"):
                rows[k].append(s[k])
    schema = pa.schema([("id", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                        ("entity_type", pa.string()), ("score", pa.float64())])
    write_parquet(pa.Table.from_pydict(rows, schema=schema), output)
    Console().print(f"{len(rows['id'])} spans in {table.num_rows} documents -> {output}")


@pii_app.command("scrub")
def scrub(
    input: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help="Parquet with columns id, text."),
    output: Path = typer.Option(..., "--output", help="Same rows with every text column scrubbed."),
    mode: str = typer.Option("ner", help="ner | patterns"),
    anonymize: str = typer.Option("placeholder", help="redact | placeholder | pseudonym"),
    threshold: float = typer.Option(0.5, help="Minimum score 0..1."),
    entities: str = typer.Option(None, help="Comma-separated entity types (default: all)."),
) -> None:
    """Replace PII/secrets in every text column (text, title, meta, source ...) and write the table back."""
    from rich.console import Console

    from curation.pii.columns import scrub_table, text_columns
    from schemas.io import write_parquet

    table = _read(input)
    cfg = _config(mode, anonymize, threshold, 1, entities)
    table, reports = scrub_table(table, cfg)
    failed = [(i, r.error) for i, r in zip(table.column("id").to_pylist(), reports) if r.error is not None]
    if failed:
        raise typer.BadParameter(f"{len(failed)} rows could not be analysed (first: {failed[0][0]}: {failed[0][1]}); "
                                 "nothing written. Fix or drop them, or run the recipe stage, which quarantines them.")
    write_parquet(table, output)
    spans = [s for r in reports for col in r.applied.values() for s in col]
    Console().print(f"{len(spans)} spans replaced in {sum(r.changed for r in reports)}/{table.num_rows} documents "
                    f"(columns: {', '.join(text_columns(table.schema, cfg))}) -> {output}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(pii_app, name="pii")
