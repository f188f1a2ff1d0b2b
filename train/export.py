"""Merge the LoRA adapter, export GGUF files, and verify every file before the stage succeeds.

Top to bottom: merge (and check the merged model equals the adapter-applied one) -> calibrate the
Q4_0 rounding on train-split activations (``train.q4_calibrate``, when a Q4_0 file is written) ->
write each GGUF -> parity gate (the GGUF's tokenizer + template, as transformers rebuilds them, must render
held-out conversations to the same tokens as the training tokenizer) -> verify (reload the GGUF
with ``from_pretrained(dir, gguf_file=...)`` and compare next-token top-1 and logits with the
merged model on held-out prompts) -> Ollama Modelfile -> model card. Any failed check fails the
stage after the model card is written, so the reason can be read next to the files.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from train.config import ExportConfig
from schemas.errors import StageError
from schemas.io import write_json, write_text
from schemas.stage import Stage, StageContext
from train.inputs import EXAMPLE_COLUMNS
from train.chat import encode_example, parity_gate
from train.gguf_export import write_gguf
from train.modelfile import ollama_modelfile
from train.inputs import conversations, find_inputs, load_model, load_tokenizer, read_examples, torch_setup


def heldout_conversations(examples: Path, *, limit: int) -> list[list[dict[str, str]]]:
    rows = read_examples(examples, split="test") or read_examples(examples, split="validation")
    if not rows:
        raise StageError("export: no held-out rows (test or validation split) to verify with",
                         received=str(examples), fix="give the dataset step a non-zero test_fraction")
    return conversations(rows[:limit])


def verification_inputs(tokenizer, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Held-out conversations as token ids with the positions that are compared.

    ``prompt_ends``: the position right after each prompt (the model's next-token prediction for the
    held-out prompt; gated by default). ``positions``: every position whose next token is an answer
    token, the answer teacher-forced -- every prediction made while answering, end-of-turn included
    (many more positions, so a steadier figure, and a stricter one: it includes every low-margin
    token of the answer; gated with ``verify_on: answer``).
    """
    out = []
    for conv in conversations:
        enc = encode_example(tokenizer, conv, max_length=1 << 30)
        lab = enc["labels"]
        positions = [i - 1 for i, t in enumerate(lab) if t != -100 and i > 0]
        prompt_ends = [i - 1 for i, t in enumerate(lab) if t != -100 and i > 0 and lab[i - 1] == -100]
        out.append({"input_ids": enc["input_ids"], "positions": positions, "prompt_ends": prompt_ends})
    return out


def item_logits(model, item: dict[str, Any]) -> Any:
    """Logits (positions x vocabulary, float32, CPU) of one conversation."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([item["input_ids"]], device=device)).logits[0].float().cpu()


def all_logits(model, items: list[dict[str, Any]]) -> list[Any]:
    """Logits of every conversation, all kept: for small models and few prompts (tests, benchmarks); the export
    stage streams instead (``ReferenceLogits``, ``LogitComparison``)."""
    return [item_logits(model, it) for it in items]


def logits_bytes(item: dict[str, Any], vocab_size: int) -> int:
    return len(item["input_ids"]) * vocab_size * 4


def leading_fit(model, items: list[dict[str, Any]], *, budget_bytes: int) -> int:
    """How many of the first ``items`` have logits that fit in ``budget_bytes`` together."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    used = 0
    for n, it in enumerate(items):
        used += logits_bytes(it, vocab)
        if used > budget_bytes:
            return n
    return len(items)


class ReferenceLogits:
    """The reference model's logits per conversation, the first ones kept while they fit in
    ``budget_bytes``, the rest computed again on each pass over them. A 262k-token vocabulary (Gemma) makes one 150-token conversation's logits
    157 MB, so 64 held-out prompts would be 10 GB if all were kept."""

    def __init__(self, model, items: list[dict[str, Any]], *, budget_bytes: int):
        self.model, self.items = model, items
        self.cached = [item_logits(model, it) for it in items[:leading_fit(model, items, budget_bytes=budget_bytes)]]

    def __iter__(self):
        yield from self.cached
        for it in self.items[len(self.cached):]:
            yield item_logits(self.model, it)


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: how far an agreement measured on ``n`` prompts can be
    from the file's agreement on prompts like them (36 of 39 agreeing: 0.80-0.97)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


class LogitComparison:
    """Top-1 agreement of a candidate's logits with the reference's at the prompt ends and on the answer
    positions (strict and tie-aware), on every position, logit differences, and how sure the reference
    itself is (median top-1 probability, 10th percentile of its top-1 - top-2 margin), accumulated one
    conversation at a time (``add``), so memory holds one conversation's logits, not all of them."""

    def __init__(self, *, tie_tolerance: float = 0.0):
        self.tie_tolerance = tie_tolerance
        self.counts = {k: [0, 0] for k in ("answer", "answer_tie", "next", "next_tie", "all")}
        self.max_abs, self.sum_abs, self.n_vals = 0.0, 0.0, 0
        self.cos_sum, self.rows = 0.0, 0
        self.probs: list[Any] = []
        self.margins: list[Any] = []

    def add(self, a, b, item: dict[str, Any]) -> None:
        import torch

        pick = b.argmax(-1)
        same = a.argmax(-1) == pick
        # a tie of the reference: the candidate's pick is within tie_tolerance of the reference's best logit
        tied = same | (a.max(-1).values - a.gather(-1, pick[:, None])[:, 0] <= self.tie_tolerance)
        for key, ok, pos in (("answer", same, item["positions"]), ("answer_tie", tied, item["positions"]),
                             ("next", same, item["prompt_ends"]), ("next_tie", tied, item["prompt_ends"]),
                             ("all", same, range(len(same)))):
            idx = torch.tensor(list(pos), dtype=torch.long)
            self.counts[key][0] += int(ok[idx].sum())
            self.counts[key][1] += len(idx)
        ans = torch.tensor(item["positions"], dtype=torch.long)
        top2 = a[ans].topk(2, dim=-1).values
        self.margins.append(top2[:, 0] - top2[:, 1])
        self.probs.append(a[ans].softmax(-1).max(-1).values)
        diff = (a - b).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.n_vals += diff.numel()
        self.cos_sum += float(torch.nn.functional.cosine_similarity(a, b, dim=-1).sum())
        self.rows += a.shape[0]

    def result(self) -> dict[str, Any]:
        import torch

        c = self.counts
        rate = {k: v[0] / max(v[1], 1) for k, v in c.items()}
        margins = torch.cat(self.margins) if self.margins else torch.empty(0)
        probs = torch.cat(self.probs) if self.probs else torch.empty(0)
        return {"answer_top1_agreement": rate["answer"], "answer_top1_agreement_tie_aware": rate["answer_tie"],
                "positions": c["answer"][1], "tie_tolerance": self.tie_tolerance,
                "answer_tie_aware_ci95": list(wilson_interval(*c["answer_tie"])),
                "prompt_end_top1_agreement": rate["next"], "prompt_end_top1_agreement_tie_aware": rate["next_tie"],
                "prompts": c["next"][1],
                "prompt_end_tie_aware_ci95": list(wilson_interval(*c["next_tie"])),
                "all_positions_top1_agreement": rate["all"], "all_positions": c["all"][1],
                "max_abs_logit_diff": self.max_abs, "mean_abs_logit_diff": self.sum_abs / max(self.n_vals, 1),
                "mean_cosine": self.cos_sum / max(self.rows, 1),
                "reference_median_top1_prob": float(probs.median()) if len(probs) else float("nan"),
                "reference_margin_p10": float(margins.quantile(0.1)) if len(margins) else float("nan")}


def compare_logits(reference, candidate, items: list[dict[str, Any]], *, tie_tolerance: float = 0.0) -> dict[str, Any]:
    """``LogitComparison`` over iterables of logits (lists, a ``ReferenceLogits``, generators), pair by pair."""
    stats = LogitComparison(tie_tolerance=tie_tolerance)
    for a, b, it in zip(reference, candidate, items):
        stats.add(a, b, it)
    return stats.result()


def verify_model(reference: ReferenceLogits, model, *, tie_tolerance: float) -> dict[str, Any]:
    """Compare ``model`` with the reference on the reference's conversations, one at a time."""
    candidate = (item_logits(model, it) for it in reference.items)
    return compare_logits(reference, candidate, reference.items, tie_tolerance=tie_tolerance)


def merge_adapter(base_dir: Path, adapter: Path, probe: list[dict[str, Any]], *,
                  budget_bytes: int) -> tuple[Any, float, int]:
    """The merged model, the largest logit difference between it and the adapter-applied model, and on how
    many ``probe`` conversations that was measured (the first ones whose logits fit in ``budget_bytes``, at
    least one: the adapter-applied logits must be kept until the merge is done)."""
    peft_model = load_model(base_dir, adapter=adapter)
    n = max(1, leading_fit(peft_model, probe, budget_bytes=budget_bytes))
    before = all_logits(peft_model, probe[:n])
    merged = peft_model.merge_and_unload().eval()
    return merged, max(float((b - item_logits(merged, it)).abs().max()) for b, it in zip(before, probe[:n])), n


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def q4_0_method(calibration: dict[str, Any] | None) -> str:
    """One model-card line: how the Q4_0 file's weights were rounded."""
    if calibration is None:
        return ("Q4_0 weights: rounded to the nearest value of each block's scale (scale chosen by an error search; "
                "`q4_calibration: none`).")
    return (f"Q4_0 weights: GPTQ with full-precision targets on {calibration['sequences']} train-split conversations "
            f"({calibration['tokens']} tokens, damping {calibration['damp']}, {calibration['seconds']:.1f} s); "
            "`token_embd`/`output` in Q8_0.")


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"{ci[0]:.2f}-{ci[1]:.2f}"


def model_card(*, name: str, base: str, files: list[dict], merge_diff: float, merge_prompts: int, eval_md: str | None,
               has_loss_plot: bool, modelfile: str, q4_note: str | None = None) -> str:
    lines = [f"# {name}", "", f"LoRA fine-tune of `{base}`, merged and exported to GGUF by slmforge.", ""]
    if eval_md:
        lines += [eval_md, ""]
    if has_loss_plot:
        lines += ["## Training loss", "", "![loss curve](loss.png)", ""]
    lines += [
        "## Export verification", "",
        f"Merged model vs adapter-applied model: max |logit difference| {merge_diff:.2e} on {merge_prompts} held-out "
        "conversations.", "",
        *([q4_note, ""] if q4_note else []),
        "Each GGUF is reloaded with transformers (`from_pretrained(dir, gguf_file=...)`) and compared with the merged "
        "model on held-out conversations. *prompt end*: the next-token prediction right after each held-out prompt. "
        "*answer positions*: every prediction made while answering, the answer teacher-forced (many more positions, "
        "including every low-margin token). *strict*: same top-1 token; *tie-aware*: the file's pick also counts when "
        "the merged model rates it within the tie tolerance of its own best logit (the merged model itself has no "
        "clear preference there). The gated figure is the tie-aware one on the positions in the *gated* column. "
        "*merged p(top-1)*: the merged model's median top-1 probability on the answer positions -- a flat model "
        "(small margins) flips more top-1s under the same rounding. *95 % interval*: Wilson score interval of the "
        "tie-aware prompt-end agreement -- with a few dozen prompts, one flip moves the figure by 2-3 points.",
        "", "| file | bytes | template parity | prompt end strict / tie-aware (n; 95 % interval) | answer positions strict / "
        "tie-aware (n) | all positions | max abs logit diff | mean cosine | merged p(top-1) | gated | required | result |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for f in files:
        v = f.get("verify") or {}
        parity = "ok" if f.get("parity", {}).get("differences") == 0 else f.get("parity_error", "failed")
        nan = float("nan")
        lines.append(
            f"| {f['file']} | {f['bytes']} | {parity} | "
            f"{v.get('prompt_end_top1_agreement', nan):.3f} / {v.get('prompt_end_top1_agreement_tie_aware', nan):.3f} "
            f"({v.get('prompts')}; {_interval(v.get('prompt_end_tie_aware_ci95'))}) | "
            f"{v.get('answer_top1_agreement', nan):.4f} / {v.get('answer_top1_agreement_tie_aware', nan):.4f} "
            f"({v.get('positions')}) | {v.get('all_positions_top1_agreement', nan):.4f} | "
            f"{v.get('max_abs_logit_diff', nan):.4f} | {v.get('mean_cosine', nan):.5f} | "
            f"{v.get('reference_median_top1_prob', nan):.3f} | {f.get('verify_on', '-')} (±{v.get('tie_tolerance', 0)}) | "
            f"{f['required_top1']:.2f} | {'PASS' if f['passed'] else 'FAIL'} |"
        )
    lines += ["", "## Files", ""]
    lines += [f"- `{f['file']}` sha256 `{f['sha256']}`" for f in files]
    lines += ["", "## Run with Ollama", "", "```", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "",
              "Modelfile:", "", "```", modelfile.rstrip(), "```", ""]
    return "\n".join(lines)


class ExportStage(Stage[ExportConfig]):
    kind = "artifact"
    needs = ("examples", "base_model", "adapter")
    provides = "export"  # what a bundle step needs
    version = "3"  # 2: Q4_0 rounded by GPTQ calibration by default; 3: export.json answer_* keys, 95 % intervals
    #: checked at plan time when the dataset step is listed first in inputs
    requires = EXAMPLE_COLUMNS

    def run(self, ctx: StageContext) -> dict[str, Any]:
        torch_setup(self.config.threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        inputs = find_inputs(ctx.inputs)
        inputs.need("examples", "base_model", "adapter", where=ctx.step)
        out = Path(ctx.out_dir)
        tokenizer = load_tokenizer(inputs.base_model)
        conversations = heldout_conversations(inputs.examples, limit=max(cfg.verify_prompts, cfg.parity_samples))
        prompts = verification_inputs(tokenizer, conversations[: cfg.verify_prompts])

        # 1. merge, and check the merge did not change the model
        budget = cfg.logits_memory_mb << 20
        merged, merge_diff, merge_prompts = merge_adapter(inputs.base_model, inputs.adapter, prompts, budget_bytes=budget)
        if merge_diff > 1e-3:
            raise StageError("export: the merged model differs from the adapter-applied model",
                             received=f"max |logit diff| {merge_diff:.3g}", expected="<= 1e-3",
                             fix="check the adapter matches the base model (same base_model step)")
        if cfg.keep_merged:
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
        reference = ReferenceLogits(merged, prompts, budget_bytes=budget)
        ctx.progress(1)

        # 2. Q4_0 calibration on train-split activations (the model is left unchanged)
        q4_0_weights, calibration = None, None
        if "Q4_0" in cfg.quantizations and cfg.q4_calibration == "gptq":
            from train.q4_calibrate import calibrate_q4_0, calibration_sequences

            sequences = calibration_sequences(tokenizer, inputs.examples, rows=cfg.calibration_rows,
                                              max_length=cfg.calibration_max_length)
            q4_0_weights, calibration = calibrate_q4_0(merged, sequences, damp=cfg.calibration_damp,
                                                       progress=ctx.progress)

        # 3-5. write, parity-check and verify every GGUF
        files, failures = [], []
        for quant in cfg.quantizations:
            path = out / f"{cfg.model_name}-{quant}.gguf"
            started = time.perf_counter()
            info = write_gguf(merged, tokenizer, path, quant=quant, name=cfg.model_name,
                              q4_0_weights=q4_0_weights if quant == "Q4_0" else None)
            info["write_seconds"] = round(time.perf_counter() - started, 3)
            if quant == "Q4_0":
                info["q4_calibration"] = calibration or {"method": "none"}
            info["sha256"] = sha256(path)
            info["required_top1"] = cfg.min_top1.get(quant, 1.0)
            info["passed"] = False
            try:
                gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=path.name)
                info["parity"] = parity_gate(tokenizer, gguf_tok, conversations[: cfg.parity_samples],
                                             where=path.name)
            except StageError as exc:
                info["parity_error"] = exc.message
                failures.append(str(exc))
                files.append(info)
                continue
            gguf_model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name).eval()
            info["verify"] = verify_model(reference, gguf_model, tie_tolerance=cfg.tie_tolerance)
            del gguf_model
            v = info["verify"]
            info["verify_on"] = cfg.verify_on
            if cfg.verify_on == "answer":
                gated, strict, where = v["answer_top1_agreement_tie_aware"], v["answer_top1_agreement"], f"{v['positions']} held-out answer positions"
                ci = v["answer_tie_aware_ci95"]
            else:
                gated, strict = v["prompt_end_top1_agreement_tie_aware"], v["prompt_end_top1_agreement"]
                where = f"the next token after {v['prompts']} held-out prompts"
                ci = v["prompt_end_tie_aware_ci95"]
            info["gated_top1"] = gated
            info["passed"] = gated >= info["required_top1"]
            if not info["passed"]:
                failures.append(f"{path.name}: top-1 agreement on {where} {gated:.4f} (ties within {cfg.tie_tolerance} "
                                f"logits count as agreeing; strict {strict:.4f}; 95 % interval {ci[0]:.3f}-{ci[1]:.3f}) "
                                f"< required {info['required_top1']}")
            files.append(info)
            ctx.progress(1)

        # 6. Ollama Modelfile and the model card
        modelfile = ollama_modelfile(gguf_name=f"{cfg.model_name}-{cfg.ollama_quantization}.gguf",
                                     tokenizer=tokenizer, system=cfg.system_prompt)
        write_text(modelfile, out / "Modelfile")
        eval_md = None
        if inputs.eval is not None:
            eval_md = (inputs.eval / "eval.md").read_text()
            for name in ("eval.png", "eval.json"):
                if (inputs.eval / name).exists():
                    shutil.copy2(inputs.eval / name, out / name)
        has_loss = (inputs.adapter.parent / "loss.png").exists()
        if has_loss:
            shutil.copy2(inputs.adapter.parent / "loss.png", out / "loss.png")
        write_text(model_card(name=cfg.model_name, base=str(inputs.base_model), files=files, merge_diff=merge_diff,
                              merge_prompts=merge_prompts,
                              eval_md=eval_md, has_loss_plot=has_loss, modelfile=modelfile,
                              q4_note=q4_0_method(calibration) if "Q4_0" in cfg.quantizations else None),
                   out / "README.md")
        stats = {"merge_max_abs_logit_diff": merge_diff, "merge_check_prompts": merge_prompts, "files": files}
        write_json(stats, out / "export.json")
        if failures:
            raise StageError("export verification failed: " + "; ".join(failures),
                             fix=f"read the model card in {out}; raise training quality or lower min_top1 for that file")
        calibration_stats = {} if calibration is None else {
            "q4_calibration": calibration["method"], "q4_calibration_seconds": calibration["seconds"],
            "q4_calibration_tokens": calibration["tokens"]}
        return {"merge_max_abs_logit_diff": merge_diff, "verify_on": cfg.verify_on, **calibration_stats,
                **{f"{f['file']}:top1": round(f["gated_top1"], 4) for f in files},
                **{f"{f['file']}:answer_top1_tie_aware": round(f["verify"]["answer_top1_agreement_tie_aware"], 4) for f in files}}

    def summary(self, stats):
        return [(k, str(v)) for k, v in stats.items() if ":top1" in k or k.startswith("q4_calibration")]
