"""Open-book evaluation: base vs tuned x closed-book vs open-book on questions with known source pages.

Questions come from the held-out split (each row's question, its answer as reference, its source chunk's
page) and from any question file (JSON lines: ``id``, ``question``, optional ``reference``, ``keywords``
(groups, every group must match, ``a|b`` = either) and ``page`` or ``source`` (the page that answers it)).
For each question the index retrieves the top ``k`` passages once; both models answer it closed-book (the
prompt format's closed-book prompt) and open-book (the passages rendered by the same
:class:`schemas.prompt_format.PromptFormat` the RAFT rows were trained with and serving uses).

Metrics per cell (each over the questions that have what it needs; ``n`` says how many):

* ``correct``: the answer contains every keyword group (questions with ``keywords``);
* ``token_f1``: SQuAD token F1 against the reference, citations removed (questions with a reference);
* ``citation_accuracy``: open-book only; the first passage the answer cites (``[n]``) comes from the
  question's page (questions with a page; no citation counts as wrong);
* ``recall@k`` (its own row): the question's page is among the retrieved passages' sources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat

CELLS = (("base", "closed"), ("base", "open"), ("tuned", "closed"), ("tuned", "open"))
METRICS = ("correct", "token_f1", "citation_accuracy")


@dataclass
class Question:
    id: str
    question: str
    reference: str | None = None
    keywords: list[list[str]] | None = None
    page: str | None = None
    passages: list[dict] = field(default_factory=list)


def load_questions(path: str | Path) -> list[Question]:
    """Questions of a JSON-lines file, read by the reader ``slmforge ask --questions`` uses (train/answer.py: every
    broken line named, nothing evaluated for a broken file), with ``reference``, ``keywords``, ``page``/``source``."""
    from train.answer import read_questions

    out = []
    for q in read_questions(path, fields=("reference", "keywords", "page", "source")):
        kw = q.get("keywords")
        if kw is not None and not (isinstance(kw, list) and all(isinstance(g, list) and g and all(isinstance(a, str) for a in g)
                                                                for g in kw)):
            raise ConfigError(f"question file {path}: question {q['id']!r}: 'keywords' must be a list of keyword groups "
                              "(lists of strings)", received=json.dumps(kw)[:200],
                              fix='write e.g. "keywords": [["ROLLBACK"], ["session|connection"]]')
        ref = q.get("reference")
        out.append(Question(q["id"], q["question"], ref if isinstance(ref, str) else None, kw,
                            q.get("page") or q.get("source")))
    return out


def strip_citations(answer: str, fmt: PromptFormat) -> str:
    return re.sub(r"\s*" + fmt.citation_pattern, "", answer).strip()


def heldout_questions(rows: list[dict], chunk_source: Mapping[str, str], fmt: PromptFormat) -> list[Question]:
    """One question per held-out row: its question (meta ``question``, else the last user turn), its answer without
    citations as reference, the page of its source chunk (``source_ids[0]`` looked up in the index)."""
    out = []
    for r in rows:
        meta = json.loads(r.get("meta") or "{}")
        users = [m["content"] for m in r["messages"] if m["role"] == "user"]
        answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        question = meta.get("question") or (users[-1] if users else None)
        if not question or not answers:
            continue
        srcs = r.get("source_ids") or []
        page = next((chunk_source[s] for s in srcs if s in chunk_source), None)
        out.append(Question(r["id"], question, strip_citations(answers[0], fmt), None, page))
    return out


def same_page(source_id: str | None, page: str | None) -> bool:
    """A source id (``corpus/sql-abort.md``) is the page (``sql-abort.html``, ``sql-abort``, or the id itself)."""
    if not source_id or not page:
        return False
    return source_id == page or PurePosixPath(source_id).stem == PurePosixPath(page).stem


def retrieve(questions: list[Question], index, k: int) -> None:
    for q in questions:
        q.passages = [{"chunk_id": h.chunk_id, "source_id": h.source_id, "text": h.text, "title": h.title}
                      for h in index.search(q.question, k=k)]


def score_answers(questions: list[Question], answers: list[str], *, open_book: bool, fmt: PromptFormat) -> dict[str, Any]:
    """The cell's metrics, each with the number of questions it was computed over (None when there were none)."""
    from train.answer_metrics import keyword_hit, token_f1

    def mean(values: list[float]) -> dict[str, Any]:
        return {"value": sum(values) / len(values) if values else None, "n": len(values)}

    correct = [float(keyword_hit(a, q.keywords)) for q, a in zip(questions, answers) if q.keywords]
    f1 = [token_f1(strip_citations(a, fmt), q.reference) for q, a in zip(questions, answers) if q.reference]
    out = {"correct": mean(correct), "token_f1": mean(f1)}
    if open_book:
        cites = []
        for q, a in zip(questions, answers):
            if q.page:
                nums = fmt.cited_numbers(a, len(q.passages))
                cites.append(float(bool(nums) and same_page(q.passages[nums[0] - 1]["source_id"], q.page)))
        out["citation_accuracy"] = mean(cites)
    else:
        out["citation_accuracy"] = {"value": None, "n": 0}
    return out


def recall_at_k(questions: list[Question]) -> dict[str, Any]:
    hits = [float(any(same_page(p["source_id"], q.page) for p in q.passages)) for q in questions if q.page]
    return {"value": sum(hits) / len(hits) if hits else None, "n": len(hits)}


def prompts(questions: list[Question], *, open_book: bool, fmt: PromptFormat) -> list[list[dict[str, str]]]:
    return [fmt.render_messages(q.question, q.passages if open_book else None) for q in questions]


def _fmt(cell: dict[str, Any]) -> str:
    return "-" if cell["value"] is None else f"{cell['value']:.3f} (n={cell['n']})"


def table_md(name: str, res: dict[str, Any], *, k: int) -> list[str]:
    """One four-way table (markdown lines)."""
    lines = [f"### {name}: {res['questions']} questions", "",
             "| metric | base closed-book | base open-book | tuned closed-book | tuned open-book |", "|---|---:|---:|---:|---:|"]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(_fmt(res["cells"][f"{w}_{b}"][m]) for w, b in CELLS) + " |")
    r = _fmt(res["recall_at_k"])
    lines.append(f"| retrieval recall@{k} (page) | - | {r} | - | {r} |")
    return lines + [""]


def card_section(results: dict[str, Any], *, k: int) -> str:
    lines = ["## Open-book evaluation (base vs tuned x closed-book vs open-book)", "",
             f"Each question is answered by both models without passages (closed-book) and with the top {k} passages the "
             "index retrieves for it (open-book, the prompt format the model was trained with). `correct`: every keyword "
             "group in the answer; `token_f1`: against the reference, citations removed; `citation_accuracy`: the first "
             "cited passage `[n]` is from the question's page; recall@k: the page is among the retrieved passages. "
             "`n` = questions the metric applies to; `-` = none.", ""]
    for name, res in results.items():
        lines += table_md(name, res, k=k)
    lines += ["![four-way evaluation](eval.png)", ""]
    return "\n".join(lines)


def plot(base_tuned: dict[str, dict[str, float]], results: dict[str, Any], path: Path, *, metrics: tuple[str, ...]) -> None:
    """eval.png with two panels: the held-out metrics base vs tuned, and the four-way cells of each question set."""
    from matplotlib.figure import Figure

    sets = list(results)
    fig = Figure(figsize=(6 + 4 * len(sets), 3.8), dpi=100)
    axes = fig.subplots(1, 1 + len(sets))
    ax = axes[0]
    for j, name in enumerate(("base", "tuned")):
        ax.bar([x + (j - 0.5) * 0.38 for x in range(len(metrics))], [base_tuned[name][m] for m in metrics], 0.38, label=name)
    ax.set_xticks(range(len(metrics)), list(metrics))
    ax.set_ylim(0, 1)
    ax.set_title("held-out answers: base vs tuned")
    ax.legend(fontsize=7)
    for ax, name in zip(axes[1:], sets):
        cells = results[name]["cells"]
        for j, (who, book) in enumerate(CELLS):
            vals = [cells[f"{who}_{book}"][m]["value"] or 0.0 for m in METRICS]
            ax.bar([x + (j - 1.5) * 0.2 for x in range(len(METRICS))], vals, 0.2, label=f"{who} {book}-book")
        ax.set_xticks(range(len(METRICS)), list(METRICS))
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} (recall@k {_fmt(results[name]['recall_at_k'])})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def find_index_input(inputs: Mapping[str, Path]) -> Path:
    from curation.index.reader import resolve

    for path in inputs.values():
        try:
            return resolve(path)
        except ConfigError:
            continue
    raise ConfigError("eval: 'open_book' retrieves passages with the recipe's index, but no input is an index step",
                      received=", ".join(map(str, inputs.values())), expected="an index step among the inputs",
                      fix="add the index step to 'inputs:' of the eval step (CLI: --index DIR)")


def check_prompt_format(rows: list[dict], fmt: PromptFormat) -> None:
    """RAFT rows record the fingerprint of the prompt format they were rendered with; evaluating with another one
    would measure a prompt the model never saw."""
    seen = {json.loads(r.get("meta") or "{}").get("prompt_format") for r in rows} - {None}
    if seen and seen != {fmt.fingerprint()}:
        raise ConfigError("eval: the open-book prompt format differs from the one the RAFT rows were trained with",
                          received=fmt.fingerprint()[:16], expected=", ".join(sorted(s[:16] for s in seen)),
                          fix="set eval's open_book.prompt_format to synth's raft.prompt_format")


def run_four_way(models: Mapping[str, Any], tokenizer, question_sets: Mapping[str, list[Question]], index, *, k: int,
                 fmt: PromptFormat, generate, max_new_tokens: int, quote: bool = False,
                 progress=lambda n: None) -> tuple[dict[str, Any], list[dict]]:
    """``models``: name ('base', 'tuned') -> a callable returning the loaded model; ``generate(model, tokenizer,
    prompts, max_new_tokens=..., passages=...)`` -> answers (train.evaluate.generate_answers). ``quote``: open-book
    answers (base and tuned alike) quote a span of a passage, as the bundle's ``quote`` does when served. Returns
    (results per question set, one sample per question and cell)."""
    for qs in question_sets.values():
        retrieve(qs, index, k)
    answers: dict[tuple[str, str, str], list[str]] = {}
    for who, load in models.items():
        model = load()
        for name, qs in question_sets.items():
            for book in ("closed", "open"):
                texts = [[p["text"] for p in q.passages] for q in qs] if quote and book == "open" else None
                answers[(who, name, book)] = generate(model, tokenizer, prompts(qs, open_book=book == "open", fmt=fmt),
                                                      max_new_tokens=max_new_tokens, passages=texts)
        progress(1)
        del model
    results, samples = {}, []
    for name, qs in question_sets.items():
        results[name] = {"questions": len(qs), "recall_at_k": recall_at_k(qs), "cells": {
            f"{w}_{b}": score_answers(qs, answers[(w, name, b)], open_book=b == "open", fmt=fmt) for w, b in CELLS}}
        for i, q in enumerate(qs):
            samples.append({"set": name, "id": q.id, "question": q.question, "reference": q.reference, "page": q.page,
                            "passages": [p["source_id"] for p in q.passages],
                            **{f"{w}_{b}": answers[(w, name, b)][i] for w, b in CELLS}})
    return results, samples


__all__ = ["Question", "load_questions", "heldout_questions", "run_four_way", "card_section", "plot", "same_page",
           "find_index_input", "check_prompt_format", "CELLS", "METRICS"]
