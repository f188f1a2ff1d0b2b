"""Distributed connected components for the Ray near-dup driver: the large-star / small-star loop
(Kiveris et al., SoCC 2014) as waves of Ray tasks over object-store blocks of edges.

Gives the labels of :func:`curation.dedup.minhash.components` (smallest member of each component)
without collecting the edge list on the driver; used by :mod:`curation.dedup.near_ray` when
``ray_components`` is ``large_star`` (or ``auto`` above the edge limit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def _large_star(t: pa.Table) -> pa.Table:
    """Large-star on undirected edges (both directions in ``t``), grouped by ``u`` in this block.

    Also counts nodes that break the star-forest condition of the *input* (a node is fine when all
    its neighbours are larger — a centre — or it has exactly one neighbour, smaller — a leaf);
    that count comes back as one row ``u = -1, v = count``.
    """
    import polars as pl

    df = pl.from_arrow(t).unique()
    g = df.group_by("u").agg(pl.col("v").min().alias("m"), pl.len().alias("n"),
                             (pl.col("v") < pl.col("u")).sum().alias("nsmall"))
    bad = g.filter((pl.col("nsmall") > 0) & (pl.col("n") > 1)).height
    g = g.with_columns(pl.min_horizontal("m", "u").alias("m"))
    out = (df.join(g.select("u", "m"), on="u").filter(pl.col("v") > pl.col("u"))
           .select(pl.col("v").alias("u"), pl.col("m").alias("v")).unique())
    stat = pl.DataFrame({"u": [-1], "v": [bad]}, schema={"u": pl.Int64, "v": pl.Int64})
    return pl.concat([out.cast(pl.Int64), stat]).to_arrow()


def _both_directions(t: pa.Table) -> pa.Table:
    u, v = t.column(0).to_numpy(), t.column(1).to_numpy()
    keep = u >= 0
    u, v = u[keep], v[keep]
    return pa.table({"u": np.concatenate([u, v]), "v": np.concatenate([v, u])})


def _orient_down(t: pa.Table) -> pa.Table:
    u, v = t["u"].to_numpy(), t["v"].to_numpy()
    keep = (u >= 0) & (u != v)
    u, v = u[keep], v[keep]
    return pa.table({"u": np.maximum(u, v), "v": np.minimum(u, v)})


def _small_star(t: pa.Table) -> pa.Table:
    """Small-star on edges oriented (larger, smaller), grouped by the larger end in this block;
    the large-star count rows (``u = -1``) are summed into one and passed through."""
    import polars as pl

    df = pl.from_arrow(t)
    stat = df.filter(pl.col("u") < 0)
    df = df.filter(pl.col("u") >= 0).unique()
    g = df.group_by("u").agg(pl.col("v").min().alias("m"))
    leaves = df.join(g, on="u").filter(pl.col("v") != pl.col("m")).select(pl.col("v").alias("u"), pl.col("m").alias("v"))
    centre = g.select(pl.col("u"), pl.col("m").alias("v"))
    parts = [pl.concat([leaves, centre]).unique().cast(pl.Int64)]
    if stat.height:
        parts.append(pl.DataFrame({"u": [-1], "v": [int(stat["v"].sum())]}, schema={"u": pl.Int64, "v": pl.Int64}))
    return pl.concat(parts).to_arrow()


def part_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """Hash partition of uint64 keys (a splitmix64 step, modulo ``parts``)."""
    with np.errstate(over="ignore"):
        x = (keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(parts)).astype(np.int64)


def _hash_split(t: pa.Table, parts: int) -> list[pa.Table]:
    """Hash partition of an edge table on ``u``."""
    part = part_of(t["u"].to_numpy(), parts)
    return [t.filter(pa.array(part == k)) for k in range(parts)]


def _ls_map(t: pa.Table, parts: int) -> list[pa.Table]:
    if "i" in t.column_names:
        t = pa.table({"u": t["i"], "v": t["j"]})
    return _hash_split(_both_directions(t), parts)


def _ls_reduce(parts: int, *tables: pa.Table) -> list[Any]:
    """Large-star on one partition, then orient (larger, smaller) and split for small-star; the
    last return value is the partition's count of star-forest violations of the round's input."""
    out = _large_star(pa.concat_tables(tables))
    u = out["u"].to_numpy()
    bad = int(out["v"].to_numpy()[u < 0].sum())
    return [*_hash_split(_orient_down(out), parts), bad]


def _ss_reduce(*tables: pa.Table) -> pa.Table:
    return _small_star(pa.concat_tables(tables))


def large_star_components(edges: list[Any], *, partitions: int, max_rounds: int = 200) -> tuple[np.ndarray, np.ndarray, int]:
    """Distributed connected components: alternate large-star and small-star until the edges
    form stars centred on each component's minimum. Returns (nodes, labels, rounds).

    Each round is a hash shuffle on ``u`` -> large-star (which also counts the nodes where the
    round's *input* is not yet a star forest) -> a hash shuffle on the larger end -> small-star,
    as waves of Ray tasks over object-store blocks (``partitions`` per step; ``edges``: object
    refs of ``i, j`` tables). The edge list never reaches the driver until the result (one label
    per member node). A round whose count is 0 had a converged input: that input is the result.
    """
    import ray

    parts = max(2, int(partitions))
    map_task = ray.remote(num_cpus=1, num_returns=parts)(_ls_map)
    reduce_task = ray.remote(num_cpus=1, num_returns=parts + 1)(_ls_reduce)
    small_task = ray.remote(num_cpus=1)(_ss_reduce)
    edges = list(edges)
    for rounds in range(1, max_rounds + 1):
        mapped = [map_task.remote(r, parts) for r in edges]
        reduced = [reduce_task.remote(parts, *[m[k] for m in mapped]) for k in range(parts)]
        nxt = [small_task.remote(*[r[k] for r in reduced]) for k in range(parts)]
        bad = sum(ray.get([r[parts] for r in reduced]))
        if bad == 0:  # this round's input already was a star forest: done
            tables = [_orient_down(t if "u" in t.column_names else pa.table({"u": t["i"], "v": t["j"]}))
                      for t in ray.get(edges)]
            u = np.concatenate([t["u"].to_numpy() for t in tables] + [np.zeros(0, np.int64)])
            v = np.concatenate([t["v"].to_numpy() for t in tables] + [np.zeros(0, np.int64)])
            leaves, first = np.unique(u, return_index=True)
            centres = np.unique(v)
            nodes = np.concatenate([leaves, centres])
            labels = np.concatenate([v[first], centres])
            order = np.argsort(nodes, kind="stable")
            return nodes[order], labels[order], rounds
        edges = nxt
    raise RuntimeError(f"near_dedup on Ray: large-star/small-star did not converge in {max_rounds} rounds")
