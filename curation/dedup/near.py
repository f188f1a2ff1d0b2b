"""Near-duplicate dedup with MinHash LSH (a global stage), vectorised over Arrow batches.

Pipeline (all numpy/polars per batch, no per-document Python loop on the hot path):

1. **Shingles** — words are the runs of word characters of the lowercased text (punctuation
   becomes a separator, as in the bench's canonical shingling); a shingle is ``ngram``
   consecutive words (a shorter, non-empty document has one shingle of all its words). The
   words equal polars' lowercase + ``\\w+`` regex but are found by blanking non-word bytes and
   splitting (no regex match per word). Word hashes come from polars, n-gram hashes are a
   mixed polynomial of them (uint64, numpy).
2. **MinHash** — datasketch's permutations (``MinHash(num_perm, seed).permutations``, its
   default ``affine32`` scheme ``a*h+b mod 2^32`` after its 32-bit fmix pre-mix) applied to all
   shingles of a batch at once, in cache-sized groups of whole documents; per-document minima
   with one ``np.minimum.reduceat`` per group. Only the ``bands * rows`` permutations the bands
   use are computed.
3. **LSH** — one 64-bit hash per band (bands/rows from ``datasketch.lsh._optimal_param`` for a
   candidate threshold slightly below ``threshold``, for recall). Band hashes are spilled to a
   file and read back as a memmap, so memory holds no signatures or texts.
4. **Verify** — candidate pairs (same bucket in any band) are checked with exact Jaccard of the
   shingle-hash sets. The raw shingle hashes of every batch are spilled to disk as they are
   computed (8 bytes per word, in ``spill_dir``) and read back for candidate documents only,
   so no second shingling pass; pairs whose set sizes alone rule out the threshold exit early.
5. **Components** — connected components of verified pairs (vectorised label propagation), one
   representative per cluster (longest / earliest / best_quality, ties: earliest), deterministic.

Batches are hashed by a thread pool (``workers`` threads; polars, numpy and Arrow release the
GIL) and consumed in input order; results do not depend on ``workers`` or ``batch_size``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.arrow import decisions
from curation.dedup.config import NearDedupConfig
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


#: byte translation table: ASCII word characters (regex ``\w``: letters, digits, underscore) map
#: to themselves, every other ASCII byte to a space; bytes >= 0x80 are kept (classified per code point)
_ASCII_MAP = bytes(c if c >= 0x80 or chr(c).isalnum() or c == 0x5F else 0x20 for c in range(256))
_UTF8_LEN = np.array([1] * 0xC0 + [2] * 0x20 + [3] * 0x10 + [4] * 0x10, dtype=np.int64)


def _word_hashes(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    r"""Words per document and the flat polars hashes of the words (``\w+`` runs of the lowercased text).

    The same words as polars' ``str.to_lowercase().str.extract_all(r"\w+")`` (a test checks it on
    real and adversarial Unicode text) at a lower cost than a regex match per word: every byte of a
    non-word character becomes a space (ASCII by a translation table; a non-ASCII code point is
    classified by the same regex engine, once per distinct code point of the batch) and the text is
    split on spaces.
    """
    import polars as pl
    import pyarrow.compute as pc

    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        s = pl.Series("t", texts.cast(pa.large_string())).fill_null("")
    else:
        s = pl.Series("t", list(texts), dtype=pl.String).fill_null("")
    n = len(s)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    low = s.str.to_lowercase().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(low, pa.ChunkedArray):
        low = low.combine_chunks()
    low = low.cast(pa.large_string())
    _, off_buf, data_buf = low.buffers()
    off = np.frombuffer(off_buf, dtype=np.int64, count=n + 1, offset=low.offset * 8)
    lo, hi = int(off[0]), int(off[-1])
    raw = memoryview(data_buf)[lo:hi] if data_buf is not None else memoryview(b"")
    data = bytearray(raw).translate(_ASCII_MAP)
    arr = np.frombuffer(raw, dtype=np.uint8)
    lead = np.flatnonzero(arr >= 0xC0)  # first byte of every non-ASCII code point
    if len(lead):
        size = _UTF8_LEN[arr[lead]]
        cp = arr[lead].astype(np.int64) & np.where(size == 2, 0x1F, np.where(size == 3, 0x0F, 0x07))
        for k in range(1, 4):
            more = size > k
            cp[more] = (cp[more] << 6) | (arr[lead[more] + k].astype(np.int64) & 0x3F)
        uniq, inv = np.unique(cp, return_inverse=True)
        word = pl.Series("c", [chr(c) for c in uniq.tolist()], dtype=pl.String).str.contains(r"^\w$").to_numpy()[inv]
        out = np.frombuffer(data, dtype=np.uint8)
        for k in range(4):  # blank every byte of the non-word code points
            sel = ~word & (size > k)
            out[lead[sel] + k] = 0x20
    mapped = pa.LargeStringArray.from_buffers(n, pa.py_buffer(off - lo), pa.py_buffer(data))
    del s, low, raw, arr, data_buf  # the lowercased copies are no longer needed (bounded batch memory)
    lists = pc.ascii_split_whitespace(mapped)  # a run of spaces is one separator; text edges give ""
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = lists.flatten()
    wh = pl.Series("w", flat).hash(seed=_WORD_SEED).to_numpy().astype(np.uint64, copy=False) if len(flat) \
        else np.zeros(0, np.uint64)
    empty = pc.equal(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        counts -= np.bincount(np.repeat(np.arange(n), counts)[empty], minlength=n)
        wh = wh[~empty]
    return counts, wh


def shingle_hashes(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, *, ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 shingle hashes of every document and ``counts`` (shingles per document).

    Duplicated shingles inside a document are kept (harmless for MinHash; use ``np.unique``
    per document for set semantics). Thread-safe; the heavy kernels (polars' regex, numpy)
    release the GIL, so batches can be hashed by several threads at once.
    """
    lens, wh = _word_hashes(texts)
    with np.errstate(over="ignore"):
        n_docs = len(lens)
        ends = np.cumsum(lens)
        starts = ends - lens
        total = int(ends[-1]) if n_docs else 0
        mult = _mults(ngram)
        # window starting at word i: h[i] = sum_k w[i+k] * m_k (only windows inside a document are kept)
        acc = wh * mult[0]
        for k in range(1, ngram):
            acc[:total - k] += wh[k:] * mult[k]
        valid = np.ones(total, dtype=bool)
        for k in range(1, ngram):  # the last ngram-1 words of a document start no full window
            sel = lens >= k
            valid[ends[sel] - k] = False
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


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix datasketch applies to hash values in its
    affine32 scheme (tested equal to datasketch's MinHash). Written out here so that hashing in a
    worker process does not import datasketch, whose package import pulls in scipy (~0.7 s)."""
    h = np.asarray(h, dtype=np.uint32).copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return h


def signatures(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """uint32 MinHash signatures (docs x num_perm); documents without shingles get all 0xFFFFFFFF.

    Equal to datasketch's ``MinHash(num_perm, seed)`` (affine32 scheme) fed the upper 32 bits of
    each shingle hash. Work goes in groups of whole documents of about ``chunk`` shingles, so the
    ``num_perm x chunk`` block of permuted values stays in the CPU cache and every document's
    minimum is one ``reduceat`` (no merging across blocks).
    """
    n_docs, num_perm = len(counts), len(a)
    sig = np.full((num_perm, n_docs), 0xFFFFFFFF, dtype=np.uint32)  # perm-major: reduceat on contiguous rows
    if n_docs == 0 or len(hashes) == 0:
        return np.ascontiguousarray(sig.T)
    with np.errstate(over="ignore"):
        hv = fmix32((hashes >> np.uint64(32)).astype(np.uint32))  # 32-bit hash values, as datasketch
        counts = np.asarray(counts, dtype=np.int64)
        nz = np.nonzero(counts)[0]
        ends = np.cumsum(counts)[nz]
        starts = ends - counts[nz]
        # groups of consecutive documents by the block their first shingle falls into; a document
        # longer than ``chunk`` is a group of its own (processed in one larger block)
        g = starts // chunk
        brk = np.nonzero(g[1:] != g[:-1])[0] + 1
        gs = np.concatenate([[0], brk]).tolist()
        ge = np.concatenate([brk, [len(nz)]]).tolist()
        a_col, b_col = np.asarray(a, np.uint32)[:, None], np.asarray(b, np.uint32)[:, None]
        buf = np.empty(num_perm * 2 * chunk, dtype=np.uint32)
        for i, j in zip(gs, ge):
            lo, hi = int(starts[i]), int(ends[j - 1])
            m = hi - lo
            p = (buf[:num_perm * m] if num_perm * m <= len(buf) else np.empty(num_perm * m, np.uint32)).reshape(num_perm, m)
            np.multiply(a_col, hv[None, lo:hi], out=p)
            p += b_col
            sig[:, nz[i:j]] = np.minimum.reduceat(p, starts[i:j] - lo, axis=1)
    return np.ascontiguousarray(sig.T)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per (document, band) from the band's ``rows`` signature values."""
    n = sig.shape[0]
    out = np.zeros((n, bands), dtype=np.uint64)
    s = sig.astype(np.uint64)
    for band in range(bands):
        h = np.full(n, ((band + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for r in range(rows):
            h = _mix64(h ^ s[:, band * rows + r])
        out[:, band] = h
    return out


def batch_bands(texts, ngram: int, a: np.ndarray | Future, b: np.ndarray | None = None, bands: int = 0, rows: int = 0):
    """One batch: band hashes, has-shingles flags and the raw shingle hashes (for verification).

    ``a`` may be a future of ``(a, b, bands, rows)``: shingling (no datasketch needed) then runs while
    datasketch/scipy are still being imported for the permutations and band parameters.
    """
    hashes, counts = shingle_hashes(texts, ngram=ngram)
    if isinstance(a, Future):
        a, b, bands, rows = a.result()
    used = bands * rows  # only the permutations the bands use
    sig = signatures(hashes, counts, a[:used], b[:used])
    return band_hashes(sig, bands, rows), counts > 0, hashes, counts


def _lsh_params(config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """datasketch's permutations and (bands, rows) for ``config``."""
    bands, rows = config.band_params()
    a, b = permutations(config)
    return a, b, bands, rows


def _group_pairs(ids: np.ndarray, gstart: np.ndarray, size: np.ndarray, n: int, max_group: int) -> list[np.ndarray]:
    """Pair keys of buckets ``ids[gstart[k]:gstart[k] + size[k]]`` (all pairs up to ``max_group``
    members, else a chain of the sorted members), vectorised per bucket size."""
    keys = []
    n64 = np.uint64(n)
    for s in np.unique(size).tolist():
        starts = gstart[size == s]
        members = np.sort(ids[starts[:, None] + np.arange(s)], axis=1).astype(np.uint64)
        if s <= max_group:
            i, j = np.triu_indices(s, k=1)
        else:  # huge bucket: a chain keeps it connected for verification without n^2 pairs
            i = np.arange(s - 1)
            j = i + 1
        keys.append((members[:, i] * n64 + members[:, j]).ravel())
    return keys


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
        # group starts/sizes of runs of equal hashes with >= 2 members
        brk = np.nonzero(~same)[0] + 1
        gstart = np.concatenate([[0], brk])
        size = np.concatenate([brk, [len(hs)]]) - gstart
        multi = size >= 2
        keys += _group_pairs(ids, gstart[multi], size[multi], n, max_group)
    if not keys:
        return np.zeros(0, dtype=np.uint64)
    return np.unique(np.concatenate(keys))


def sorted_jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if len(x) == 0 and len(y) == 0:
        return 1.0
    if len(x) > len(y):
        x, y = y, x
    if len(x) == 0:
        return 0.0
    pos = np.searchsorted(y, x)
    pos[pos == len(y)] = 0
    inter = int(np.count_nonzero(y[pos] == x))
    return inter / (len(x) + len(y) - inter)


def may_reach(ni: np.ndarray, nj: np.ndarray, threshold: float) -> np.ndarray:
    """Pairs whose set sizes allow a Jaccard >= ``threshold`` (J <= min/max; float J <= float
    min/max by monotone rounding): the others are rejected without intersecting."""
    lo, hi = np.minimum(ni, nj), np.maximum(ni, nj)
    return (hi == 0) | (lo / np.maximum(hi, 1) >= threshold)


def _verify(pi: np.ndarray, pj: np.ndarray, sets: dict[int, np.ndarray], threshold: float) -> np.ndarray:
    """``jaccard(pi[k], pj[k]) >= threshold`` for every candidate pair, exactly.

    Early exit: Jaccard <= min(|x|, |y|) / max(|x|, |y|), so a pair whose set sizes differ more than
    the threshold allows is rejected without intersecting (the same answer, computed for free).
    """
    ok = np.zeros(len(pi), dtype=bool)
    if not len(pi):
        return ok
    size = {d: len(v) for d, v in sets.items()}
    ni = np.fromiter((size[i] for i in pi.tolist()), np.int64, len(pi))
    nj = np.fromiter((size[j] for j in pj.tolist()), np.int64, len(pj))
    maybe = may_reach(ni, nj, threshold)
    for k in np.nonzero(maybe)[0].tolist():
        ok[k] = sorted_jaccard(sets[int(pi[k])], sets[int(pj[k])]) >= threshold
    return ok


def read_sets(path: Path, offsets: np.ndarray, docs: np.ndarray) -> dict[int, np.ndarray]:
    """Sorted unique shingle hashes of ``docs`` (sorted indices), read from the shingle spill file."""
    sets: dict[int, np.ndarray] = {}
    with open(path, "rb") as f:
        for d in docs.tolist():
            lo, hi = int(offsets[d]), int(offsets[d + 1])
            f.seek(lo * 8)
            v = np.sort(np.frombuffer(f.read((hi - lo) * 8), dtype=np.uint64))
            sets[d] = v[np.concatenate(([True], v[1:] != v[:-1]))] if len(v) else v
    return sets


def check_columns(names: Sequence[str], config: NearDedupConfig) -> None:
    """The input has ``id`` and ``text`` (and the score column when representatives are chosen by it)."""
    if "id" not in names or "text" not in names:
        raise SchemaError("near_dedup: input lacks 'id'/'text' columns", received=list(names),
                          expected="columns id (int64 or string) and text (string)",
                          fix="run ingest first or rename the columns")
    score_col = config.score_column if config.representative == "best_quality" else None
    if score_col and score_col not in names:
        raise SchemaError(f"near_dedup: score column {score_col!r} missing", received=list(names),
                          expected=f"a numeric column {score_col!r}", fix="set score_column to an existing column")


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
    """Cluster documents streamed by ``make_batches()`` (batches with ``id, text``; called once).

    Returns a table ``id, cluster_id, is_rep, jaccard`` aligned with the input order
    (``jaccard``: exact Jaccard to the representative, 1.0 for representatives) and stats.

    Batches are hashed by ``workers`` threads (polars' regex, numpy and Arrow release the GIL, so
    the threads run in parallel without pickling texts or re-importing modules in worker
    processes); results are consumed in input order, so the output does not depend on ``workers``.
    """
    ids_chunks: list[pa.Array] = []
    lengths: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    has_list: list[np.ndarray] = []
    count_list: list[np.ndarray] = []
    score_col = config.score_column if config.representative == "best_quality" else None

    tmp = tempfile.TemporaryDirectory(dir=spill_dir, prefix="near_dedup-")
    spill_path = Path(tmp.name) / "bands.bin"  # uint64 band hashes, docs x bands
    shingle_path = Path(tmp.name) / "shingles.bin"  # raw uint64 shingle hashes, in document order
    n_docs = 0
    with open(spill_path, "wb") as spill, open(shingle_path, "wb") as shingle_spill:

        def consume(res):
            nonlocal n_docs
            bh, has, hashes, counts = res
            spill.write(np.ascontiguousarray(bh).tobytes())
            shingle_spill.write(np.ascontiguousarray(hashes, dtype=np.uint64).tobytes())
            has_list.append(has)
            count_list.append(counts.astype(np.int64, copy=False))
            n_docs += len(has)
            progress(len(has))

        def texts_of(batches):
            import pyarrow.compute as pc

            for batch in batches:
                check_columns(batch.schema.names, config)
                ids_chunks.append(batch.column("id"))
                text = batch.column("text")
                lengths.append(pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False).astype(np.int64))
                if score_col:
                    scores.append(pc.fill_null(batch.column(score_col).cast(pa.float64()), float("-inf")).to_numpy(zero_copy_only=False))
                yield text

        # a thread pool even for one worker: the main thread reads/decodes the next batch meanwhile;
        # datasketch (+scipy) is imported for the LSH parameters while the first batch is shingled
        with ThreadPoolExecutor(1, thread_name_prefix="near_dedup_params") as side, \
                ThreadPoolExecutor(workers, thread_name_prefix="near_dedup") as pool:
            params = side.submit(_lsh_params, config)
            pending: list = []
            try:
                for texts in texts_of(make_batches()):
                    pending.append(pool.submit(batch_bands, texts, config.ngram, params))
                    while len(pending) > workers:  # bounded in-flight batches, results in input order
                        consume(pending.pop(0).result())
                while pending:
                    consume(pending.pop(0).result())
            finally:
                for fut in pending:
                    fut.cancel()
            a, b, bands, rows = params.result()

    ids = pa.chunked_array(ids_chunks).combine_chunks() if ids_chunks else pa.array([], pa.string())
    n = n_docs
    has = np.concatenate(has_list) if has_list else np.zeros(0, bool)
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    bands_mm = np.memmap(spill_path, dtype=np.uint64, mode="r", shape=(n, bands)) if n else np.zeros((0, bands), np.uint64)
    keys = _candidate_pairs(bands_mm, has)
    del bands_mm
    pi = (keys // np.uint64(max(n, 1))).astype(np.int64)
    pj = (keys % np.uint64(max(n, 1))).astype(np.int64)

    # exact shingle sets of candidate documents only, read back from the spill file
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.concatenate(count_list), out=offsets[1:])
    cand = np.unique(np.concatenate([pi, pj]))
    sets = read_sets(shingle_path, offsets, cand)
    ok = _verify(pi, pj, sets, config.threshold)
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
        jac[i] = sorted_jaccard(sets[i], sets[int(rep[i])])
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
