"""The index stage: CHUNKS -> a retrieval index folder (``<step folder>/index/``), read with ``open_index``.

An artifact stage: it reads every chunk of its primary input (the chunk step) and, when a second input
is given, the documents those chunks came from (for page titles); it writes ``index.json``,
``chunks.parquet`` and the backend's files. Every chunk is indexed (none is dropped), so it writes no
decisions; its stats count chunks, pages and the vocabulary.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from curation.index.backends import Bm25Backend, DenseBackend, model_folder
from curation.index.config import IndexConfig
from curation.index.ranking import page_texts
from curation.index.reader import CHUNKS_FILE, FORMAT, MANIFEST, SUBDIR
from curation.index.tokenize import Tokenizer
from schemas.arrow import CHUNKS
from schemas.errors import ConfigError, StageError
from schemas.io import read_parquet_dir, write_json, write_parquet
from schemas.stage import Stage, StageContext

_MD_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)

INDEX_CHUNKS = pa.schema([
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("span_start", pa.int64(), nullable=False),
    pa.field("span_end", pa.int64(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("heading", pa.string()),
    pa.field("text", pa.large_string(), nullable=False),
])


def document_title(title: str | None, text: str | None) -> str | None:
    """A document's title: its ``title`` column when the text contains it, else its first Markdown heading.

    A title the text does not contain is not used: the pii stage scrubs the text, not the title column, so
    only words that went through it (and are in the document anyway) reach the index and every hit.
    """
    text = text or ""
    if title and title.strip() and title.strip() in text:
        return title.strip()
    m = _MD_HEADING.search(text)
    return m.group(1).strip() if m else None


def indexed_text(text: str, *, title: str | None, heading: str | None, source: str | None = None) -> str:
    """What the lexical/dense model sees: the source's file name, page title and section heading (each unless the
    text opens with it), then the text."""
    name = PurePosixPath(source).stem if source else None
    head = [t for t in (name, title, heading) if t and t not in text[: len(t) + 8]]
    return "\n".join([*dict.fromkeys(head), text])


class IndexStage(Stage[IndexConfig]):
    kind = "artifact"
    provides = "index"  # what a step that retrieves (RAFT synth, the bundle) can list in its 'needs'
    version = "2"  # 2: titles only from what the (scrubbed) text contains
    requires = {n: CHUNKS.field(n).type for n in ("id", "doc_id", "text", "source", "span_start", "span_end",
                                                   "heading", "position")}

    def check(self, inputs: Mapping[str, Mapping[str, pa.DataType]]) -> None:
        names = list(inputs)
        if len(names) > 2:
            raise ConfigError("index: at most two inputs (the chunk step, then the documents for page titles)",
                              received=names, fix="write e.g. 'inputs: [chunk, pii]'")
        if len(names) == 2:
            cols = inputs[names[1]]
            if cols and ("id" not in cols or ("title" not in cols and "text" not in cols)):
                raise ConfigError(f"index: second input '{names[1]}' is not a table of documents",
                                  received=", ".join(cols), expected="columns id and title or text",
                                  fix="name the step whose documents were chunked, e.g. 'inputs: [chunk, pii]'")

    def fingerprint_extra(self) -> dict[str, Any]:
        if self.config.embedding_model is None:
            return {}
        root = model_folder(self.config.embedding_model)
        return {"model_files": [(str(f.relative_to(root)), f.stat().st_size)
                                for f in sorted(root.rglob("*")) if f.is_file() and ".git" not in f.parts]}

    def _titles(self, ctx: StageContext, chunks: pa.Table) -> dict[str, str | None]:
        names = list(ctx.inputs)
        if len(names) > 1:
            docs = read_parquet_dir(ctx.inputs[names[1]])
            titles = docs.column("title").to_pylist() if "title" in docs.column_names else [None] * docs.num_rows
            texts = docs.column("text").to_pylist() if "text" in docs.column_names else [None] * docs.num_rows
            return {d: document_title(t, x) for d, t, x in zip(docs.column("id").to_pylist(), titles, texts)}
        # without documents: a chunk that opens its document (position 0) names it by its heading
        return {d: h for d, h, p in zip(chunks.column("doc_id").to_pylist(), chunks.column("heading").to_pylist(),
                                        chunks.column("position").to_pylist()) if p == 0}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        primary = next(iter(ctx.inputs))
        chunks = read_parquet_dir(ctx.inputs[primary])
        if chunks.num_rows == 0:
            raise StageError(f"index: step '{primary}' produced no chunks, so there is nothing to index",
                             received=f"0 rows in {ctx.inputs[primary]}",
                             expected="at least one chunk",
                             fix="check the chunk step's stats (every document dropped? min_chars too high?) "
                                 "and the steps before it")
        started = time.perf_counter()
        titles = self._titles(ctx, chunks)
        doc_ids = chunks.column("doc_id").to_pylist()
        texts = chunks.column("text").to_pylist()
        headings = chunks.column("heading").to_pylist()
        page_titles = [titles.get(d) for d in doc_ids]
        table = pa.table({
            "chunk_id": chunks.column("id"), "source_id": chunks.column("source"), "doc_id": chunks.column("doc_id"),
            "span_start": chunks.column("span_start"), "span_end": chunks.column("span_end"),
            "title": pa.array(page_titles, pa.string()), "heading": chunks.column("heading"),
            "text": chunks.column("text").cast(pa.large_string()),
        }).cast(INDEX_CHUNKS)
        sources = chunks.column("source").to_pylist() if cfg.source_in_text else [None] * len(texts)
        if not cfg.title_in_text:
            page_titles_in, headings_in = [None] * len(texts), [None] * len(texts)
        else:
            page_titles_in, headings_in = page_titles, headings
        docs = [indexed_text(t, title=pt, heading=h, source=src)
                for t, pt, h, src in zip(texts, page_titles_in, headings_in, sources)]
        folder = Path(ctx.out_dir) / SUBDIR
        folder.mkdir(parents=True)
        write_parquet(table, folder / CHUNKS_FILE)
        tokenizer = Tokenizer(stemmer=cfg.stemmer, stopwords=cfg.stopwords)
        stats: dict[str, Any] = {"chunks": table.num_rows, "sources": len(set(table.column("source_id").to_pylist())),
                                 "titled_chunks": sum(t is not None for t in page_titles), "backend": cfg.backend}
        if cfg.backend in ("bm25", "hybrid"):
            Bm25Backend(tokenizer=tokenizer, method=cfg.method, k1=cfg.k1, b=cfg.b).build(docs, folder)
            stats["vocabulary"] = len(_vocab(folder))
            if cfg.page_weight > 0:  # one BM25 document per source page, for page-level evidence
                _, pages = page_texts(table.column("source_id").to_pylist(), docs)
                Bm25Backend(tokenizer=tokenizer, method=cfg.method, k1=cfg.k1, b=cfg.b,
                            folder="bm25_pages").build(pages, folder)
        ctx.progress(table.num_rows // 2)
        if cfg.backend in ("dense", "hybrid"):
            DenseBackend(model_path=cfg.embedding_model, device=cfg.device,
                         batch_size=cfg.embedding_batch_size).build(docs, folder)
        ctx.progress(table.num_rows - table.num_rows // 2)
        # the model that embeds queries: copied inside the folder ("embedded_model", relative), or an outside folder
        outside = inside = None
        if cfg.embedding_model:
            outside = str(model_folder(cfg.embedding_model).resolve())
            if cfg.copy_embedding_model:
                inside = f"{DenseBackend.folder}/model"
                shutil.copytree(outside, folder / inside, ignore=shutil.ignore_patterns(".git", "*.md", ".gitattributes"))
                outside = None
        settings = {"method": cfg.method, "k1": cfg.k1, "b": cfg.b, "title_in_text": cfg.title_in_text,
                    "source_in_text": cfg.source_in_text,
                    "rrf_k": cfg.rrf_k, "fusion_depth": cfg.fusion_depth, "device": cfg.device,
                    "dense_weight": cfg.dense_weight, "max_per_page": cfg.max_per_page, "page_weight": cfg.page_weight,
                    "prf_terms": cfg.prf_terms, "prf_docs": cfg.prf_docs, "prf_weight": cfg.prf_weight}
        write_json({"format": FORMAT, "backend": cfg.backend, "chunks": table.num_rows,
                    "tokenizer": tokenizer.settings(), "settings": settings,
                    "embedding_model": outside, "embedded_model": inside, "step": ctx.step}, folder / MANIFEST)
        stats["build_seconds"] = round(time.perf_counter() - started, 3)
        return stats

    def summary(self, stats: Mapping[str, Any]) -> list[tuple[str, str]]:
        rows = [("backend", str(stats.get("backend"))), ("chunks indexed", str(stats.get("chunks"))),
                ("source pages", str(stats.get("sources")))]
        if "vocabulary" in stats:
            rows.append(("vocabulary (terms)", str(stats["vocabulary"])))
        return rows


def _vocab(folder: Path) -> dict:
    import json

    return json.loads((folder / Bm25Backend.folder / "vocab.index.json").read_text())
