"""Result lists over chunk scores: page-level evidence fused in, and a cap on passages per page.

* **Page-level fusion** (``page_weight`` > 0): each signal (BM25, dense) also ranks whole source pages - BM25 over
  a page-level index (file name + title + every chunk of the page), dense by the mean of the page's chunk
  embeddings - and a chunk's fused score adds ``page_weight / (rrf_k + its page's rank)`` to its own
  ``1 / (rrf_k + its rank)`` (reciprocal-rank fusion). A page whose words are spread over several chunks then
  lifts its chunks, although no single chunk holds every word of the question.
* **Per-page cap** (``max_per_page``): the result list takes at most that many chunks from one source page; the
  next-best chunk of another page takes the place. A reader given k passages then sees more pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation.index.backends import top_k


def pages_of(sources: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(page number of every chunk, page names in first-seen order): a page is a source document."""
    numbers: dict[str, int] = {}
    idx = np.fromiter((numbers.setdefault(s, len(numbers)) for s in sources), dtype=np.int64, count=len(sources))
    return idx, list(numbers)


def page_texts(sources: Sequence[str], chunk_texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(page names, one text per page): the page's indexed chunk texts joined in chunk order."""
    idx, names = pages_of(sources)
    parts: list[list[str]] = [[] for _ in names]
    for p, t in zip(idx, chunk_texts):
        parts[p].append(t)
    return names, ["\n\n".join(p) for p in parts]


def page_embeddings(chunk_emb: np.ndarray, page_idx: np.ndarray, n_pages: int) -> np.ndarray:
    """One normalised embedding per page: the mean of its chunks' embeddings."""
    emb = np.zeros((n_pages, chunk_emb.shape[1]), dtype=np.float32)
    np.add.at(emb, page_idx, chunk_emb)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def ranks(scores: np.ndarray, *, positive: bool) -> np.ndarray:
    """1-based rank of every item by score (ties by position); items left out (score <= 0 when ``positive``): inf."""
    order = top_k(scores, scores.shape[0])
    if positive:
        order = order[scores[order] > 0]
    out = np.full(scores.shape[0], np.inf)
    out[order] = np.arange(1, len(order) + 1)
    return out


def fuse(signals: Sequence[tuple[np.ndarray, float, np.ndarray | None]], *, n: int, rrf_k: int,
         page_idx: np.ndarray | None = None, page_weight: float = 0.0) -> np.ndarray:
    """Reciprocal-rank fusion of chunk rankings, each with its weight and (optionally) its page ranks.

    ``signals``: (best-first chunk indices, weight, rank of every page or None). A chunk in a ranking scores
    ``weight / (rrf_k + rank)``, plus ``weight * page_weight / (rrf_k + page rank)`` when its page is ranked.
    Only chunks some ranking returned score above 0."""
    fused = np.zeros(n, dtype=np.float64)
    for ranking, weight, page_rank in signals:
        fused[ranking] += weight / (rrf_k + np.arange(1, len(ranking) + 1))
        if page_weight > 0 and page_rank is not None and page_idx is not None and len(ranking):
            fused[ranking] += weight * page_weight / (rrf_k + page_rank[page_idx[ranking]])  # 1/inf = 0
    return fused


def select(scores: np.ndarray, k: int, *, positive: bool, page_idx: np.ndarray | None = None,
           max_per_page: int | None = None) -> list[int]:
    """The best ``k`` chunk indices (best first, ties by position), at most ``max_per_page`` from one page."""
    n = scores.shape[0]
    if max_per_page is None or page_idx is None:
        return [int(i) for i in top_k(scores, k) if not positive or scores[i] > 0]
    window = min(n, 4 * k)
    while True:
        picked: list[int] = []
        taken: dict[int, int] = {}
        for i in top_k(scores, window):
            if positive and scores[i] <= 0:
                break
            p = int(page_idx[i])
            if taken.get(p, 0) < max_per_page:
                taken[p] = taken.get(p, 0) + 1
                picked.append(int(i))
                if len(picked) == k:
                    return picked
        else:
            if window < n:
                window = min(n, window * 4)
                continue
        return picked
