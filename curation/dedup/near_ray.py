"""Near-duplicate clustering on Ray: the same clusters as :mod:`curation.dedup.near`, computed
on a Ray cluster (waves of Ray tasks over object-store blocks) instead of one process.

The near-dup stage offers it to a Ray executor as its distributed ``prepare`` (the stage hook
``NearDedupStage.prepare_distributed``; chosen by the recipe field ``ray_components``); it writes the
stage's ``near_dedup_clusters.parquet`` byte for byte as ``NearDedupStage.prepare`` does, after
which the shards are mapped by the stage's own ``process``. The kernels are the local driver's
(:mod:`curation.dedup.minhash`: ``batch_bands``, ``bucket_pairs``, ``read_sets``, ``pair_jaccard``,
``components``, ``representatives``), so shingles, MinHash, band hashes, candidate pairs, exact sets,
Jaccard and representatives are the local ones by construction.

Pipeline (``n`` documents in ``S`` input shards; global index = position in input order):

1. **signatures** — one Ray task per shard reads it in the stage's ``batch_size`` batches and
   emits ``(band, bucket, idx)`` for every document with shingles, hash-split on
   ``(band, bucket)`` into ``P`` parts (the map side of a hash shuffle; ``P = 2 × workers``).
2. **band grouping** — one Ray task per part concatenates that part of every shard and groups
   it (one sort per block, not per group). Candidate pairs are the local stage's
   (``bucket_pairs``): all pairs of a bucket up to 64 members, a chain of the sorted members above. (These are *pairs to verify*; a star of
   unverified edges per bucket would change which pairs pass the exact check, so it would not
   give the local clusters.)
3. **shingle sets** — the signature tasks spilled each shard's raw shingle hashes (as the local
   stage does; under the step's work folder, shared storage); one Ray task per shard reads back
   the sorted unique hashes of its candidate documents only (and their ``id, length[, score]``),
   kept in the object store.
4. **verify + components** — ``driver``: the candidate pairs are collected (de-duplicated across
   bands), verified by Ray tasks grouped by shard pair (each gets only its two set tables as
   resolved arguments) and labelled with the local ``components`` (smallest member index).
   ``large_star``: Ray tasks hash-split the pairs on ``(shard_i, shard_j)``, one task per part
   de-duplicates and verifies them; the verified edges go through the large-star / small-star
   loop (:mod:`curation.dedup.star`), each round two hash shuffles as waves of Ray tasks, until
   they form stars centred on each component's minimum — the same labels. ``auto``: ``driver`` up to
   ``ray_edge_limit`` candidate pairs.
5. **representatives** — for cluster members only (no n-sized array on the driver): the local
   rule (longest / earliest / best_quality, ties earliest) and the exact Jaccard to the
   representative (Ray tasks over the set tables).

Why tasks and not Ray Data: the data never flows through a dataset here (shards are files on
shared storage, the shuffles move a few MB of integers), and on small clusters Ray Data's fixed
cost per execution (its helper actors, the streaming executor) was larger than the work
(bench/scale/README.md has the measurements).

Verification is the local one (``|x & y| / (|x| + |y| - |x & y|) >= threshold`` on unique
shingle-hash sets, float64), so the written files are byte-identical to a local run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.dedup.config import NearDedupConfig
from curation.dedup.minhash import (
    SpillWriter,
    batch_bands,
    batch_meta,
    bucket_pairs,
    check_columns,
    components,
    input_columns,
    pair_jaccard,
    permutations,
    read_sets,
    representatives,
)
from curation.dedup.star import large_star_components, part_of


# --- 1. signatures --------------------------------------------------------------------------
def _signature_parts(path: str, base: int, *, config: NearDedupConfig, a: np.ndarray, b: np.ndarray,
                     bands: int, rows: int, parts: int, spill: str) -> list[pa.Table]:
    """One shard -> its ``(band, bucket, idx)`` rows (documents with shingles; same batches,
    shingles, MinHash and band hashes as the local stage), hash-split on ``(band, bucket)`` into
    ``parts`` tables (the map side of the band shuffle), and as last value the shard's
    ``idx, id, length[, score]``. The raw shingle hashes are spilled under ``spill`` as the local
    stage spills them: the candidates' exact sets are read back from there instead of shingling
    their texts again."""
    import pyarrow.parquet as pq

    np.seterr(over="ignore")
    out, metas = [], []
    pos = int(base)
    pf = pq.ParquetFile(path)
    check_columns(pf.schema_arrow.names, config)
    writer = SpillWriter(spill)
    for rb in pf.iter_batches(batch_size=config.batch_size, columns=input_columns(config)):
        bh, has_shingles, hashes, counts = batch_bands(rb.column("text"), config.ngram, a, b, bands, rows)
        writer.add(hashes, counts)
        metas.append(batch_meta(rb, config, pos))
        has = np.nonzero(has_shingles)[0]
        out.append(pa.table({
            "band": np.tile(np.arange(bands, dtype=np.int32), len(has)),
            "bucket": np.ascontiguousarray(bh[has]).reshape(-1),
            "idx": np.repeat(has.astype(np.int64) + pos, bands),
        }))
        pos += rb.num_rows
    writer.close()
    t = pa.concat_tables(out) if out else pa.table({"band": pa.array([], pa.int32()), "bucket": pa.array([], pa.uint64()),
                                                    "idx": pa.array([], pa.int64())})
    with np.errstate(over="ignore"):
        key = t["bucket"].to_numpy() ^ (t["band"].to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    part = part_of(key, parts)
    meta = pa.concat_tables(metas) if metas else batch_meta(pf.schema_arrow.empty_table(), config, pos)
    return [*(t.filter(pa.array(part == k)) for k in range(parts)), meta]


def _bucket_pairs(t: pa.Table, *, offsets: np.ndarray) -> pa.Table:
    """The unique candidate pairs of the (band, bucket) groups of this block, with their shards."""
    i, j = bucket_pairs(t["idx"].to_numpy(), [t["band"].to_numpy(), t["bucket"].to_numpy()])
    n = np.uint64(max(int(offsets[-1]), 1))
    keys = np.unique(i.astype(np.uint64) * n + j.astype(np.uint64))
    i, j = (keys // n).astype(np.int64), (keys % n).astype(np.int64)
    return pa.table({"i": i, "j": j, "si": np.searchsorted(offsets, i, side="right") - 1,
                     "sj": np.searchsorted(offsets, j, side="right") - 1})


def _pairs_reduce(offsets: np.ndarray, *tables: pa.Table) -> tuple[pa.Table, int]:
    """The reduce side of the band shuffle: one (band, bucket) hash part from every shard ->
    its candidate pairs and their count."""
    out = _bucket_pairs(pa.concat_tables(tables), offsets=offsets)
    return out, out.num_rows


def _block_nodes(t: pa.Table) -> np.ndarray:
    return np.unique(np.concatenate([t["i"].to_numpy(), t["j"].to_numpy(), np.zeros(0, np.int64)]))


# --- 3. exact shingle sets and Jaccard ----------------------------------------------------------
def _shard_sets(spill: str, base: int, local: np.ndarray, meta: pa.Table) -> tuple[dict, pa.Table]:
    """For the given rows of one shard (``local``: sorted row numbers): their set table, read back
    from the shard's spill, and their rows of ``meta``."""
    return read_sets(spill, local, base=base), meta.take(pa.array(local)).combine_chunks()


def _pairs_split(t: pa.Table, parts: int) -> list[Any]:
    """Candidate-pair block -> ``parts`` hash parts on (shard_i, shard_j), the shard ids each part
    touches, and the block's candidate documents (``2 * parts + 1`` return values)."""
    si, sj = t["si"].to_numpy(), t["sj"].to_numpy()
    part = part_of(si.astype(np.uint64) * np.uint64(1_000_003) + sj.astype(np.uint64), parts)
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
    ok = pair_jaccard(pi, pj, sets, threshold=threshold) >= threshold
    return pa.table({"i": pi[ok], "j": pj[ok]}), int(ok.sum())


def _jaccard_task(pi: np.ndarray, pj: np.ndarray, threshold: float | None, *sets: dict) -> np.ndarray:
    return pair_jaccard(pi, pj, [s for s in sets if s is not None], threshold=threshold)


# --- helpers ------------------------------------------------------------------------------------
def _shard_rows(shards: Sequence[Path]) -> np.ndarray:
    import pyarrow.parquet as pq

    return np.array([pq.ParquetFile(p).metadata.num_rows for p in shards], dtype=np.int64)


# --- the whole computation ----------------------------------------------------------------------
def cluster_on_ray(
    shards: Sequence[Path],
    *,
    config: NearDedupConfig,
    workers: int,
    partitions: int | None = None,
    spill_dir: Path | None = None,
) -> tuple[pa.Table, dict[str, Any], dict[str, float]]:
    """Cluster the documents of ``shards`` (in order) on the current Ray session.

    ``config.ray_components`` chooses how the components are computed (``driver``, ``large_star``,
    or ``auto``: driver up to ``config.ray_edge_limit`` candidate pairs).
    Returns the table of cluster members only (``id, cluster_id, is_representative, jaccard`` in
    input order, as ``near_dedup_clusters.parquet``), stats and a timing breakdown (seconds).
    The signature tasks spill raw shingle hashes under ``spill_dir`` (removed at the end): on a
    cluster it must be storage every node sees (the executor passes the step's work folder in the
    shared workspace); the default, a local temporary folder, suits a single-node Ray only.
    """
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(spill_dir).glob("near_dedup_ray-*"):  # the spill of a run that was killed
            shutil.rmtree(stale, ignore_errors=True)
    spill = Path(tempfile.mkdtemp(prefix="near_dedup_ray-", dir=spill_dir))
    try:
        return _cluster(shards, config=config, workers=workers, partitions=partitions, spill=spill)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _cluster(shards: Sequence[Path], *, config: NearDedupConfig, workers: int, partitions: int | None,
             spill: Path) -> tuple[pa.Table, dict[str, Any], dict[str, float]]:
    import ray

    method = config.ray_components
    if method not in ("auto", "driver", "large_star"):
        raise ValueError(f"cluster_on_ray: ray_components={method!r} is not a Ray-native method")
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

    # 1+2. signatures (one Ray task per shard, its rows hash-split on (band, bucket)), then the
    # reduce side of that shuffle: candidate pairs (the local bucket rule), one task per hash part
    stats: dict[str, Any] = {"docs": n, "bands": bands, "rows": rows}
    live = [k for k in range(len(shards)) if counts[k]]
    if not live:
        return _empty(), {**stats, "components": method, "verified_pairs": 0}, timing
    sig_task = ray.remote(num_cpus=1, num_returns=parts + 1)(_signature_parts)
    spills = {k: str(spill / f"{k:05d}") for k in live}
    mapped = [sig_task.remote(str(shards[k]), int(offsets[k]), config=config, a=a, b=b, bands=bands, rows=rows,
                              parts=parts, spill=spills[k]) for k in live]
    all_meta = {k: m[parts] for k, m in zip(live, mapped)}
    ray.wait([r for m in mapped for r in m], num_returns=(parts + 1) * len(mapped), fetch_local=False)
    timing["signatures"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    reduce_task = ray.remote(num_cpus=1, num_returns=2)(_pairs_reduce)
    reduced = [reduce_task.remote(offsets, *[m[k] for m in mapped]) for k in range(parts)]
    pair_refs = [r[0] for r in reduced]
    n_cand_rows = sum(ray.get([r[1] for r in reduced]))
    del mapped
    timing["band_shuffle"] = time.perf_counter() - t1

    # 3. candidates -> shingle sets of candidate documents (one Ray task per shard) -> verify
    # 4. connected components of the verified pairs
    t1 = time.perf_counter()
    chosen = method if method != "auto" else ("driver" if n_cand_rows <= config.ray_edge_limit else "large_star")
    stats["components"] = chosen
    if chosen == "driver":
        # the candidate list fits: dedupe it on the driver, verify with Ray tasks per shard pair
        tables = [t for t in ray.get(pair_refs) if t.num_rows]
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
        splits = [split_task.remote(r, parts) for r in pair_refs]
        cand = np.unique(np.concatenate(ray.get([sp[2 * parts] for sp in splits]) + [np.zeros(0, np.int64)]))
    stats["candidate_docs"] = int(len(cand))
    timing["candidates"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    set_task = ray.remote(num_cpus=1, num_returns=2)(_shard_sets)
    set_refs: list[Any] = []
    meta_refs: list[Any] = []
    for k in range(len(shards)):
        lo, hi = np.searchsorted(cand, [offsets[k], offsets[k + 1]])
        if hi > lo:
            s_ref, m_ref = set_task.remote(spills[k], int(offsets[k]), cand[lo:hi] - offsets[k], all_meta[k])
        else:
            s_ref = m_ref = ray.put(None)
        set_refs.append(s_ref)
        meta_refs.append(m_ref)
    ray.wait(set_refs, num_returns=len(set_refs))  # verification then never blocks on them
    timing["shingle_sets"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    if chosen == "driver":
        ok = _jaccard_tasks(pi, pj, offsets=offsets, set_refs=set_refs, workers=workers,
                            threshold=config.threshold) >= config.threshold
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
            nodes, labels, stats["large_star_rounds"] = large_star_components(edge_refs, partitions=parts)
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


def _empty() -> pa.Table:
    return pa.table({"id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string()),
                     "is_representative": pa.array([], pa.bool_()), "jaccard": pa.array([], pa.float64())})


def _members_table(nodes: np.ndarray, labels: np.ndarray, *, meta_refs: list[Any], config: NearDedupConfig,
                   offsets: np.ndarray, set_refs: list[Any], workers: int) -> pa.Table:
    import ray

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
    rep = representatives(labels, meta, config)  # position (in members) of each member's representative
    is_rep = rep == np.arange(len(idx))
    jac = np.ones(len(idx))
    nr = np.nonzero(~is_rep)[0]
    if len(nr):
        jac[nr] = _jaccard_tasks(idx[nr], idx[rep[nr]], offsets=offsets, set_refs=set_refs, workers=workers)
    ids = meta["id"].cast(pa.string())
    return pa.table({"id": ids, "cluster_id": ids.take(pa.array(rep)), "is_representative": pa.array(is_rep),
                     "jaccard": pa.array(jac, pa.float64())}).combine_chunks()


def _jaccard_tasks(pi: np.ndarray, pj: np.ndarray, *, offsets: np.ndarray, set_refs: list[Any], workers: int,
                   threshold: float | None = None) -> np.ndarray:
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
        refs.append(task.remote(pi[part], pj[part], threshold, *[set_refs[int(k)] for k in shard_ids]))
        spans.append(part)
    out = np.empty(len(pi), dtype=np.float64)
    for part, res in zip(spans, ray.get(refs)):
        out[part] = res
    return out


__all__ = ["cluster_on_ray"]
