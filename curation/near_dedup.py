"""Near-duplicate dedup with MinHash LSH (a global stage), vectorised over Arrow batches.

Pipeline (all numpy/polars per batch, no per-document Python loop on the hot path):

1. **Shingles** — words are the runs of word characters of the lowercased text (punctuation
   becomes a separator, as in the bench's canonical shingling); a shingle is ``ngram``
   consecutive words (a shorter, non-empty document has one shingle of all its words). Word
   hashes come from polars, n-gram hashes are a mixed polynomial of them (uint64, numpy).
2. **MinHash** — datasketch's permutations (``MinHash(num_perm, seed).permutations``, its
   default ``affine32`` scheme ``a*h+b mod 2^32``) applied to all shingles of a batch at once;
   per-document minima with ``np.minimum.reduceat``.
3. **LSH** — one 64-bit hash per band (bands/rows from ``datasketch.lsh._optimal_param`` for a
   candidate threshold slightly below ``threshold``, for recall). Only band hashes are kept and
   they are spilled to a ``.npy`` memmap on disk, so memory holds no signatures or texts.
4. **Verify** — candidate pairs (same bucket in any band) are checked with exact Jaccard of the
   shingle-hash sets, recomputed in a second pass for candidate documents only.
5. **Components** — connected components of verified pairs (scipy), one representative per
   cluster (longest / earliest / best_quality, ties: earliest), deterministic.

Batches are processed by a process pool in input order; results do not depend on ``workers``.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.arrow import decisions
from schemas.config.dedup import NearDedupConfig
from schemas.errors import SchemaError
from schemas.io import iter_parquet_batches, read_parquet, write_parquet
from schemas.stage import ShardResult, Stage, StageContext

CLUSTERS_FILE = "near_dedup_clusters.parquet"
_WORD_SEED = 0x5EED
_MASK32 = np.uint64(0xFFFFFFFF)
#: odd 64-bit multipliers of the n-gram polynomial (fixed, so hashes are stable across runs)
_NGRAM_MULT = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
     0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64,
)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, uint64 wraparound)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mults(n: int) -> np.ndarray:
    reps = -(-n // len(_NGRAM_MULT))
    base = np.tile(_NGRAM_MULT, reps)[:n]
    return base + np.uint64(2) * np.arange(n, dtype=np.uint64) * np.uint64(reps > 1)


def shingle_hashes(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, *, ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 shingle hashes of every document and ``counts`` (shingles per document).

    Duplicated shingles inside a document are kept (harmless for MinHash; use ``np.unique``
    per document for set semantics).
    """
    import polars as pl

    np.seterr(over="ignore")
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        s = pl.Series("t", texts.cast(pa.large_string())).fill_null("")
    else:
        s = pl.Series("t", list(texts), dtype=pl.String).fill_null("")
    words = s.str.to_lowercase().str.extract_all(r"\w+")
    lens = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    wh = flat.hash(seed=_WORD_SEED).to_numpy().astype(np.uint64) if len(flat) else np.zeros(0, np.uint64)
    n_docs = len(lens)
    starts = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    total = int(lens.sum())
    mult = _mults(ngram)
    # full windows: h[i] = sum_k w[i+k] * m_k over the padded flat array
    pad = np.concatenate([wh, np.zeros(ngram - 1, dtype=np.uint64)])
    acc = np.zeros(total, dtype=np.uint64)
    for k in range(ngram):
        acc += pad[k:k + total] * mult[k]
    doc_of = np.repeat(np.arange(n_docs), lens)
    pos = np.arange(total) - starts[doc_of]
    valid = pos <= (lens[doc_of] - ngram)
    hashes = acc[valid]
    counts = np.maximum(lens - ngram + 1, 0)
    short = np.nonzero((lens > 0) & (lens < ngram))[0]
    if len(short):
        # documents shorter than one shingle: one shingle of all their words
        extra = np.zeros(len(short), dtype=np.uint64)
        for k in range(ngram - 1):
            has = lens[short] > k
            extra[has] += wh[starts[short[has]] + k] * mult[k]
        insert_at = np.cumsum(counts)[short] - counts[short]  # position of the doc's (empty) run
        hashes = np.insert(hashes, insert_at, extra)
        counts[short] = 1
    return _mix64(hashes ^ np.uint64(ngram)), counts


def permutations(config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's MinHash permutations (a, b) for ``num_perm`` and ``seed`` (affine32 scheme)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=config.num_perm, seed=config.seed).permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def signatures(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, *, chunk: int = 1 << 15) -> np.ndarray:
    """uint32 MinHash signatures (docs x num_perm); documents without shingles get all 0xFFFFFFFF."""
    n_docs, num_perm = len(counts), len(a)
    sig = np.full((num_perm, n_docs), 0xFFFFFFFF, dtype=np.uint32)  # perm-major: reduceat on contiguous rows
    from datasketch.minhash import _fmix  # datasketch's pre-mix of hash values (affine32 scheme)

    hv = _fmix((hashes >> np.uint64(32)).astype(np.uint32), 32)  # 32-bit hash values, as datasketch
    doc_of = np.repeat(np.arange(n_docs), counts)
    a_col, b_col = a[:, None], b[:, None]
    for lo in range(0, len(hv), chunk):
        hi = min(lo + chunk, len(hv))
        phv = a_col * hv[None, lo:hi]
        phv += b_col
        d = doc_of[lo:hi]
        first = np.concatenate([[0], np.nonzero(np.diff(d))[0] + 1])
        mins = np.minimum.reduceat(phv, first, axis=1)
        docs = d[first]
        np.minimum(sig[:, docs], mins, out=mins)
        sig[:, docs] = mins
    sig = np.ascontiguousarray(sig.T)
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per (document, band) from the band's ``rows`` signature values."""
    n = sig.shape[0]
    out = np.zeros((n, bands), dtype=np.uint64)
    s = sig.astype(np.uint64)
    for band in range(bands):
        h = np.full(n, np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
        for r in range(rows):
            h = _mix64(h ^ s[:, band * rows + r])
        out[:, band] = h
    return out


def _batch_bands(texts: list, ngram: int, a: np.ndarray, b: np.ndarray, bands: int, rows: int):
    np.seterr(over="ignore")
    hashes, counts = shingle_hashes(texts, ngram=ngram)
    sig = signatures(hashes, counts, a, b)
    return band_hashes(sig, bands, rows), counts > 0


def _worker_init() -> None:
    os.environ["POLARS_MAX_THREADS"] = "1"


def _candidate_pairs(bands_mm: np.ndarray, has: np.ndarray, *, max_group: int = 64) -> np.ndarray:
    """Unique (i < j) pairs of documents sharing a bucket in any band (uint64 keys i*n+j)."""
    n = bands_mm.shape[0]
    idx_all = np.nonzero(has)[0]
    keys = []
    for band in range(bands_mm.shape[1]):
        h = np.asarray(bands_mm[idx_all, band])
        order = np.argsort(h, kind="stable")
        hs, ids = h[order], idx_all[order]
        same = hs[1:] == hs[:-1]
        if not same.any():
            continue
        # group starts/ends of runs of equal hashes with >= 2 members
        brk = np.nonzero(~same)[0] + 1
        gstart = np.concatenate([[0], brk])
        gend = np.concatenate([brk, [len(hs)]])
        size = gend - gstart
        pair = size == 2  # the common case, vectorised
        x, y = ids[gstart[pair]], ids[gstart[pair] + 1]
        lo_, hi_ = np.minimum(x, y), np.maximum(x, y)
        keys.append(lo_.astype(np.uint64) * np.uint64(n) + hi_.astype(np.uint64))
        for gs, ge in zip(gstart[size > 2].tolist(), gend[size > 2].tolist()):
            members = np.sort(ids[gs:ge])
            if len(members) <= max_group:
                i, j = np.triu_indices(len(members), k=1)
            else:  # huge bucket: a chain keeps it connected for verification without n^2 pairs
                i = np.arange(len(members) - 1)
                j = i + 1
            keys.append(members[i].astype(np.uint64) * np.uint64(n) + members[j].astype(np.uint64))
    if not keys:
        return np.zeros(0, dtype=np.uint64)
    return np.unique(np.concatenate(keys))


def _jaccard(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0 and len(y) == 0:
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph: label = smallest member index (vectorised)."""
    lab = np.arange(n)
    if len(i) == 0:
        return lab
    while True:
        m = np.minimum(lab[i], lab[j])
        new = lab.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]  # pointer jumping
        while True:
            nxt = new[new]
            if (nxt == new).all():
                break
            new = nxt
        if (new == lab).all():
            return lab
        lab = new


def cluster_batches(
    make_batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]],
    *,
    config: NearDedupConfig,
    workers: int = 1,
    spill_dir: Path | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Cluster documents streamed by ``make_batches()`` (called twice; batches with ``id, text``).

    Returns a table ``id, cluster_id, is_rep, jaccard`` aligned with the input order
    (``jaccard``: exact Jaccard to the representative, 1.0 for representatives) and stats.
    """
    np.seterr(over="ignore")
    bands, rows = config.band_params()
    a, b = permutations(config)
    ids_chunks: list[pa.Array] = []
    lengths: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    has_list: list[np.ndarray] = []
    score_col = config.score_column if config.representative == "best_quality" else None

    tmp = tempfile.TemporaryDirectory(dir=spill_dir, prefix="near_dedup-")
    spill_path = Path(tmp.name) / "bands.bin"
    n_docs = 0
    with open(spill_path, "wb") as spill:

        def consume(res):
            nonlocal n_docs
            bh, has = res
            spill.write(np.ascontiguousarray(bh).tobytes())
            has_list.append(has)
            n_docs += len(has)
            progress(len(has))

        def texts_of(batches):
            for batch in batches:
                if "id" not in batch.schema.names or "text" not in batch.schema.names:
                    raise SchemaError("near_dedup: input lacks 'id'/'text' columns", received=batch.schema.names,
                                      expected="columns id (int64 or string) and text (string)",
                                      fix="run ingest first or rename the columns")
                ids_chunks.append(batch.column("id"))
                text = batch.column("text")
                import pyarrow.compute as pc

                lengths.append(pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False).astype(np.int64))
                if score_col:
                    if score_col not in batch.schema.names:
                        raise SchemaError(f"near_dedup: score column {score_col!r} missing", received=batch.schema.names,
                                          expected=f"a numeric column {score_col!r}", fix="set score_column to an existing column")
                    scores.append(pc.fill_null(batch.column(score_col).cast(pa.float64()), float("-inf")).to_numpy(zero_copy_only=False))
                yield text

        if workers <= 1:
            for texts in texts_of(make_batches()):
                consume(_batch_bands(texts, config.ngram, a, b, bands, rows))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            old_env = os.environ.get("POLARS_MAX_THREADS")
            os.environ["POLARS_MAX_THREADS"] = "1"  # inherited by the spawned workers: one thread each
            try:
                pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
            finally:
                if old_env is None:
                    os.environ.pop("POLARS_MAX_THREADS", None)
                else:
                    os.environ["POLARS_MAX_THREADS"] = old_env
            with pool:
                pending: list = []
                for texts in texts_of(make_batches()):
                    pending.append(pool.submit(_batch_bands, texts.to_pylist(), config.ngram, a, b, bands, rows))
                    while len(pending) > 2 * workers:  # bounded in-flight batches, results in order
                        consume(pending.pop(0).result())
                for fut in pending:
                    consume(fut.result())

    ids = pa.chunked_array(ids_chunks).combine_chunks() if ids_chunks else pa.array([], pa.string())
    n = n_docs
    has = np.concatenate(has_list) if has_list else np.zeros(0, bool)
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    bands_mm = np.memmap(spill_path, dtype=np.uint64, mode="r", shape=(n, bands)) if n else np.zeros((0, bands), np.uint64)
    keys = _candidate_pairs(bands_mm, has)
    del bands_mm
    pi = (keys // np.uint64(max(n, 1))).astype(np.int64)
    pj = (keys % np.uint64(max(n, 1))).astype(np.int64)

    # second pass: exact shingle sets of candidate documents only
    need = np.zeros(n, bool)
    need[pi] = True
    need[pj] = True
    sets: dict[int, np.ndarray] = {}
    pos = 0
    for batch in make_batches():
        m = batch.num_rows
        local = np.nonzero(need[pos:pos + m])[0]
        if len(local):
            texts = batch.column("text").take(pa.array(local))
            hashes, counts = shingle_hashes(texts, ngram=config.ngram)
            ends = np.cumsum(counts)
            for k, doc in enumerate(local):
                sets[pos + int(doc)] = np.unique(hashes[ends[k] - counts[k]:ends[k]])
        pos += m
    ok = np.array([_jaccard(sets[i], sets[j]) >= config.threshold for i, j in zip(pi.tolist(), pj.tolist())], dtype=bool)
    vi, vj = pi[ok], pj[ok]
    comp = components(n, vi, vj)

    # representative: highest key, ties -> earliest (lexsort: last key is primary)
    order_idx = np.arange(n)
    if config.representative == "longest":
        primary = -length
    elif config.representative == "best_quality":
        primary = -np.concatenate(scores) if scores else np.zeros(n)
    else:
        primary = order_idx
    order = np.lexsort((order_idx, primary, comp))
    comp_sorted = comp[order]
    first = np.ones(n, bool)
    first[1:] = comp_sorted[1:] != comp_sorted[:-1]
    rep_of_comp = np.empty(comp.max() + 1 if n else 0, dtype=np.int64)
    rep_of_comp[comp_sorted[first]] = order[first]
    rep = rep_of_comp[comp] if n else np.zeros(0, np.int64)
    is_rep = rep == order_idx
    jac = np.ones(n)
    for i in np.nonzero(~is_rep)[0].tolist():
        jac[i] = _jaccard(sets[i], sets[int(rep[i])])
    sizes = np.bincount(comp) if n else np.zeros(0, np.int64)
    table = pa.table({"id": ids, "cluster_id": ids.take(pa.array(rep)), "is_rep": pa.array(is_rep),
                      "jaccard": pa.array(jac, pa.float64())})
    stats = {
        "docs": n, "bands": bands, "rows": rows, "candidate_pairs": int(len(keys)), "verified_pairs": int(ok.sum()),
        "clusters": int((sizes > 0).sum()), "duplicate_clusters": int((sizes > 1).sum()),
        "duplicates": int(n - (sizes > 0).sum()), "empty_docs": int((~has).sum()),
    }
    tmp.cleanup()
    return table, stats


def _resolve_workers(config: NearDedupConfig, workers: int) -> int:
    return max(1, int(config.workers or workers))


def cluster_texts(ids: Sequence, texts: Sequence[str], *, config: NearDedupConfig | None = None, workers: int = 1) -> list:
    """Cluster id of every document (the representative's id), aligned with ``ids``."""
    config = config or NearDedupConfig()
    if len(ids) != len(texts):
        raise SchemaError("cluster_texts: ids and texts differ in length", received=f"{len(ids)} ids, {len(texts)} texts",
                          expected="one id per text", fix="pass aligned sequences")
    id_arr = pa.array(list(ids))
    tbl = pa.table({"id": id_arr, "text": pa.array(list(texts), pa.string())})
    table, _ = cluster_batches(lambda: tbl.to_batches(max_chunksize=config.batch_size), config=config,
                               workers=_resolve_workers(config, workers), spill_dir=config.spill_dir)
    return table.column("cluster_id").to_pylist()


def dedup_file(input: Path, output: Path, *, config: NearDedupConfig, workers: int) -> dict:
    """Parquet ``id, text`` (id int64 or string) -> Parquet ``id, cluster_id`` (same type), atomically."""
    input, output = Path(input), Path(output)
    cols = ["id", "text"] + ([config.score_column] if config.representative == "best_quality" and config.score_column else [])

    def batches() -> Iterator[pa.RecordBatch]:
        return iter_parquet_batches(input, batch_size=config.batch_size, columns=cols)

    table, stats = cluster_batches(batches, config=config, workers=_resolve_workers(config, workers),
                                   spill_dir=config.spill_dir)
    write_parquet(table.select(["id", "cluster_id"]), output)
    return stats


class NearDedupStage(Stage[NearDedupConfig]):
    """Keeps one representative per near-duplicate cluster; the others are dropped with decisions."""

    kind = "global"
    version = "1"
    requires = {"id": pa.string(), "text": pa.string()}
    adds = {"cluster_id": pa.string()}

    def __init__(self, config: NearDedupConfig) -> None:
        super().__init__(config)
        self._clusters: dict[str, tuple[str, bool, float]] | None = None

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        cfg = self.config
        cols = ["id", "text"] + ([cfg.score_column] if cfg.representative == "best_quality" and cfg.score_column else [])

        def batches() -> Iterator[pa.RecordBatch]:
            for shard in shards:
                yield from iter_parquet_batches(shard, batch_size=cfg.batch_size, columns=cols)

        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        table, stats = cluster_batches(batches, config=cfg, workers=_resolve_workers(cfg, ctx.workers),
                                       spill_dir=cfg.spill_dir or ctx.work_dir, progress=ctx.progress)
        table = pa.table({"id": table["id"].cast(pa.string()), "cluster_id": table["cluster_id"].cast(pa.string()),
                          "is_representative": table["is_rep"], "jaccard": table["jaccard"]})
        # singletons are implicit (keep, own cluster id): store non-singleton members only
        import pyarrow.compute as pc

        counts = pc.value_counts(table["cluster_id"])
        multi = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        write_parquet(table.filter(pc.is_in(table["cluster_id"], value_set=multi)), ctx.work_dir / CLUSTERS_FILE)

    def _load_clusters(self, ctx: StageContext) -> dict[str, tuple[str, bool, float]]:
        if self._clusters is None:
            t = read_parquet(ctx.work_dir / CLUSTERS_FILE)
            self._clusters = {i: (c, r, s) for i, c, r, s in zip(t["id"].to_pylist(), t["cluster_id"].to_pylist(),
                                                                  t["is_representative"].to_pylist(), t["jaccard"].to_pylist())}
        return self._clusters

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        clusters = self._load_clusters(ctx)
        ids = table.column("id").cast(pa.string()).to_pylist()
        keep, cluster_col = [], []
        drop_ids, drop_scores, drop_detail = [], [], []
        keep_ids, keep_detail = [], []
        for i in ids:
            entry = clusters.get(i)
            if entry is None:
                keep.append(True)
                cluster_col.append(i)
            elif entry[1]:
                keep.append(True)
                cluster_col.append(entry[0])
                keep_ids.append(i)
                keep_detail.append({"cluster_id": entry[0]})
            else:
                keep.append(False)
                cluster_col.append(entry[0])
                drop_ids.append(i)
                drop_scores.append(entry[2])
                drop_detail.append({"cluster_id": entry[0]})
        mask = pa.array(keep, pa.bool_())
        out = table.append_column("cluster_id", pa.array(cluster_col, pa.string())).filter(mask)
        step = ctx.step
        dec = [
            decisions(keep_ids, stage=step, action="keep", reason="near_duplicate_representative", score=1.0, detail=keep_detail),
            decisions(drop_ids, stage=step, action="drop", reason="near_duplicate", score=drop_scores, detail=drop_detail),
        ]
        counters = Counter({"dropped:near_duplicate": len(drop_ids), "kept:representative": len(keep_ids)})
        return ShardResult(table=out, decisions=pa.concat_tables(dec), counters=counters)
