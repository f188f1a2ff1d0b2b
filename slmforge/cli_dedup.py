"""``slmforge dedup``: the exact_dedup / near_dedup stage on one Parquet file, through the runner's one
step path (:func:`slmforge.runner.run_step`: decisions, quarantine, errors and exit codes as in a
recipe), written as a cluster map ``id, cluster_id`` (the representative's id, ``id``'s type kept).
Imports only typer at module level (``slmforge --help`` must stay instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from slmforge.cli_common import console, run_with_errors


def dedup_map(input: Path, output: Path, *, config: Any, workers: int) -> dict[str, Any]:
    """Run ``config``'s dedup stage on ``input`` (columns ``id`` int or string, ``text``) and write
    ``output``: one row per input row, in input order, with the id of its cluster's representative.
    The stage's decisions and quarantine go next to it (``out.decisions.parquet`` …)."""
    import json
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.errors import SchemaError
    from schemas.io import read_parquet, write_parquet
    from slmforge.runner import run_step

    names = pq.read_schema(input).names
    if "id" not in names or "text" not in names:
        raise SchemaError(f"{input} lacks columns 'id'/'text'", received=names,
                          expected="columns id, text (id int64 or string)", fix="rename the columns or run ingest first")
    table = pq.read_table(input, columns=["id", "text"])
    id_type = table.schema.field("id").type
    from slmforge.workspace import writable_workspace

    with tempfile.TemporaryDirectory(prefix=".slmforge-dedup-", dir=writable_workspace(Path(output).parent)) as tmp:
        src = Path(tmp) / "input.parquet"  # the stages key rows by string ids
        write_parquet(pa.table({"id": table["id"].cast(pa.string()), "text": table["text"]}), src)
        stats = run_step(config, [src], Path(tmp) / "kept.parquet", workers=workers)
        dec = read_parquet(Path(tmp) / "kept.decisions.parquet")
        quarantine = read_parquet(Path(tmp) / "kept.quarantine.parquet")
    cluster: dict[str, str] = {}
    for i, detail in zip(dec["id"].to_pylist(), dec["detail"].to_pylist()):
        if detail:
            cluster[i] = json.loads(detail).get("cluster_id", cluster.get(i, i))
    ids = table["id"].cast(pa.string()).to_pylist()
    out = pa.table({"id": table["id"],
                    "cluster_id": pa.array([cluster.get(i, i) for i in ids], pa.string()).cast(id_type)})
    write_parquet(out, output)
    write_parquet(dec, Path(output).with_suffix(".decisions.parquet"))
    write_parquet(quarantine, Path(output).with_suffix(".quarantine.parquet"))
    return {"docs": stats["rows_in"], "kept": stats["rows_out"], "dropped": stats["dropped"]}


def register(app: typer.Typer) -> None:
    """Add this command to the main app."""

    @app.command()
    def dedup(
        input: Path = typer.Option(..., "--input", "-i", help="Parquet with columns id (int or string), text."),
        output: Path = typer.Option(..., "--output", "-o", help="Parquet with id, cluster_id."),
        exact: bool = typer.Option(False, "--exact", help="Exact dedup on the normalised text hash."),
        threshold: float = typer.Option(0.8, help="Jaccard threshold for near-duplicates (MinHash)."),
        num_perm: int = typer.Option(128, "--num-perm", help="MinHash permutations."),
        ngram: int = typer.Option(5, help="Word n-gram shingle size."),
        workers: int = typer.Option(2, help="Worker processes (results do not depend on it)."),
    ) -> None:
        """Cluster duplicates: writes id, cluster_id (duplicates share a cluster id; singletons have their own)."""
        import time

        from slmforge.stages import parse_stage

        t0 = time.perf_counter()

        def go():
            fields = {"stage": "exact_dedup"} if exact else \
                {"stage": "near_dedup", "threshold": threshold, "num_perm": num_perm, "ngram": ngram}
            return dedup_map(input, output, config=parse_stage(fields, where="slmforge dedup"), workers=workers)

        stats = run_with_errors(go)
        console.print(f"{stats} in {time.perf_counter() - t0:.1f}s -> {output} "
                      f"(+ {output.with_suffix('.decisions.parquet').name})")
