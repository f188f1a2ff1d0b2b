"""The stable reader API of a retrieval index folder (what synth, eval, the bundle and the CLI use).

    from curation.index import open_index
    index = open_index("workspace/demo/index/<fingerprint>")   # or the index/ folder inside it
    for hit in index.search("how do I restore a pg_dump archive?", k=5):
        print(hit.score, hit.source_id, hit.span, hit.title, hit.text[:80])

A folder holds ``index.json`` (format, backend, tokenizer and scoring settings, chunk count),
``chunks.parquet`` (chunk_id, source_id, doc_id, span_start, span_end, title, heading, text) and the
backend's files (``bm25/``, ``dense/``; ``bm25_pages/`` with page-level fusion). Its result-list settings
(per-page cap, page-level fusion, pseudo-relevance feedback, hybrid weights) are in ``index.json`` and apply to
every reader. It is self-contained: copy it anywhere and open it there
(a dense or hybrid index carries its embedding model in ``dense/model/`` unless built with
``copy_embedding_model: false``, which records the model folder's absolute path instead).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.index.backends import Bm25Backend, DenseBackend, top_k
from curation.index.ranking import fuse, page_embeddings, pages_of, ranks, select
from curation.index.tokenize import Tokenizer
from schemas.errors import ConfigError

FORMAT = 1
MANIFEST = "index.json"
CHUNKS_FILE = "chunks.parquet"
SUBDIR = "index"  # the index stage writes its folder here inside its step folder


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: ``text == document_text[span[0]:span[1]]`` of the document ``source_id``."""

    chunk_id: str
    source_id: str
    span: tuple[int, int]
    score: float
    text: str
    title: str | None


def resolve(path: str | Path) -> Path:
    """The index folder for a path that is the folder itself or a step folder holding ``index/``."""
    p = Path(path)
    for cand in (p, p / SUBDIR):
        if (cand / MANIFEST).is_file():
            return cand
    raise ConfigError("no retrieval index found", received=str(p),
                      expected=f"a folder with {MANIFEST} (or {SUBDIR}/{MANIFEST} in it)",
                      fix="run a recipe with an 'index' step (slmforge run RECIPE) and pass its folder, "
                          "e.g. <workspace>/index/<fingerprint>")


class Index:
    """A retrieval index opened from its folder; cheap to search many times (backends load once)."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        self.path = resolve(path)
        try:
            self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {self.path / MANIFEST}", received=f"{type(exc).__name__}: {exc}",
                              fix="the index folder was damaged or changed: rebuild it with the index step") from exc
        if self.manifest.get("format") != FORMAT:
            raise ConfigError("unsupported index format", received=self.manifest.get("format"), expected=FORMAT,
                              fix="rebuild the index with this version of slmforge")
        table = pq.read_table(self.path / CHUNKS_FILE)
        self._cols = {name: table.column(name).to_pylist()
                      for name in ("chunk_id", "source_id", "span_start", "span_end", "text", "title")}
        self.backend: str = self.manifest["backend"]
        s = self.manifest["settings"]
        self._bm25 = self._dense = None
        if self.backend in ("bm25", "hybrid"):
            tok = Tokenizer(**self.manifest["tokenizer"])
            self._bm25 = Bm25Backend(tokenizer=tok, method=s["method"], k1=s["k1"], b=s["b"]).open(self.path)
        if self.backend in ("dense", "hybrid"):
            inside = self.manifest.get("embedded_model")  # the model copied into this folder, else an outside one
            model = str(self.path / inside) if inside else self.manifest["embedding_model"]
            self._dense = DenseBackend(model_path=model, device=s.get("device", "cpu"))
            self._dense.open(self.path)
        self._rrf_k = s.get("rrf_k", 60)
        self._depth = s.get("fusion_depth", 100)
        # result-list settings (absent from indexes built before them: off)
        self._dense_weight = s.get("dense_weight", 1.0)
        self._max_per_page = s.get("max_per_page")
        self._page_weight = s.get("page_weight", 0.0)
        self._prf = (s.get("prf_terms", 0), s.get("prf_docs", 10), s.get("prf_weight", 0.5))
        self._page_idx, pages = pages_of(self._cols["source_id"])
        self._page_bm25 = self._page_emb = None
        if self._page_weight > 0:
            if self._bm25 is not None:
                self._page_bm25 = Bm25Backend(tokenizer=self._bm25.tokenizer, method=s["method"], k1=s["k1"], b=s["b"],
                                              folder="bm25_pages").open(self.path)
            if self._dense is not None:
                self._page_emb = page_embeddings(self._dense.embeddings, self._page_idx, len(pages))

    def __len__(self) -> int:
        return len(self._cols["chunk_id"])

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, backend={self.backend!r}, chunks={len(self)})"

    def _lexical(self, query: str) -> np.ndarray | None:
        """BM25 scores of every chunk (with pseudo-relevance feedback when configured); None: no query word known."""
        weights = self._bm25.query_weights(query)
        if not weights:
            return None
        scores = self._bm25.weighted_scores(weights)
        terms, docs, original = self._prf
        if terms > 0:
            scores = self._bm25.weighted_scores(self._bm25.expand(weights, scores, docs=docs, terms=terms,
                                                                  original_weight=original))
        return scores

    def _ranked(self, query: str, k: int, qemb: np.ndarray | None = None) -> list[tuple[int, float]]:
        dense = None
        if self._dense is not None:
            qemb = self._dense.embed([query])[0] if qemb is None else qemb
            dense = self._dense.embeddings @ qemb
        lex = self._lexical(query) if self._bm25 is not None else None
        cap = dict(page_idx=self._page_idx, max_per_page=self._max_per_page)
        if self.backend != "hybrid" and self._page_weight <= 0:  # one signal, its own scores
            scores = dense if self.backend == "dense" else lex
            if scores is None:
                return []
            return [(i, float(scores[i])) for i in select(scores, k, positive=self.backend == "bm25", **cap)]
        depth = max(self._depth, k)
        signals = []
        if dense is not None:
            page_rank = None if self._page_emb is None else ranks(self._page_emb @ qemb, positive=False)
            signals.append((top_k(dense, depth), self._dense_weight, page_rank))
        if lex is not None:
            page_lex = self._page_bm25.scores(query) if self._page_bm25 is not None else None
            page_rank = None if page_lex is None else ranks(page_lex, positive=True)
            signals.append((np.array([i for i in top_k(lex, depth) if lex[i] > 0], dtype=np.int64), 1.0, page_rank))
        fused = fuse(signals, n=len(self), rrf_k=self._rrf_k, page_idx=self._page_idx, page_weight=self._page_weight)
        return [(i, float(fused[i])) for i in select(fused, k, positive=True, **cap)]

    def _hit(self, i: int, score: float) -> Hit:
        c = self._cols
        return Hit(chunk_id=c["chunk_id"][i], source_id=c["source_id"][i], span=(c["span_start"][i], c["span_end"][i]),
                   score=score, text=c["text"][i], title=c["title"][i])

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best ``k`` chunks for ``query``, best first (BM25: fewer when fewer chunks share a word with it)."""
        if not isinstance(query, str):
            raise ConfigError("a query must be a string", received=type(query).__name__, fix="pass the question text")
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """``search`` for each query, in order (dense/hybrid embed the queries in batches)."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise ConfigError("queries must be a list of strings",
                              received=type(queries).__name__ if isinstance(queries, str) else [type(q).__name__ for q in queries],
                              fix="pass the question texts, e.g. search_many(['q1', 'q2'], k=5)")
        if not isinstance(k, int) or k < 1:
            raise ConfigError("k must be at least 1", received=k, fix="ask for k >= 1 passages")
        qembs = list(self._dense.embed(list(queries))) if self._dense is not None and queries else [None] * len(queries)
        return [[self._hit(i, s) for i, s in self._ranked(q, k, e)] for q, e in zip(queries, qembs)]


def open_index(path: str | Path) -> Index:
    """Open an index folder written by the index stage (or the step folder that holds it)."""
    return Index(path)
