"""Lineage: every decision about an id across the steps of the last run, and its parents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.plan import latest_manifest

PARENT_COLUMNS = ("source_ids", "parent_ids", "doc_id")


def decisions_for(workspace: Path, ident: str) -> list[dict[str, Any]]:
    import polars as pl

    manifest = latest_manifest(workspace)
    rows: list[dict[str, Any]] = []
    for step in manifest["steps"]:
        d = Path(workspace) / step["dir"]
        path = d / "decisions.parquet"
        if not path.exists():
            rows.append({"step": step["name"], "stage": step["stage"], "action": "(not run yet)", "reason": "",
                         "score": None, "detail": None})
            continue
        found = pl.scan_parquet(path).filter(pl.col("id") == ident).collect()
        for r in found.iter_rows(named=True):
            rows.append({"step": step["name"], **{k: r[k] for k in ("stage", "action", "reason", "score", "detail")}})
    return rows


def parents_of(workspace: Path, ident: str) -> list[str]:
    """Ids this row was derived from (chunk -> document, example -> chunks), from any step output."""
    import polars as pl

    manifest = latest_manifest(workspace)
    parents: list[str] = []
    for step in manifest["steps"]:
        d = Path(workspace) / step["dir"]
        parts = sorted(d.glob("part-*.parquet"))
        if not parts:
            continue
        lf = pl.scan_parquet(parts)
        names = lf.collect_schema().names()
        cols = [c for c in PARENT_COLUMNS if c in names]
        if not cols or "id" not in names:
            continue
        found = lf.filter(pl.col("id") == ident).select(cols).head(1).collect()
        for row in found.iter_rows(named=True):
            for c in cols:
                v = row[c]
                vals = v if isinstance(v, list) else [v]
                parents.extend(x for x in vals if x and x != ident and x not in parents)
        if parents:
            break
    return parents


def trace(workspace: Path, ident: str, *, depth: int = 3) -> list[dict[str, Any]]:
    """[{id, decisions: [...], parents: [...]}, ...] for the id and its ancestors, nearest first."""
    out, queue, seen = [], [(ident, 0)], set()
    while queue:
        cur, level = queue.pop(0)
        if cur in seen:
            continue
        seen.add(cur)
        parents = parents_of(workspace, cur) if level < depth else []
        out.append({"id": cur, "level": level, "decisions": decisions_for(workspace, cur), "parents": parents})
        queue.extend((p, level + 1) for p in parents)
    return out
