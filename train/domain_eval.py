"""Domain checks of a tuned real model, beside ``train/evaluate.py`` (which it reuses, unchanged):

* **hand-checked questions** (``data/eval/postgres_questions.jsonl``): natural questions written
  by a person, each with the sentence of the manual that answers it and keyword groups a correct
  answer must contain (every group; ``a|b`` = either). Scored for base and tuned by keyword hit
  and by token F1 against the reference sentence. Each question says which page answers it; the
  page's split (train / validation / test / not in the dataset) is looked up through the
  examples' ``source_ids`` and reported, so held-out and seen pages are counted separately.
* **forgetting check**: perplexity of plain general text (``data/eval/general_text.jsonl``,
  public domain) under base and tuned; the tuned model should not rise by more than 10 %.
* **before/after table with targets**: joins these numbers with the eval step's ``eval.json``.

Run after a recipe (reads ``<workspace>/_runs/latest.json`` to find the steps)::

    python -m train.domain_eval -w workspace/postgres-docs \\
        --questions data/eval/postgres_questions.jsonl --general data/eval/general_text.jsonl

It writes ``domain_eval.json`` / ``domain_eval.md`` under ``<workspace>/domain_eval/`` and, when
the export step's model card exists, replaces (or appends) the section between the markers
``<!-- domain-eval:start -->`` and ``<!-- domain-eval:end -->`` in it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

from schemas.io import write_json, write_text
from train.answer_metrics import keyword_hit, token_f1  # noqa: F401  (keyword_hit re-exported)
from train.evaluate import generate_answers
from train.inputs import load_model, load_tokenizer, model_device, read_examples, torch_setup

START, END = "<!-- domain-eval:start -->", "<!-- domain-eval:end -->"

#: targets of issue 9 (relative change of tuned vs base, or absolute points)
TARGETS = {
    "heldout_perplexity_drop": 0.30,     # held-out answer perplexity falls by >= 30 %
    "heldout_token_f1_gain": 0.10,       # token F1 rises by >= 10 points
    "general_perplexity_rise": 0.10,     # general-text perplexity rises by <= 10 %
    "q8_0_top1": 0.99,                   # exported Q8_0 agrees on next-token top-1 >= 99 %
}


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def text_perplexity(model, tokenizer, texts: list[str], *, max_length: int = 512) -> dict[str, float]:
    """Token-weighted mean cross-entropy of plain texts (each starts with BOS; longer texts in windows)."""
    import torch

    device = model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            for s in range(0, len(ids), max_length - len(bos)):
                window = torch.tensor([bos + ids[s:s + max_length - len(bos)]], device=device)
                if window.shape[1] < 2:
                    continue
                logits = model(input_ids=window).logits.float()
                loss = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
                total += loss.item()
                count += window.shape[1] - 1
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": count}


def page_splits(workspace: Path, steps: dict[str, dict[str, Any]], examples_dir: Path) -> dict[str, set[str]]:
    """file name of a source page -> the splits its examples landed in (via source_ids -> document ids)."""
    import pyarrow.parquet as pq

    doc_source: dict[str, str] = {}
    for name, step in steps.items():
        if step["stage"] != "ingest":
            continue
        for f in sorted((workspace / step["dir"]).glob("part-*.parquet")):
            t = pq.read_table(f, columns=["id", "source"]).to_pylist()
            doc_source.update({r["id"]: Path(r["source"]).name for r in t})
    out: dict[str, set[str]] = {}
    for row in read_examples(examples_dir):
        for sid in row.get("source_ids") or []:
            if sid in doc_source:
                out.setdefault(doc_source[sid], set()).add(row["split"])
    return out


def _page_key(name: str) -> str:
    return Path(name).stem


def run(*, base_model: Path, adapter: Path, questions: list[dict[str, Any]], general: list[str],
        splits_by_page: dict[str, set[str]], max_new_tokens: int = 48) -> dict[str, Any]:
    """Base vs tuned on the hand-checked questions and the general text."""
    tokenizer = load_tokenizer(base_model)
    by_stem = {_page_key(k): v for k, v in splits_by_page.items()}
    for q in questions:
        found = sorted(by_stem.get(_page_key(q["page"]), set()))
        q["split"] = "/".join(found) if found else "not in dataset"
    prompts = [[{"role": "user", "content": q["question"]}] for q in questions]
    results: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for name, adp in (("base", None), ("tuned", adapter)):
        t0 = time.time()
        model = load_model(base_model, adapter=adp)
        answers[name] = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        gen = text_perplexity(model, tokenizer, general)
        hits = [keyword_hit(a, q["keywords"]) for a, q in zip(answers[name], questions)]
        f1s = [token_f1(a, q["reference"]) for a, q in zip(answers[name], questions)]
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault("held-out pages" if q["split"] == "test" else "other pages", []).append(i)
        results[name] = {
            "questions_keyword_accuracy": sum(hits) / max(len(hits), 1),
            "questions_token_f1": sum(f1s) / max(len(f1s), 1),
            "by_group": {g: {"n": len(ix), "keyword_accuracy": sum(hits[i] for i in ix) / len(ix),
                             "token_f1": sum(f1s[i] for i in ix) / len(ix)} for g, ix in groups.items()},
            "general_loss": gen["loss"], "general_perplexity": gen["perplexity"], "general_tokens": gen["tokens"],
            "seconds": round(time.time() - t0, 1),
        }
        results[name]["hits"] = hits
        del model
    samples = [{"id": q["id"], "page": q["page"], "split": q["split"], "question": q["question"],
                "reference": q["reference"], "keywords": q["keywords"],
                "base": answers["base"][i], "base_hit": results["base"]["hits"][i],
                "tuned": answers["tuned"][i], "tuned_hit": results["tuned"]["hits"][i]}
               for i, q in enumerate(questions)]
    return {"results": results, "samples": samples}


def verdicts(eval_results: dict[str, Any] | None, domain: dict[str, Any], export: dict[str, Any] | None) -> list[dict]:
    """The issue's targets, each with base, tuned, the change and pass/fail (None when not measured)."""
    rows = []
    if eval_results:
        b, t = eval_results["base"], eval_results["tuned"]
        drop = 1 - t["perplexity"] / b["perplexity"]
        rows.append({"metric": "held-out answer perplexity", "base": b["perplexity"], "tuned": t["perplexity"],
                     "change": f"{-drop:+.1%}", "target": "falls >= 30%", "met": drop >= TARGETS["heldout_perplexity_drop"]})
        gain = t["token_f1"] - b["token_f1"]
        rows.append({"metric": "held-out answer token F1", "base": b["token_f1"], "tuned": t["token_f1"],
                     "change": f"{gain * 100:+.1f} pts", "target": "rises >= 10 pts",
                     "met": gain >= TARGETS["heldout_token_f1_gain"]})
        rows.append({"metric": "held-out answer ROUGE-L", "base": b["rouge_l"], "tuned": t["rouge_l"],
                     "change": f"{(t['rouge_l'] - b['rouge_l']) * 100:+.1f} pts", "target": "-", "met": None})
    b, t = domain["results"]["base"], domain["results"]["tuned"]
    rise = t["general_perplexity"] / b["general_perplexity"] - 1
    rows.append({"metric": "general-text perplexity (forgetting)", "base": b["general_perplexity"],
                 "tuned": t["general_perplexity"], "change": f"{rise:+.1%}", "target": "rises <= 10%",
                 "met": rise <= TARGETS["general_perplexity_rise"]})
    rows.append({"metric": "hand-checked questions, keyword accuracy", "base": b["questions_keyword_accuracy"],
                 "tuned": t["questions_keyword_accuracy"],
                 "change": f"{(t['questions_keyword_accuracy'] - b['questions_keyword_accuracy']) * 100:+.1f} pts",
                 "target": "-", "met": None})
    rows.append({"metric": "hand-checked questions, token F1", "base": b["questions_token_f1"],
                 "tuned": t["questions_token_f1"],
                 "change": f"{(t['questions_token_f1'] - b['questions_token_f1']) * 100:+.1f} pts", "target": "-", "met": None})
    if export:
        q8 = next((f for f in export.get("files", []) if "Q8_0" in f.get("file", "") and f.get("verify")), None)
        if q8 is not None:
            # the export's llama.cpp verification (train/verify.py): next-token agreement and KL divergence against the
            # merged model on teacher-forced held-out text, judged by the file's own gate
            v, gate = q8["verify"], q8.get("gate") or {}
            rows.append({"metric": f"Q8_0 GGUF vs merged: next-token top-1 on {v.get('tokens')} held-out tokens",
                         "base": None, "tuned": v["top1"], "change": f"KLD mean {v['kld_mean']:.4f}",
                         "target": f">= {gate['min_top1']:.0%} (export gate)" if "min_top1" in gate else "export gate",
                         "met": q8.get("passed")})
    return rows


def card_section(rows: list[dict], domain: dict[str, Any], *, loss_png: str | None,
                 notices: list[str] | None = None) -> str:
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [START, "## Domain evaluation (base vs tuned, with the issue's targets)", "",
             "| metric | base | tuned | change | target | met |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['metric']} | {fmt(r['base'])} | {fmt(r['tuned'])} | {r['change']} | {r['target']} | {met} |")
    res = domain["results"]
    lines += ["", "Hand-checked questions by page split (keyword accuracy / token F1):", "",
              "| pages | n | base | tuned |", "|---|---:|---:|---:|"]
    for g in sorted(res["tuned"]["by_group"]):
        bb, tt = res["base"]["by_group"][g], res["tuned"]["by_group"][g]
        lines.append(f"| {g} | {tt['n']} | {bb['keyword_accuracy']:.2f} / {bb['token_f1']:.3f} | "
                     f"{tt['keyword_accuracy']:.2f} / {tt['token_f1']:.3f} |")
    lines += ["", "| id | split | question | tuned answer | hit |", "|---|---|---|---|---|"]
    for s in domain["samples"]:
        ans = re.sub(r"\s+", " ", s["tuned"])[:160].replace("|", "\\|")
        lines.append(f"| {s['id']} | {s['split']} | {s['question']} | {ans} | {'yes' if s['tuned_hit'] else 'no'} |")
    if loss_png:
        lines += ["", f"![training loss]({loss_png})"]
    if notices:
        lines += ["", "### Terms", "", "This model is derived from Google's Gemma. Gemma is provided under and subject to the "
                  "Gemma Terms of Use (https://ai.google.dev/gemma/terms), which apply to this derivative too; see "
                  + ", ".join(f"[{n}]({n})" for n in notices) + " next to this card."]
    lines += [END, ""]
    return "\n".join(lines)


def _replace_section(card: str, section: str) -> str:
    if START in card and END in card:
        return card[: card.index(START)] + section.rstrip("\n") + card[card.index(END) + len(END):]
    return card.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.domain_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("-w", "--workspace", required=True, help="recipe workspace (reads _runs/latest.json)")
    ap.add_argument("--questions", required=True, help="hand-checked questions (jsonl)")
    ap.add_argument("--general", required=True, help="general text for the forgetting check (jsonl with 'text')")
    ap.add_argument("--out", default=None, help="output folder (default: <workspace>/domain_eval)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse <out>/domain_eval.json (no model runs): only rebuild the table and the model card section")
    ap.add_argument("--notice", action="append", default=[],
                    help="file copied next to the model card (e.g. the Gemma terms); repeatable")
    args = ap.parse_args(argv)
    torch_setup(args.threads)

    ws = Path(args.workspace)
    steps = {s["name"]: s for s in json.loads((ws / "_runs" / "latest.json").read_text())["steps"]}
    by_stage = {s["stage"]: ws / s["dir"] for s in steps.values()}
    out = Path(args.out or ws / "domain_eval")
    out.mkdir(parents=True, exist_ok=True)
    base_model, adapter, examples = by_stage["base_model"] / "model", by_stage["train"] / "adapter", by_stage["dataset"]

    if args.reuse and (out / "domain_eval.json").is_file():
        domain = json.loads((out / "domain_eval.json").read_text())
        domain.pop("targets", None)
    else:
        general = [r["text"] for r in load_jsonl(args.general)]
        domain = run(base_model=base_model, adapter=adapter, questions=load_jsonl(args.questions), general=general,
                     splits_by_page=page_splits(ws, steps, examples), max_new_tokens=args.max_new_tokens)
        write_json(domain, out / "domain_eval.json")  # the model runs are kept whatever happens below (--reuse)
    eval_json = by_stage.get("eval", Path("/nonexistent")) / "eval.json"
    eval_results = json.loads(eval_json.read_text())["results"] if eval_json.is_file() else None
    export_json = by_stage.get("export", Path("/nonexistent")) / "export.json"
    export = json.loads(export_json.read_text()) if export_json.is_file() else None
    rows = verdicts(eval_results, domain, export)
    write_json({**domain, "targets": rows}, out / "domain_eval.json")
    loss_png = by_stage["train"] / "loss.png"
    if loss_png.is_file():
        shutil.copyfile(loss_png, out / "loss.png")
    section = card_section(rows, domain, loss_png="loss.png" if loss_png.is_file() else None,
                           notices=[Path(n).name for n in args.notice])
    write_text(section, out / "domain_eval.md")
    card = by_stage.get("export", Path("/nonexistent")) / "_out" / "README.md"
    if not card.is_file() and "export" in by_stage:
        card = by_stage["export"] / "README.md"
    if card.is_file():
        write_text(_replace_section(card.read_text(encoding="utf-8"), section), card)
        if loss_png.is_file():
            shutil.copyfile(loss_png, card.parent / "loss.png")
        for notice in args.notice:
            shutil.copyfile(notice, card.parent / Path(notice).name)
    for r in rows:
        met = {True: "met", False: "NOT met", None: ""}[r["met"]]
        print(f"{r['metric']:<42} base {r['base'] if r['base'] is None else round(r['base'], 4)!s:>10}  "
              f"tuned {round(r['tuned'], 4)!s:>10}  {r['change']:>10}  {r['target']:<16} {met}")
    print(f"written: {out / 'domain_eval.md'}" + (f" and {card}" if card.is_file() else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
