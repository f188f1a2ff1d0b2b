"""Routing rules: which rows go to which review queue. Pure pyarrow/polars, no network."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from curation.annotate.config import RouteRule
from schemas.errors import SchemaError


def select_rows(table: pa.Table, rule: RouteRule) -> pa.Table:
    """Rows of ``table`` matching ``rule``, ordered by id (deterministic)."""
    df = pl.from_arrow(table)
    if rule.column not in table.column_names:
        key = rule.column.removeprefix("meta.")
        if key == rule.column or "meta" not in table.column_names:
            raise SchemaError(f"route rule for queue {rule.queue!r} reads column {rule.column!r}, which the input "
                              f"lacks; input columns: {table.column_names} (a key of the JSON 'meta' column is "
                              f"read as 'meta.<key>')")
        # a key of the JSON meta column, as text (a JSON object/array value stays JSON); shown to reviewers as metadata
        df = df.with_columns(pl.col("meta").str.json_path_match(f"$.{key}").alias(rule.column))
    col = pl.col(rule.column)
    if rule.select == "between":
        out = df.filter(col.is_between(rule.low, rule.high))
    elif rule.select == "below":
        out = df.filter(col < rule.threshold)
    elif rule.select == "above":
        out = df.filter(col > rule.threshold)
    elif rule.select == "equals":
        out = df.filter(col.cast(pl.Utf8) == rule.value)
    elif rule.select == "cluster_sample":
        out = (df.filter(col.is_not_null()).sort("id")
               .with_columns(pl.int_range(pl.len()).over(rule.column).alias("__n"))
               .filter(pl.col("__n") < rule.per_cluster).drop("__n"))
    elif rule.select == "flagged":
        text = col.cast(pl.Utf8).str.to_lowercase()
        out = df.filter(col.is_not_null() & (text != "") & (text != "false") & (text != "0"))
    else:  # conflict
        if rule.group_column not in df.columns:
            raise SchemaError(f"route rule {rule.queue!r} groups by {rule.group_column!r}, which the input lacks")
        out = df.filter(col.cast(pl.Utf8).n_unique().over(rule.group_column) > 1)
    return out.sort("id").to_arrow()


def route(table: pa.Table, rules: list[RouteRule], *, max_per_queue: int | None = None) -> dict[str, pa.Table]:
    """queue -> rows for it. A row may enter several queues; a queue fed by several rules holds each row once."""
    queues: dict[str, pa.Table] = {}
    for rule in rules:
        rows = select_rows(table, rule)
        if rule.queue in queues:
            prev = pl.from_arrow(queues[rule.queue])
            rows = pl.concat([prev, pl.from_arrow(rows)], how="diagonal_relaxed").unique("id", keep="first").sort("id").to_arrow()
        queues[rule.queue] = rows
    if max_per_queue is not None:
        queues = {q: t.slice(0, max_per_queue) for q, t in queues.items()}
    return queues
