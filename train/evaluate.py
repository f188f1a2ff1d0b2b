"""Base vs tuned on held-out rows: loss/perplexity on assistant tokens, and answer metrics
(exact match, token F1, ROUGE-L) of greedy generations against the reference answers.

Writes ``eval.json`` (numbers), ``eval.md`` (the model-card section), ``eval.png`` (a bar chart)
and ``samples.jsonl`` (prompts, references and both models' answers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from train.answer_metrics import exact_match, normalize_answer, rouge_l, token_f1  # noqa: F401  (re-exported)
from train.config import EvalConfig
from schemas.errors import ConfigError, StageError
from schemas.io import write_json, write_text
from schemas.stage import Stage, StageContext
from train.inputs import EXAMPLE_COLUMNS
from train.chat import encode_example, prompt_and_reference
from train.inputs import find_inputs, load_model, load_tokenizer, model_device, read_examples, torch_setup

METRICS = ("exact_match", "token_f1", "rouge_l")


# --- model evaluation ---------------------------------------------------------------------------

def heldout_loss(model, tokenizer, rows: list[dict], *, max_length: int, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy over assistant tokens (token-weighted) and its perplexity. The output layer runs on the
    labelled positions only where the model has the standard decoder + head shape (train/answer_head.py)."""
    import torch

    from train.answer_head import causal_lm_parts, labelled_loss
    from train.sft import collate

    enc = [encode_example(tokenizer, r["messages"], max_length=max_length) for r in rows]
    enc = [e for e in enc if any(t != -100 for t in e["labels"])]
    total, count = 0.0, 0
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    parts = causal_lm_parts(model)
    with torch.no_grad():
        for i in range(0, len(enc), batch_size):
            batch = {k: v.to(device) for k, v in collate(enc[i:i + batch_size], pad_id=pad).items()}
            shift_labels = batch["labels"][:, 1:]
            if parts is not None:
                loss = labelled_loss(parts, batch, num_items_in_batch=1)  # the sum over labelled positions
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                         shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((shift_labels != -100).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": count}


def generate_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                     passages: list[list[str] | None] | None = None) -> list[str]:
    """Greedy answers, one prompt at a time (no padding effects), stopping at the end-of-turn token. ``passages``
    (per prompt, the texts of its passages, or None): those answers quote a span of a passage and cite it, as
    ``ask --quote`` does in llama.cpp (train/copying.py)."""
    import torch

    device = model_device(model)
    answers = []
    for i, msgs in enumerate(prompts):
        ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"].to(device)
        texts = passages[i] if passages else None
        copier, processors = _quote_processors(tokenizer, texts, ids.shape[1]) if texts else (None, None)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, logits_processor=processors,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        cite = copier.citation() if copier is not None else None
        answers.append(f"{answer} [{cite}]" if cite is not None else answer)
    return answers


def _quote_processors(tokenizer, passages: list[str], start: int):
    """A :class:`train.copying.SpanCopier` and the transformers logits processor that makes greedy generation emit
    its choice (the end-of-sequence token where the span ends). A token's text is what it adds to the decoded answer."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from train.chat import end_of_turn_ids
    from train.copying import SpanCopier

    ends = end_of_turn_ids(tokenizer)
    state = {"ids": [], "text": ""}

    def piece(tok: int) -> str:
        return tokenizer.decode(state["ids"] + [tok], skip_special_tokens=True)[len(state["text"]):]

    copier = SpanCopier(passages, piece=piece, is_end=lambda t: t in ends)

    class Quote(LogitsProcessor):
        def __call__(self, input_ids, scores):
            done = input_ids[0, start:].tolist()
            while len(state["ids"]) < len(done):  # the token chosen at the previous step
                copier.advance(done[len(state["ids"])])
                state["ids"].append(done[len(state["ids"])])
                state["text"] = tokenizer.decode(state["ids"], skip_special_tokens=True)
            ranked = torch.topk(scores[0], min(copier.top, scores.shape[-1])).indices.tolist()
            tok = copier.choose(ranked)
            out = torch.full_like(scores, -float("inf"))
            out[0, tokenizer.eos_token_id if tok is None else tok] = 0.0
            return out

    return copier, LogitsProcessorList([Quote()])


def prompts_and_references(rows: list[dict]) -> tuple[list[list[dict]], list[str]]:
    """The prompt messages and reference answer of every row that has an assistant turn."""
    pairs = [p for p in (prompt_and_reference(r["messages"]) for r in rows) if p]
    return [p for p, _ in pairs], [ref for _, ref in pairs]


def evaluate_model(model, tokenizer, rows: list[dict], prompts: list[list[dict]], references: list[str], *,
                   max_length: int, batch_size: int, max_new_tokens: int) -> tuple[dict[str, float], list[str]]:
    """Held-out loss/perplexity on ``rows`` plus exact match / token F1 / ROUGE-L of greedy answers to
    ``prompts``; returns (metrics, answers)."""
    result = heldout_loss(model, tokenizer, rows, max_length=max_length, batch_size=batch_size)
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    result.update(score(answers, references))
    return result, answers


def score(answers: list[str], references: list[str]) -> dict[str, float]:
    n = max(len(answers), 1)
    return {
        "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references)) / n,
        "token_f1": sum(token_f1(a, r) for a, r in zip(answers, references)) / n,
        "rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references)) / n,
    }


def plot_comparison(results: dict[str, dict[str, float]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    width = 0.38
    xs = range(len(METRICS))
    for k, name in enumerate(("base", "tuned")):
        ax.bar([x + (k - 0.5) * width for x in xs], [results[name][m] for m in METRICS], width, label=name)
    ax.set_xticks(list(xs), list(METRICS))
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (0-1)")
    ax.set_title("held-out answers: base vs tuned")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def card_section(results: dict[str, Any], *, split: str, rows: int) -> str:
    """The markdown evaluation section of the model card."""
    b, t = results["base"], results["tuned"]
    lines = [
        "## Evaluation (base vs tuned)",
        "",
        f"Held-out `{split}` split, {rows} rows; loss on assistant tokens only; answers are greedy generations.",
        "",
        "| metric | base | tuned |",
        "|---|---:|---:|",
        f"| loss | {b['loss']:.4f} | {t['loss']:.4f} |",
        f"| perplexity | {b['perplexity']:.2f} | {t['perplexity']:.2f} |",
    ]
    lines += [f"| {m} | {b[m]:.3f} | {t[m]:.3f} |" for m in METRICS]
    lines += ["", "![base vs tuned](eval.png)", ""]
    return "\n".join(lines)


class EvalStage(Stage[EvalConfig]):
    kind = "artifact"
    needs = ("examples", "base_model", "adapter")
    provides = "eval"
    version = "1"
    #: checked at plan time when the dataset step is listed first in inputs
    requires = EXAMPLE_COLUMNS

    def check(self, inputs) -> None:
        ob = self.config.open_book
        if ob is not None and ob.questions and not Path(ob.questions).is_file():
            raise ConfigError("eval: the open-book question file does not exist", received=ob.questions,
                              expected="a JSON-lines file (id, question, optional reference, keywords, page)",
                              fix="fix open_book.questions (a path relative to where slmforge runs, or absolute)")

    def fingerprint_extra(self) -> dict[str, Any]:
        """The question file's content decides the output, not only its path."""
        ob = self.config.open_book
        if ob is None or not ob.questions or not Path(ob.questions).is_file():
            return {}
        import hashlib

        return {"questions_sha256": hashlib.sha256(Path(ob.questions).read_bytes()).hexdigest()}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        torch_setup(self.config.threads)
        cfg = self.config
        inputs = find_inputs(ctx.inputs)
        inputs.need("examples", "base_model", "adapter", where=ctx.step)
        out = Path(ctx.out_dir)
        rows = read_examples(inputs.examples, split=cfg.split)[: cfg.max_examples]
        if not rows:
            raise StageError(f"eval: the {cfg.split} split is empty", received=str(inputs.examples),
                             fix="give the dataset step a non-zero test_fraction (and at least 3 source documents)")
        if cfg.open_book is not None:  # before any model loads: a missing index or another prompt format fails at once
            from train import eval_openbook as ob

            ob.find_index_input(ctx.inputs)
            ob.check_prompt_format(rows, cfg.open_book.prompt_format)
        prompts, refs = prompts_and_references(rows)
        tokenizer = load_tokenizer(inputs.base_model)
        results: dict[str, dict[str, float]] = {}
        answers: dict[str, list[str]] = {}
        for name, adapter in (("base", None), ("tuned", inputs.adapter)):
            model = load_model(inputs.base_model, adapter=adapter)
            results[name], answers[name] = evaluate_model(model, tokenizer, rows, prompts, refs, max_length=cfg.max_length,
                                                          batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
            ctx.progress(1)
            del model
        report = {"split": cfg.split, "rows": len(rows), "results": results}
        section = card_section(results, split=cfg.split, rows=len(rows))
        stats = {"split": cfg.split, "rows": len(rows),
                 **{f"{name}_{k}": round(v, 4) for name, res in results.items() for k, v in res.items()}}
        if cfg.open_book is not None:
            four, four_samples = self._open_book(ctx, inputs, rows, tokenizer)
            report["open_book"] = {"k": cfg.open_book.k, "prompt_format": cfg.open_book.prompt_format.fingerprint(),
                                   "results": four}
            section = section.replace("![base vs tuned](eval.png)\n", "") + "\n" + ob.card_section(four, k=cfg.open_book.k)
            ob.plot(results, four, out / "eval.png", metrics=METRICS)
            write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in four_samples), out / "open_book_samples.jsonl")
            stats.update({f"{name}:{cell}:{m}": v["value"] for name, res in four.items()
                          for cell, ms in res["cells"].items() for m, v in ms.items() if v["value"] is not None})
            stats.update({f"{name}:recall_at_k": res["recall_at_k"]["value"] for name, res in four.items()})
        else:
            plot_comparison(results, out / "eval.png")
        write_json(report, out / "eval.json")
        write_text(section, out / "eval.md")
        samples = [{"id": r["id"], "prompt": p, "reference": ref, "base": a, "tuned": b}
                   for r, p, ref, a, b in zip(rows, prompts, refs, answers["base"], answers["tuned"])]
        write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), out / "samples.jsonl")
        return stats

    def _open_book(self, ctx: StageContext, inputs, rows: list[dict], tokenizer) -> tuple[dict, list[dict]]:
        """The four-way table on the held-out rows' questions and the question file (train/eval_openbook.py)."""
        import pyarrow.parquet as pq

        from curation.index import open_index
        from curation.index.reader import CHUNKS_FILE
        from train import eval_openbook as ob

        ocfg = self.config.open_book
        index = open_index(ob.find_index_input(ctx.inputs))
        chunks = pq.read_table(index.path / CHUNKS_FILE, columns=["chunk_id", "source_id"])
        chunk_source = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("source_id").to_pylist()))
        sets = {f"held-out {self.config.split} split": ob.heldout_questions(rows, chunk_source, ocfg.prompt_format)}
        if ocfg.questions:
            sets[f"questions {Path(ocfg.questions).name}"] = ob.load_questions(ocfg.questions)[: ocfg.max_questions]
        models = {"base": lambda: load_model(inputs.base_model),
                  "tuned": lambda: load_model(inputs.base_model, adapter=inputs.adapter)}
        return ob.run_four_way(models, tokenizer, sets, index, k=ocfg.k, fmt=ocfg.prompt_format, generate=generate_answers,
                               max_new_tokens=self.config.max_new_tokens, quote=ocfg.quote, progress=ctx.progress)

    def summary(self, stats):
        return [(m, f"base {stats.get(f'base_{m}')} -> tuned {stats.get(f'tuned_{m}')}")
                for m in ("loss", *METRICS)]
