"""Routing rules: which rows go to which review queue. Pure pyarrow/polars, no network."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from schemas.config.annotate import RouteRule
from schemas.errors import SchemaError


def select_rows(table: pa.Table, rule: RouteRule) -> pa.Table:
    """Rows of ``table`` matching ``rule``, ordered by id (deterministic)."""
    if rule.column not in table.column_names:
        raise SchemaError(f"route rule for queue {rule.queue!r} reads column {rule.column!r}, which the input lacks; "
                          f"input columns: {table.column_names}")
    df = pl.from_arrow(table)
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
            rows = pl.concat([prev, pl.from_arrow(rows)], how="vertical_relaxed").unique("id", keep="first").sort("id").to_arrow()
        queues[rule.queue] = rows
    if max_per_queue is not None:
        queues = {q: t.slice(0, max_per_queue) for q, t in queues.items()}
    return queues
