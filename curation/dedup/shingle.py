"""Shingles of the near-dup kernels: words, word hashes and n-gram hashes, vectorised over Arrow.

Words are the runs of word characters of the lowercased text (punctuation becomes a separator,
as in the bench's canonical shingling); a shingle is ``ngram`` consecutive words (a shorter,
non-empty document has one shingle of all its words). The words equal polars' lowercase +
``\\w+`` regex but are found by blanking non-word bytes and splitting (no regex match per word).
Word hashes come from polars, n-gram hashes are a mixed polynomial of them (uint64, numpy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_WORD_SEED = 0x5EED
#: odd 64-bit multipliers of the n-gram polynomial (fixed, so hashes are stable across runs)
_NGRAM_MULT = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
     0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64,
)


def mix64(x: np.ndarray) -> np.ndarray:
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
        return mix64(hashes ^ np.uint64(ngram)), counts
