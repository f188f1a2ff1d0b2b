"""Experiment: the tuned reader as a selector. Each answer is the passage unit (a paragraph, a list item or a sentence
of the retrieved passages) that the bundle's model finds most likely as its whole answer, scored in llama.cpp.

For every question the bundle retrieves its passages and renders THE prompt, exactly as ``slmforge ask``; then each
unit ``u`` of passage ``n`` is scored as the completion ``u + " [n]" + <end of turn>`` (teacher-forced, one
llama.cpp pass per unit after the prompt): ``--score sum`` is its log-probability, ``--score mean`` the mean per
token. The answer is the best unit, cited as its passage. Writes an ``ask --output``-style JSON-lines file for
``bench/raft/score_answers.py``. Slower than ``ask`` (every unit is a forward pass): a measurement, not a product.

    python bench/raft/unit_select.py --bundle B --questions Q.jsonl --output out.jsonl --score sum --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


def units(text: str, *, min_chars: int = 12) -> list[str]:
    """Paragraphs and list items of ``text``, then their sentences; markers stripped, repeats and fragments dropped."""
    paras = [p.strip() for p in re.split(r"\n\s*\n|\n(?=[-*] )", text) if p.strip()]
    sents = [s.strip() for p in paras for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", p) if s.strip()]
    out: list[str] = []
    for u in paras + sents:
        u = re.sub(r"^[-*]\s+", "", u)
        if len(u) >= min_chars and u not in out:
            out.append(u)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--score", choices=("sum", "mean"), default="sum")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import llama_cpp
    import numpy as np

    from train.answer import Reader, read_questions
    from train.bundle import open_bundle

    reader = Reader(open_bundle(args.bundle), threads=args.threads, llama_options={"logits_all": True}).load()
    llm = reader.llm
    eot = llama_cpp.llama_vocab_eot(llm._model.vocab)
    eot = eot if eot >= 0 else llm.token_eos()
    with open(args.output, "w", encoding="utf-8") as fh:
        for row in read_questions(args.questions):
            t0 = time.perf_counter()
            p = reader._prepare(row["question"], k=None, closed_book=False, generation=reader.generation, history=None)
            start = len(p["ids"])
            llm.reset()
            llm.eval(p["ids"])
            best: tuple[float, str, int] | None = None
            for passage in p["passages"]:
                for u in units(passage.text):
                    ids = llm.tokenize(f"{u} [{passage.n}]".encode(), add_bos=False, special=False) + [eot]
                    llm.n_tokens = start  # llama.cpp drops the cache after the prompt before the next eval
                    llm.eval(ids)
                    logits = np.asarray(llm.scores[start - 1:start - 1 + len(ids)], dtype=np.float32)
                    top = logits.max(axis=1)
                    logp = logits[np.arange(len(ids)), ids] - top - np.log(np.exp(logits - top[:, None]).sum(axis=1))
                    s = float(logp.sum() if args.score == "sum" else logp.mean())
                    if best is None or s > best[0]:
                        best = (s, u, passage.n)
            if best is None:
                sys.exit(f"{row['id']}: the passages hold no unit of 12 or more characters")
            ans = reader._answer(p, f"{best[1]} [{best[2]}]", completion_tokens=0, finish="select").to_json()
            ans["passages"] = [{k: v for k, v in x.items() if k != "text"} for x in ans["passages"]]
            fh.write(json.dumps({"id": row["id"], **ans, "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
    reader.close()


if __name__ == "__main__":
    main()
