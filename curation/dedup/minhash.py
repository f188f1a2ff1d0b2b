"""MinHash kernels shared by the local and the Ray near-dup drivers (no driver logic here).

* **shingles** -- :mod:`curation.dedup.shingle` (words, word hashes, n-gram hashes).
* **MinHash** -- datasketch's permutations (affine32 scheme after its 32-bit fmix pre-mix) applied
  to all shingles of a batch at once; only the ``bands * rows`` permutations the bands use.
* **banding** -- one 64-bit hash per band; documents sharing a bucket in any band are candidate
  pairs (all pairs of a bucket up to :data:`MAX_GROUP` members, a chain of its sorted members above).
* **verification** -- exact Jaccard of the unique shingle-hash sets, read back from the spill the
  shingling wrote (:class:`SpillWriter`, :func:`read_sets`); a pair whose set sizes alone rule out
  the threshold is rejected without intersecting.
* **components and representatives** -- connected components of the verified pairs (label = the
  smallest member), one representative per component (longest / earliest / best_quality, ties:
  earliest).

Both drivers (:mod:`curation.dedup.near` in one process, :mod:`curation.dedup.near_ray` on Ray) call
these functions, so their clusters are the same by construction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.dedup.config import NearDedupConfig
from curation.dedup.shingle import mix64, shingle_hashes
from schemas.errors import SchemaError

#: candidate buckets larger than this are chained instead of all-pairs
MAX_GROUP = 64


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
            h = mix64(h ^ s[:, band * rows + r])
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


def lsh_params(config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """datasketch's permutations and (bands, rows) for ``config``."""
    bands, rows = config.band_params()
    a, b = permutations(config)
    return a, b, bands, rows


# --- input --------------------------------------------------------------------------------------
def input_columns(config: NearDedupConfig) -> list[str]:
    """The columns a driver reads: ``id``, ``text`` and the score column of best_quality."""
    score = config.score_column if config.representative == "best_quality" else None
    return ["id", "text"] + ([score] if score else [])


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


def batch_meta(batch: Any, config: NearDedupConfig, start: int) -> pa.Table:
    """``idx, id, length[, score]`` of a batch whose first row has global position ``start``
    (the representative rule's inputs; ``id`` keeps its type)."""
    import pyarrow.compute as pc

    n = batch.num_rows
    meta = {"idx": pa.array(np.arange(start, start + n, dtype=np.int64)), "id": batch.column("id"),
            "length": pc.cast(pc.fill_null(pc.utf8_length(batch.column("text")), 0), pa.int64())}
    if config.representative == "best_quality":
        meta["score"] = pc.fill_null(pc.cast(batch.column(config.score_column), pa.float64()), float("-inf"))
    return pa.table(meta)


# --- banding: candidate pairs -------------------------------------------------------------------
def _group_pairs(ids: np.ndarray, gstart: np.ndarray, size: np.ndarray, max_group: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of buckets ``ids[gstart[k]:gstart[k] + size[k]]`` (all pairs up to ``max_group``
    members, else a chain of the sorted members), vectorised per bucket size."""
    out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for s in np.unique(size).tolist():
        starts = gstart[size == s]
        members = np.sort(ids[starts[:, None] + np.arange(s)], axis=1).astype(np.int64)
        if s <= max_group:
            i, j = np.triu_indices(s, k=1)
        else:  # huge bucket: a chain keeps it connected for verification without n^2 pairs
            i = np.arange(s - 1)
            j = i + 1
        out_i.append(members[:, i].ravel())
        out_j.append(members[:, j].ravel())
    return np.concatenate(out_i), np.concatenate(out_j)


def bucket_pairs(ids: np.ndarray, keys: Sequence[np.ndarray], *, max_group: int = MAX_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with ``i < j`` for the ``ids`` that share a bucket (equal values in every array
    of ``keys``): all pairs of a bucket of up to ``max_group`` members, a chain above. Pairs may repeat."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort(tuple(np.asarray(k) for k in reversed(keys)))  # lexsort: the last key is primary
    ks = [np.asarray(k)[order] for k in keys]
    same = np.ones(len(ids) - 1, dtype=bool)
    for k in ks:
        same &= k[1:] == k[:-1]
    if not same.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    brk = np.nonzero(~same)[0] + 1  # runs of equal keys: starts and sizes, buckets of >= 2 members
    gstart = np.concatenate([[0], brk])
    size = np.concatenate([brk, [len(ids)]]) - gstart
    multi = size >= 2
    return _group_pairs(ids[order], gstart[multi], size[multi], max_group)


def candidate_pairs(bands_mm: np.ndarray, has: np.ndarray, *, max_group: int = MAX_GROUP) -> np.ndarray:
    """Unique (i < j) pairs of documents sharing a bucket in any band (uint64 keys ``i * n + j``)."""
    n = bands_mm.shape[0]
    idx_all = np.nonzero(has)[0]
    n64 = np.uint64(n)
    keys = [np.zeros(0, dtype=np.uint64)]
    for band in range(bands_mm.shape[1]):
        i, j = bucket_pairs(idx_all, [np.asarray(bands_mm[idx_all, band])], max_group=max_group)
        keys.append(i.astype(np.uint64) * n64 + j.astype(np.uint64))
    return np.unique(np.concatenate(keys))


# --- verification: the shingle spill and exact Jaccard -------------------------------------------
class SpillWriter:
    """Raw shingle hashes of documents in input order, written while they are computed (8 bytes a
    shingle, ``<prefix>.hashes``; shingles per document in ``<prefix>.counts.npy``), so that the
    candidates' exact sets are read back (:func:`read_sets`) instead of shingling again. Both
    files appear atomically on :meth:`close`."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = str(prefix)
        self._tmp = Path(self.prefix + ".hashes.tmp")
        self._file = open(self._tmp, "wb")
        self._counts: list[np.ndarray] = []

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(hashes, dtype=np.uint64).tobytes())
        self._counts.append(np.asarray(counts, dtype=np.int64))

    def close(self) -> None:
        self._file.close()
        counts_tmp = Path(self.prefix + ".counts.tmp.npy")
        np.save(counts_tmp, np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64))
        os.replace(self._tmp, self.prefix + ".hashes")
        os.replace(counts_tmp, self.prefix + ".counts.npy")


def read_sets(prefix: str | Path, docs: np.ndarray, *, base: int = 0) -> dict[str, np.ndarray]:
    """A set table of documents ``docs`` (sorted row numbers of the spill at ``prefix``): their sorted
    unique shingle hashes, concatenated (``flat``, document k at ``flat[off[k]:off[k + 1]]``), and
    their global positions ``idx = docs + base``."""
    counts = np.load(str(prefix) + ".counts.npy")
    start = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    sets = []
    with open(str(prefix) + ".hashes", "rb") as f:
        for d in np.asarray(docs).tolist():
            lo, hi = int(start[d]), int(start[d + 1])
            f.seek(lo * 8)
            v = np.sort(np.frombuffer(f.read((hi - lo) * 8), dtype=np.uint64))
            sets.append(v[np.concatenate(([True], v[1:] != v[:-1]))] if len(v) else v)
    off = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sets], out=off[1:])
    flat = np.concatenate(sets).astype(np.uint64) if sets else np.zeros(0, np.uint64)
    return {"idx": np.asarray(docs, dtype=np.int64) + base, "off": off, "flat": flat}


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


def pair_jaccard(pi: np.ndarray, pj: np.ndarray, sets: Sequence[dict[str, np.ndarray]], *,
                 threshold: float | None = None) -> np.ndarray:
    """Exact Jaccard of the shingle sets of documents ``pi[k]`` and ``pj[k]`` (global positions);
    ``sets`` (set tables of :func:`read_sets`) must hold both documents of every pair. With
    ``threshold``, pairs whose set sizes cannot reach it are not intersected and get 0.0."""
    out = np.zeros(len(pi), dtype=np.float64)
    if not len(pi):
        return out
    idx = np.concatenate([s["idx"] for s in sets])
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    flats, starts_parts, base = [], [], 0
    for s in sets:
        flats.append(s["flat"])
        starts_parts.append(s["off"][:-1] + base)
        base += len(s["flat"])
    flat = np.concatenate(flats) if flats else np.zeros(0, np.uint64)
    starts = np.concatenate(starts_parts)[order]
    lens = np.concatenate([np.diff(s["off"]) for s in sets])[order]
    a, b = np.searchsorted(idx, pi), np.searchsorted(idx, pj)
    todo = np.arange(len(pi)) if threshold is None else np.nonzero(may_reach(lens[a], lens[b], threshold))[0]
    sa, la, sb, lb = starts[a].tolist(), lens[a].tolist(), starts[b].tolist(), lens[b].tolist()
    for k in todo.tolist():
        out[k] = sorted_jaccard(flat[sa[k]:sa[k] + la[k]], flat[sb[k]:sb[k] + lb[k]])
    return out


# --- components and representatives ------------------------------------------------------------
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


def representatives(labels: np.ndarray, meta: pa.Table, config: NearDedupConfig) -> np.ndarray:
    """Position (in ``meta``) of each row's representative among the rows with its label: the
    longest text, the earliest row or the highest score (``config.representative``); ties: the
    earliest (smallest ``idx``)."""
    order = meta["idx"].to_numpy()
    if config.representative == "longest":
        primary = -meta["length"].to_numpy()
    elif config.representative == "best_quality":
        primary = -meta["score"].to_numpy()
    else:
        primary = order
    if not len(order):
        return np.zeros(0, np.int64)
    o = np.lexsort((order, primary, labels))  # lexsort: the last key is primary
    lab_sorted = labels[o]
    first = np.ones(len(o), bool)
    first[1:] = lab_sorted[1:] != lab_sorted[:-1]
    comp_ids, comp_of = np.unique(labels, return_inverse=True)
    rep_pos = np.empty(len(comp_ids), dtype=np.int64)
    rep_pos[np.searchsorted(comp_ids, lab_sorted[first])] = o[first]
    return rep_pos[comp_of]
