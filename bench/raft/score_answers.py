"""Score `slmforge ask --questions ... --output` files against a question file, side by side.

The metrics are the open-book eval's (train/eval_openbook.py, train/answer_metrics.py), applied to the served path
(the bundle's GGUF through llama.cpp):

* ``correct``: every keyword group of the question is in the answer (questions with ``keywords``);
* ``token_f1``: SQuAD token F1 against ``reference``, citations removed (questions with a reference);
* ``citation_accuracy``: the first source the answer cites is the question's page (no citation = wrong;
  open-book files, questions with a ``page``/``source``);
* ``recall@k (page)``: the question's page is among the retrieved passages' sources (open-book files);
* ``prompt_echo``: the answer repeats the prompt (the system text's first sentence, or a passage line's
  ``[n] (source)`` header): a model that dumps its prompt can contain the keywords without answering;
* ``correct_no_echo``: ``correct`` and not ``prompt_echo``;
* ``answer_chars``: the median answer length in characters, citations removed. The keyword match favours long
  answers (a whole paragraph holds more words): read a gain in ``correct`` beside this;
* with ``--bundle`` (the bundle whose index answered): ``answer_in_passages``, every keyword group is in the
  retrieved passages' text (what a perfect reader could state), and ``correct_when_in_passages``, ``correct`` among
  those questions: it separates retrieval misses from reading misses.

Every question of the question file must have exactly one answer line in every answers file (by ``id``); a missing
or extra id is an error, not a silently smaller denominator.

    python bench/raft/score_answers.py --questions q.jsonl --answers open=out.jsonl --answers closed=out_cb.jsonl \\
        [--bundle DIR] [--out scores.json] [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_answers(path: Path) -> dict[str, dict]:
    """id -> answer row of a `slmforge ask --output` file (read by the question-file reader: broken or repeated
    lines fail, naming them)."""
    from train.answer import read_questions

    return {r["id"]: r for r in read_questions(path, fields=("answer", "citations", "closed_book", "passages"))}


def echoes_prompt(text: str, fmt) -> bool:
    """The answer repeats the prompt: the open-book system text's first sentence, or a passage header."""
    import re

    first = fmt.system.split(". ")[0]
    return first in text or re.search(r"^\[\d+\] \([^)\n]+\)", text, re.M) is not None


def chunk_texts(bundle: Path) -> dict[str, str]:
    """chunk_id -> text of a bundle's index."""
    from schemas.io import read_parquet

    table = read_parquet(bundle / "index" / "chunks.parquet")
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("text").to_pylist()))


def score(questions: list, answers: dict[str, dict], *, fmt, chunks: dict[str, str] | None = None) -> dict[str, Any]:
    from train.answer_metrics import keyword_hit, token_f1
    from train.eval_openbook import same_page, strip_citations

    ids = [q.id for q in questions]
    missing, extra = sorted(set(ids) - set(answers)), sorted(set(answers) - set(ids))
    if missing or extra:
        sys.exit(f"answers do not match the questions: missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})")
    open_book = any(not answers[i].get("closed_book", False) for i in ids)
    cells: dict[str, list[float]] = {"correct": [], "token_f1": [], "citation_accuracy": [], "recall_at_k": [],
                                     "prompt_echo": [], "correct_no_echo": [], "answer_in_passages": [],
                                     "correct_when_in_passages": []}
    rows = []
    for q in questions:
        a = answers[q.id]
        text = a["answer"]
        row = {"id": q.id, "answer": text, "prompt_echo": float(echoes_prompt(text, fmt)),
               "answer_chars": len(strip_citations(text, fmt))}
        if q.keywords:
            row["correct"] = float(keyword_hit(text, q.keywords))
            row["correct_no_echo"] = row["correct"] * (1.0 - row["prompt_echo"])
        if q.reference:
            row["token_f1"] = token_f1(strip_citations(text, fmt), q.reference)
        if open_book and q.page:
            cites = a.get("citations") or []
            row["citation_accuracy"] = float(bool(cites) and same_page(cites[0], q.page))
            row["recall_at_k"] = float(any(same_page(p["source_id"], q.page) for p in a.get("passages") or []))
        if open_book and chunks is not None and q.keywords:
            unknown = [p["chunk_id"] for p in a.get("passages") or [] if p["chunk_id"] not in chunks]
            if unknown:
                sys.exit(f"answer {q.id}: passage chunk {unknown[0]} is not in --bundle's index: give the bundle that "
                         "answered")
            passages = " ".join(chunks[p["chunk_id"]] for p in a.get("passages") or [])
            row["answer_in_passages"] = float(keyword_hit(passages, q.keywords))
            if row["answer_in_passages"]:
                row["correct_when_in_passages"] = row["correct"]
        for m in cells:
            if m in row:
                cells[m].append(row[m])
        rows.append(row)
    import statistics

    metrics = {m: {"value": sum(v) / len(v) if v else None, "n": len(v)} for m, v in cells.items()}
    metrics["answer_chars"] = {"value": statistics.median(r["answer_chars"] for r in rows) if rows else None,
                               "n": len(rows), "median": True}
    return {"questions": len(ids), "open_book": open_book, "metrics": metrics, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=Path, required=True, help="JSON lines: id, question, keywords, page, reference")
    ap.add_argument("--answers", action="append", required=True, metavar="NAME=FILE",
                    help="an answers file of `slmforge ask --output`, named (repeat for side by side)")
    ap.add_argument("--out", type=Path, default=None, help="write the scores (and per-question rows) as JSON")
    ap.add_argument("--samples", type=int, default=0, help="print this many answers per file")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="the bundle that answered: adds answer_in_passages / correct_when_in_passages")
    args = ap.parse_args()

    from schemas.prompt_format import PromptFormat
    from train.eval_openbook import load_questions

    questions = load_questions(args.questions)
    fmt = PromptFormat()
    chunks = chunk_texts(args.bundle) if args.bundle else None
    results = {}
    for spec in args.answers:
        name, _, path = spec.partition("=")
        if not path:
            sys.exit(f"--answers {spec!r}: expected NAME=FILE")
        results[name] = score(questions, read_answers(Path(path)), fmt=fmt, chunks=chunks)

    def cell(c: dict, metric: str) -> str:
        if c["value"] is None:
            return "-"
        if c.get("median"):
            return f"{c['value']:g} (median, n={c['n']})"
        if metric == "token_f1":
            return f"{c['value']:.3f} (n={c['n']})"
        return f"{c['value']:.3f} ({round(c['value'] * c['n'])}/{c['n']})"

    metrics = ("correct", "correct_no_echo", "prompt_echo", "token_f1", "citation_accuracy", "recall_at_k", "answer_chars")
    metrics += ("answer_in_passages", "correct_when_in_passages") if chunks is not None else ()
    print(f"{args.questions}: {len(questions)} questions")
    print("| metric | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for m in metrics:
        print(f"| {m} | " + " | ".join(cell(r["metrics"][m], m) for r in results.values()) + " |")
    for name, r in results.items():
        for row in r["rows"][: args.samples]:
            print(f"[{name}] {row['id']}: {row['answer'][:200]!r}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
