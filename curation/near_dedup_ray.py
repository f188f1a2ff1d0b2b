"""Near-duplicate clustering on Ray: the same clusters as :mod:`curation.near_dedup`, computed
on a Ray cluster (Ray Data for the signature map and the band shuffle, Ray tasks for the rest)
instead of one process.

Used by the Ray executor for ``near_dedup`` (``slmforge/ray_executor.py``); it writes the stage's
``near_dedup_clusters.parquet`` byte for byte as ``NearDedupStage.prepare`` does, after which the
shards are mapped by the stage's own ``process``. Only the public functions of the local module
are used (``shingle_hashes``, ``permutations``, ``signatures``, ``band_hashes``, ``components``),
so shingles, MinHash and band hashes are the local ones by construction.

Pipeline (``n`` documents in ``S`` input shards; global index = position in input order):

1. **signatures** — ``map_batches`` over one block per shard (never one packed block: Ray's
   readers merge small inputs and the map would run on one CPU); each task reads its shard in
   the stage's ``batch_size`` batches and emits ``(band, bucket, idx)`` for every document with
   shingles.
2. **band grouping** — in the same Ray Data execution: ``repartition(keys=["band", "bucket"])``
   (hash shuffle), then every block grouped with polars (one call per block, not per group: no
   ``map_groups``). Candidate pairs are the local stage's: all pairs of a bucket up to 64
   members, a chain of the sorted members above. (These are *pairs to verify*; a star of
   unverified edges per bucket would change which pairs pass the exact check, so it would not
   give the local clusters.)
3. **shingle sets** — one Ray task per shard computes the sorted unique shingle hashes of its
   candidate documents only (and their ``id, length[, score]``), kept in the object store.
4. **verify + components** — ``driver``: the candidate pairs are collected (de-duplicated across
   bands), verified by Ray tasks grouped by shard pair (each gets only its two set tables as
   resolved arguments) and labelled with the local ``components`` (smallest member index).
   ``large_star``: Ray tasks hash-split the pairs on ``(shard_i, shard_j)``, one task per part
   de-duplicates and verifies them; the verified edges go through the large-star / small-star
   loop (Kiveris et al., SoCC 2014), each round two hash shuffles as waves of Ray tasks, until
   they form stars centred on each component's minimum — the same labels. ``auto``: ``driver`` up to
   ``edge_limit`` candidate pairs.
5. **representatives** — for cluster members only (no n-sized array on the driver): the local
   rule (longest / earliest / best_quality, ties earliest) and the exact Jaccard to the
   representative (Ray tasks over the set tables).

Verification is the local one (``|x & y| / (|x| + |y| - |x & y|) >= threshold`` on unique
shingle-hash sets, float64), so the written files are byte-identical to a local run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.near_dedup import (
    CLUSTERS_FILE,
    band_hashes,
    check_columns,
    components,
    permutations,
    shingle_hashes,
    signatures,
)
from schemas.config.dedup import NearDedupConfig
from schemas.errors import ConfigError
from schemas.io import write_parquet

METHODS = ("auto", "driver", "large_star")
#: ``auto`` uses the driver method up to this many candidate pairs (16 bytes each on the driver)
DRIVER_EDGE_LIMIT = 20_000_000
#: candidate buckets larger than this are chained instead of all-pairs (as the local stage)
MAX_GROUP = 64


# --- 1. signatures --------------------------------------------------------------------------
def _columns(config: NearDedupConfig) -> list[str]:
    score = config.score_column if config.representative == "best_quality" else None
    return ["id", "text"] + ([score] if score else [])


def _signature_block(batch: dict[str, Any], *, config: NearDedupConfig, a: np.ndarray, b: np.ndarray,
                     bands: int, rows: int) -> pa.Table:
    """One shard -> ``(band, bucket, idx)`` rows of its documents with shingles (same batches,
    shingles, MinHash and band hashes as the local stage)."""
    import pyarrow.parquet as pq

    np.seterr(over="ignore")
    out = []
    for path, base in zip(batch["path"].tolist(), batch["base"].tolist()):
        pos = int(base)
        pf = pq.ParquetFile(path)
        check_columns(pf.schema_arrow.names, config)
        for rb in pf.iter_batches(batch_size=config.batch_size, columns=["text"]):
            m = rb.num_rows
            hashes, counts = shingle_hashes(rb.column("text"), ngram=config.ngram)
            bh = band_hashes(signatures(hashes, counts, a, b), bands, rows)
            has = np.nonzero(counts > 0)[0]
            out.append(pa.table({
                "band": np.tile(np.arange(bands, dtype=np.int32), len(has)),
                "bucket": np.ascontiguousarray(bh[has]).reshape(-1),
                "idx": np.repeat(has.astype(np.int64) + pos, bands),
            }))
            pos += m
    if not out:
        return pa.table({"band": pa.array([], pa.int32()), "bucket": pa.array([], pa.uint64()),
                         "idx": pa.array([], pa.int64())})
    return pa.concat_tables(out)


def _bucket_pairs(t: pa.Table, *, offsets: np.ndarray) -> pa.Table:
    """All (i < j) pairs of each (band, bucket) group of this block; chains above MAX_GROUP members."""
    import polars as pl

    df = pl.from_arrow(t)
    g = (df.group_by(["band", "bucket"]).agg(pl.col("idx").sort(), pl.len().alias("n"))
         .filter(pl.col("n") >= 2).with_row_index("gid"))
    small = g.filter(pl.col("n") <= MAX_GROUP).select("gid", "idx").explode("idx")
    pairs = [small.join(small, on="gid", suffix="_j").filter(pl.col("idx") < pl.col("idx_j"))
             .select(pl.col("idx").alias("i"), pl.col("idx_j").alias("j"))]
    big = g.filter(pl.col("n") > MAX_GROUP).select("gid", "idx").explode("idx")
    if big.height:
        pairs.append(big.with_columns(pl.col("idx").shift(-1).over("gid").alias("j")).drop_nulls("j")
                     .select(pl.col("idx").alias("i"), pl.col("j").cast(pl.Int64)))
    out = pl.concat(pairs).unique()
    i, j = out["i"].to_numpy(), out["j"].to_numpy()
    return pa.table({"i": i, "j": j, "si": np.searchsorted(offsets, i, side="right") - 1,
                     "sj": np.searchsorted(offsets, j, side="right") - 1})


def _block_nodes(t: pa.Table) -> np.ndarray:
    return np.unique(np.concatenate([t["i"].to_numpy(), t["j"].to_numpy(), np.zeros(0, np.int64)]))


# --- 3. exact shingle sets and Jaccard ----------------------------------------------------------
def _shard_sets(path: str, base: int, local: np.ndarray, config: NearDedupConfig) -> tuple[dict, pa.Table]:
    """For the given rows of one shard (``local``: sorted row numbers): their sorted unique shingle
    hashes (``idx, off, flat``) and their ``idx, id, length[, score]`` (for representatives)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    np.seterr(over="ignore")
    t = pq.read_table(path, columns=_columns(config)).take(pa.array(local))
    text = t.column("text")
    hashes, counts = shingle_hashes(text, ngram=config.ngram)
    # per-document np.unique, vectorised: sort by (document, hash), drop repeats
    doc = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((hashes, doc))
    h, d = hashes[order], doc[order]
    keep = np.ones(len(h), bool)
    keep[1:] = (h[1:] != h[:-1]) | (d[1:] != d[:-1])
    flat, lens = h[keep], np.bincount(d[keep], minlength=len(counts)).astype(np.int64)
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    idx = local.astype(np.int64) + base
    meta = {"idx": pa.array(idx), "id": t.column("id").cast(pa.string()).combine_chunks(),
            "length": pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64()).combine_chunks()}
    if config.representative == "best_quality":
        meta["score"] = pc.fill_null(t.column(config.score_column).cast(pa.float64()), float("-inf")).combine_chunks()
    return {"idx": idx, "off": off, "flat": flat.astype(np.uint64)}, pa.table(meta)


def _gather(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``[starts[k], starts[k] + lens[k])``."""
    total = int(lens.sum())
    out_start = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) - np.repeat(out_start - starts, lens)


def _pair_jaccard(pi: np.ndarray, pj: np.ndarray, sets: list[dict[str, np.ndarray]], *, chunk: int = 20_000) -> np.ndarray:
    """Exact Jaccard of the shingle sets of documents ``pi[k]`` and ``pj[k]`` (float64, the local
    ``inter / (|x| + |y| - inter)``); ``sets`` must hold both documents of every pair."""
    idx = np.concatenate([s["idx"] for s in sets])
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    flat_parts, starts_parts, base = [], [], 0
    for s in sets:
        flat_parts.append(s["flat"])
        starts_parts.append(s["off"][:-1] + base)
        base += len(s["flat"])
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, np.uint64)
    starts_all = np.concatenate(starts_parts)[order]
    lens_all = np.concatenate([np.diff(s["off"]) for s in sets])[order]
    out = np.empty(len(pi), dtype=np.float64)
    for lo in range(0, len(pi), chunk):
        a = np.searchsorted(idx, pi[lo:lo + chunk])
        b = np.searchsorted(idx, pj[lo:lo + chunk])
        la, lb = lens_all[a], lens_all[b]
        m = len(a)
        tag = np.concatenate([np.repeat(np.arange(m), la), np.repeat(np.arange(m), lb)])
        val = np.concatenate([flat[_gather(starts_all[a], la)], flat[_gather(starts_all[b], lb)]])
        o = np.lexsort((val, tag))
        tag, val = tag[o], val[o]
        dup = (tag[1:] == tag[:-1]) & (val[1:] == val[:-1])
        inter = np.bincount(tag[1:][dup], minlength=m)
        union = la + lb - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            jac = inter.astype(np.float64) / union.astype(np.float64)
        jac[union == 0] = 1.0
        out[lo:lo + m] = jac
    return out


def _pairs_split(t: pa.Table, parts: int) -> list[Any]:
    """Candidate-pair block -> ``parts`` hash parts on (shard_i, shard_j), the shard ids each part
    touches, and the block's candidate documents (``2 * parts + 1`` return values)."""
    si, sj = t["si"].to_numpy(), t["sj"].to_numpy()
    part = _part_of(si.astype(np.uint64) * np.uint64(1_000_003) + sj.astype(np.uint64), parts)
    tables = [t.filter(pa.array(part == k)) for k in range(parts)]
    shards = [np.unique(np.concatenate([si[part == k], sj[part == k]])) for k in range(parts)]
    return [*tables, *shards, _block_nodes(t)]


def _verify_reduce(threshold: float, n_blocks: int, *args: Any) -> tuple[pa.Table, int]:
    """One hash part of the candidate pairs (``n_blocks`` tables) + the set tables of the shards
    it touches: de-duplicated pairs (a pair found in several bands is verified once) at or above
    ``threshold``, and their count."""
    import polars as pl

    tables, sets = args[:n_blocks], [x for x in args[n_blocks:] if x is not None]
    df = pl.from_arrow(pa.concat_tables(tables)).unique(["i", "j"])
    if df.height == 0:
        return pa.table({"i": pa.array([], pa.int64()), "j": pa.array([], pa.int64())}), 0
    pi, pj = df["i"].to_numpy(), df["j"].to_numpy()
    ok = _pair_jaccard(pi, pj, sets) >= threshold
    return pa.table({"i": pi[ok], "j": pj[ok]}), int(ok.sum())


def _jaccard_task(pi: np.ndarray, pj: np.ndarray, shard_ids: np.ndarray, *sets: dict) -> np.ndarray:
    return _pair_jaccard(pi, pj, [s for s in sets if s is not None])


# --- 4. components ------------------------------------------------------------------------------
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


def _warm() -> int:
    """Import what the Ray tasks need (run in advance in the workers that will run them)."""
    import polars  # noqa: F401

    from curation import near_dedup_ray  # noqa: F401

    return os.getpid()


def _part_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """Hash partition of uint64 keys (a splitmix64 step, modulo ``parts``)."""
    with np.errstate(over="ignore"):
        x = (keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(parts)).astype(np.int64)


def _hash_split(t: pa.Table, parts: int) -> list[pa.Table]:
    """Hash partition of an edge table on ``u``."""
    part = _part_of(t["u"].to_numpy(), parts)
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


def _large_star_components(edges_ds: Any, *, partitions: int, max_rounds: int = 200) -> tuple[np.ndarray, np.ndarray, int]:
    """Distributed connected components: alternate large-star and small-star until the edges
    form stars centred on each component's minimum. Returns (nodes, labels, rounds).

    Each round is a hash shuffle on ``u`` -> large-star (which also counts the nodes where the
    round's *input* is not yet a star forest) -> a hash shuffle on the larger end -> small-star,
    as plain Ray tasks over object-store blocks (``partitions`` per step): a Ray Data execution
    per step costs seconds of scheduling on a small cluster, these waves cost milliseconds. The
    edge list never reaches the driver until the result (one label per member node). A round
    whose count is 0 had a converged input: that input is the result.
    """
    import ray

    parts = max(2, int(partitions))
    map_task = ray.remote(num_cpus=1, num_returns=parts)(_ls_map)
    reduce_task = ray.remote(num_cpus=1, num_returns=parts + 1)(_ls_reduce)
    small_task = ray.remote(num_cpus=1)(_ss_reduce)
    edges = list(edges_ds.to_arrow_refs()) if hasattr(edges_ds, "to_arrow_refs") else list(edges_ds)
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


# --- helpers ------------------------------------------------------------------------------------
def _arrow_blocks(ds: Any) -> list[pa.Table]:
    import ray

    return [t for t in ray.get(ds.to_arrow_refs())]


def _shard_rows(shards: Sequence[Path]) -> np.ndarray:
    import pyarrow.parquet as pq

    return np.array([pq.ParquetFile(p).metadata.num_rows for p in shards], dtype=np.int64)


def resolve_method(method: str | None) -> str:
    method = method or "auto"
    if method not in METHODS:
        raise ConfigError("near_dedup on Ray: unknown components method", received=method,
                          expected=" | ".join(METHODS), fix="use driver (union-find on the driver), large_star "
                          "(distributed loop) or auto (driver up to DRIVER_EDGE_LIMIT candidate pairs)")
    return method


# --- the whole computation ----------------------------------------------------------------------
def cluster_on_ray(
    shards: Sequence[Path],
    *,
    config: NearDedupConfig,
    workers: int,
    method: str = "auto",
    edge_limit: int = DRIVER_EDGE_LIMIT,
    partitions: int | None = None,
) -> tuple[pa.Table, dict[str, Any], dict[str, float]]:
    """Cluster the documents of ``shards`` (in order) on the current Ray session.

    Returns the table of cluster members only (``id, cluster_id, is_representative, jaccard`` in
    input order, as ``near_dedup_clusters.parquet``), stats and a timing breakdown (seconds).
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.op_resource_reservation_enabled, ctx.enable_progress_bars)
    # Ray Data reserves half of the CPUs for the downstream shuffle operators by default: on a
    # small cluster the signature map then runs on one CPU while the shuffle waits. Our pipelines
    # are short and materialised, so let every operator use the whole cluster.
    ctx.op_resource_reservation_enabled = False
    ctx.enable_progress_bars = False
    try:
        return _cluster(shards, config=config, workers=workers, method=method, edge_limit=edge_limit,
                        partitions=partitions)
    finally:
        ctx.op_resource_reservation_enabled, ctx.enable_progress_bars = saved


def _cluster(shards: Sequence[Path], *, config: NearDedupConfig, workers: int, method: str, edge_limit: int,
             partitions: int | None) -> tuple[pa.Table, dict[str, Any], dict[str, float]]:
    import ray

    method = resolve_method(method)
    np.seterr(over="ignore")
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    workers = max(1, int(workers))
    parts = partitions or max(2, 2 * workers)
    bands, rows = config.band_params()
    a, b = permutations(config)
    counts = _shard_rows(shards)
    offsets = np.zeros(len(shards) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n = int(offsets[-1])
    common = dict(batch_format="pyarrow", batch_size=None)

    # Ray Data runs its tasks in its own worker processes; the Ray tasks below would otherwise
    # start (and import into) fresh workers after it, seconds each on a small machine. Start
    # them now, alongside the Ray Data map (zero-CPU tasks; kept alive when the cluster's
    # num_workers_soft_limit allows, see docs/ray.md).
    warm = [ray.remote(num_cpus=0)(_warm).remote() for _ in range(workers)]
    # 1+2. signatures (map_batches, one block per shard: a packed block would run on one CPU),
    # hash repartition on (band, bucket), candidate pairs with polars per block: one execution
    stats: dict[str, Any] = {"docs": n, "bands": bands, "rows": rows}
    items = [{"path": str(p), "base": int(offsets[k])} for k, p in enumerate(shards) if counts[k]]
    if not items:
        return _empty(), {**stats, "components": method, "verified_pairs": 0}, timing
    pairs = (ray.data.from_items(items, override_num_blocks=len(items))
             .map_batches(_signature_block, batch_size=1, batch_format="numpy", num_cpus=1, concurrency=workers,
                          fn_kwargs=dict(config=config, a=a, b=b, bands=bands, rows=rows))
             .repartition(parts, keys=["band", "bucket"])
             .map_batches(_bucket_pairs, fn_kwargs=dict(offsets=offsets), **common)
             .materialize())
    timing["signatures_and_band_shuffle"] = time.perf_counter() - t0
    spans = _op_spans(pairs)
    timing.update({"ops.map_signatures": _span(spans, "_signature_block"), "ops.shuffle_bands": _span(spans, "HashShuffle")})

    # 3. candidates -> shingle sets of candidate documents (one Ray task per shard) -> verify
    # 4. connected components of the verified pairs
    ray.get(warm)
    t1 = time.perf_counter()
    n_cand_rows = pairs.count()
    chosen = method if method != "auto" else ("driver" if n_cand_rows <= edge_limit else "large_star")
    stats["components"] = chosen
    if chosen == "driver":
        # the candidate list fits: dedupe it on the driver, verify with Ray tasks per shard pair
        tables = [t for t in _arrow_blocks(pairs) if t.num_rows]
        pi = np.concatenate([t["i"].to_numpy() for t in tables] + [np.zeros(0, np.int64)])
        pj = np.concatenate([t["j"].to_numpy() for t in tables] + [np.zeros(0, np.int64)])
        keys = np.unique(pi.astype(np.uint64) * np.uint64(max(n, 1)) + pj.astype(np.uint64))
        pi = (keys // np.uint64(max(n, 1))).astype(np.int64)
        pj = (keys % np.uint64(max(n, 1))).astype(np.int64)
        cand = np.unique(np.concatenate([pi, pj]))
    else:
        # nothing pair-sized on the driver: hash-split the pairs on (shard_i, shard_j) with Ray
        # tasks (which also report each part's shards and the candidate documents)
        split_task = ray.remote(num_cpus=1, num_returns=2 * parts + 1)(_pairs_split)
        splits = [split_task.remote(r, parts) for r in pairs.to_arrow_refs()]
        cand = np.unique(np.concatenate(ray.get([sp[2 * parts] for sp in splits]) + [np.zeros(0, np.int64)]))
    stats["candidate_docs"] = int(len(cand))
    timing["candidates"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    set_task = ray.remote(num_cpus=1, num_returns=2)(_shard_sets)
    set_refs: list[Any] = []
    meta_refs: list[Any] = []
    for k, p in enumerate(shards):
        lo, hi = np.searchsorted(cand, [offsets[k], offsets[k + 1]])
        if hi > lo:
            s_ref, m_ref = set_task.remote(str(p), int(offsets[k]), cand[lo:hi] - offsets[k], config)
        else:
            s_ref = m_ref = ray.put(None)
        set_refs.append(s_ref)
        meta_refs.append(m_ref)
    ray.wait(set_refs, num_returns=len(set_refs))  # verification then never blocks on them
    timing["shingle_sets"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    if chosen == "driver":
        ok = _jaccard_tasks(pi, pj, offsets=offsets, set_refs=set_refs, workers=workers) >= config.threshold
        vi, vj = pi[ok], pj[ok]
        n_edges = len(vi)
        timing["verify"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        nodes = np.unique(np.concatenate([vi, vj]))
        comp = components(len(nodes), np.searchsorted(nodes, vi), np.searchsorted(nodes, vj))
        labels = nodes[comp]  # nodes sorted: the smallest compact index is the smallest idx
    else:
        verify_task = ray.remote(num_cpus=1, num_returns=2)(_verify_reduce)
        touched = ray.get([sp[parts + k] for sp in splits for k in range(parts)])
        edge_refs, count_refs = [], []
        for k in range(parts):
            need = np.unique(np.concatenate([touched[blk * parts + k] for blk in range(len(splits))]
                                            + [np.zeros(0, np.int64)]))
            e_ref, c_ref = verify_task.remote(config.threshold, len(splits), *[sp[k] for sp in splits],
                                              *[set_refs[int(x)] for x in need])
            edge_refs.append(e_ref)
            count_refs.append(c_ref)
        n_edges = sum(ray.get(count_refs))
        timing["verify"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        if n_edges:
            nodes, labels, stats["large_star_rounds"] = _large_star_components(edge_refs, partitions=parts)
        else:
            nodes = labels = np.zeros(0, np.int64)
    stats["verified_pairs"] = int(n_edges)
    timing["components"] = time.perf_counter() - t4

    # 5. representatives and Jaccard to them, for cluster members only
    t5 = time.perf_counter()
    table = _members_table(nodes, labels, meta_refs=meta_refs, config=config, offsets=offsets,
                           set_refs=set_refs, workers=workers) if len(nodes) else _empty()
    stats["duplicate_clusters"] = int(len(np.unique(labels)))
    stats["duplicates"] = int(len(nodes) - stats["duplicate_clusters"])
    timing["representatives"] = time.perf_counter() - t5
    timing["total"] = time.perf_counter() - t0
    return table, stats, timing


def _op_spans(ds: Any) -> dict[str, tuple[float, float]]:
    """Operator name -> (first start, last end) of a materialised dataset (Ray Data stats; the
    report's map / shuffle split). Diagnostics only: {} when the stats API differs."""
    try:
        summary = ds._get_stats_summary()
        out: dict[str, tuple[float, float]] = {}

        def walk(node: Any) -> None:
            for parent in node.parents:
                walk(parent)
            for op in node.operators_stats:
                if op.earliest_start_time and op.latest_end_time:
                    out[op.operator_name] = (op.earliest_start_time, op.latest_end_time)

        walk(summary)
        return out
    except Exception:  # noqa: BLE001 - timings are best effort
        return {}


def _span(spans: dict[str, tuple[float, float]], part: str) -> float:
    hits = [v for k, v in spans.items() if part in k]
    return round(max(e for _, e in hits) - min(s for s, _ in hits), 3) if hits else 0.0


def _empty() -> pa.Table:
    return pa.table({"id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string()),
                     "is_representative": pa.array([], pa.bool_()), "jaccard": pa.array([], pa.float64())})


def _members_table(nodes: np.ndarray, labels: np.ndarray, *, meta_refs: list[Any], config: NearDedupConfig,
                   offsets: np.ndarray, set_refs: list[Any], workers: int) -> pa.Table:
    import ray

    score = config.representative == "best_quality"
    shard_of = np.searchsorted(offsets, nodes, side="right") - 1
    metas = []
    used = np.unique(shard_of).tolist()
    for k, m in zip(used, ray.get([meta_refs[k] for k in used])):
        want = nodes[shard_of == k]
        pos = np.searchsorted(m["idx"].to_numpy(), want)
        metas.append(m.take(pa.array(pos)))
    meta = pa.concat_tables(metas).combine_chunks()  # shard order then idx order = input order
    idx = meta["idx"].to_numpy()
    if not np.array_equal(idx, nodes):
        raise RuntimeError("near_dedup on Ray: member metadata does not match the component nodes")
    # representative: highest key, ties -> earliest (as the local lexsort: last key is primary)
    if config.representative == "longest":
        primary = -meta["length"].to_numpy()
    elif score:
        primary = -meta["score"].to_numpy()
    else:
        primary = idx
    o = np.lexsort((idx, primary, labels))
    lab_sorted = labels[o]
    first = np.ones(len(o), bool)
    first[1:] = lab_sorted[1:] != lab_sorted[:-1]
    comp_ids, comp_of = np.unique(labels, return_inverse=True)
    rep_pos = np.empty(len(comp_ids), dtype=np.int64)
    rep_pos[np.searchsorted(comp_ids, lab_sorted[first])] = o[first]
    rep = rep_pos[comp_of]  # position (in members) of each member's representative
    is_rep = rep == np.arange(len(idx))
    jac = np.ones(len(idx))
    nr = np.nonzero(~is_rep)[0]
    if len(nr):
        jac[nr] = _jaccard_tasks(idx[nr], idx[rep[nr]], offsets=offsets, set_refs=set_refs, workers=workers)
    ids = meta["id"]
    return pa.table({"id": ids, "cluster_id": ids.take(pa.array(rep)), "is_representative": pa.array(is_rep),
                     "jaccard": pa.array(jac, pa.float64())}).combine_chunks()


def _jaccard_tasks(pi: np.ndarray, pj: np.ndarray, *, offsets: np.ndarray, set_refs: list[Any], workers: int) -> np.ndarray:
    """Exact Jaccard of pairs held by the driver: Ray tasks over the shard set tables, pairs sorted
    by shard pair so that each task receives (as resolved arguments) only the sets it needs."""
    import ray

    si = np.searchsorted(offsets, pi, side="right") - 1
    sj = np.searchsorted(offsets, pj, side="right") - 1
    order = np.lexsort((sj, si))
    task = ray.remote(num_cpus=1)(_jaccard_task)
    refs, spans = [], []
    for part in np.array_split(order, max(1, min(2 * workers, len(order)))):
        if not len(part):
            continue
        shard_ids = np.unique(np.concatenate([si[part], sj[part]]))
        refs.append(task.remote(pi[part], pj[part], shard_ids, *[set_refs[int(k)] for k in shard_ids]))
        spans.append(part)
    out = np.empty(len(pi), dtype=np.float64)
    for part, res in zip(spans, ray.get(refs)):
        out[part] = res
    return out


def prepare_on_ray(stage: Any, shards: Sequence[Path], ctx: Any, *, workers: int, method: str = "auto",
                   edge_limit: int = DRIVER_EDGE_LIMIT) -> tuple[dict[str, Any], dict[str, float]]:
    """``NearDedupStage.prepare`` on Ray: writes the same ``near_dedup_clusters.parquet``."""
    table, stats, timing = cluster_on_ray(shards, config=stage.config, workers=workers, method=method,
                                          edge_limit=edge_limit)
    t0 = time.perf_counter()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(table, Path(ctx.work_dir) / CLUSTERS_FILE)
    timing["write"] = time.perf_counter() - t0
    return stats, timing


__all__ = ["DRIVER_EDGE_LIMIT", "METHODS", "cluster_on_ray", "prepare_on_ray", "resolve_method"]
