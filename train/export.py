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

from schemas.config.train import ExportConfig
from schemas.errors import StageError
from schemas.io import write_json, write_text
from schemas.stage import Stage, StageContext
from train.inputs import EXAMPLE_COLUMNS
from train.chat import CHATML_TEMPLATE, IM_END, encode_example, parity_gate
from train.gguf_export import write_gguf
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


def all_logits(model, items: list[dict[str, Any]]) -> list[Any]:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=torch.tensor([it["input_ids"]], device=device)).logits[0].float().cpu()
                for it in items]


def compare_logits(reference: list[Any], candidate: list[Any], items: list[dict[str, Any]], *,
                   tie_tolerance: float = 0.0) -> dict[str, float]:
    """Top-1 agreement of ``candidate`` with ``reference`` at the prompt ends and on the answer positions
    (strict and tie-aware), on every position, logit differences, and how sure the reference itself is
    (median top-1 probability, 10th percentile of its top-1 - top-2 logit margin)."""
    import torch

    counts = {k: [0, 0] for k in ("answer", "answer_tie", "next", "next_tie", "all")}
    max_abs, sum_abs, n_vals = 0.0, 0.0, 0
    probs, margins = [], []
    for a, b, it in zip(reference, candidate, items):
        pick = b.argmax(-1)
        same = a.argmax(-1) == pick
        # a tie of the reference: the candidate's pick is within tie_tolerance of the reference's best logit
        tied = same | (a.max(-1).values - a.gather(-1, pick[:, None])[:, 0] <= tie_tolerance)
        for key, ok, pos in (("answer", same, it["positions"]), ("answer_tie", tied, it["positions"]),
                             ("next", same, it["prompt_ends"]), ("next_tie", tied, it["prompt_ends"]),
                             ("all", same, range(len(same)))):
            idx = torch.tensor(list(pos), dtype=torch.long)
            counts[key][0] += int(ok[idx].sum())
            counts[key][1] += len(idx)
        ans = torch.tensor(it["positions"], dtype=torch.long)
        top2 = a[ans].topk(2, dim=-1).values
        margins.append(top2[:, 0] - top2[:, 1])
        probs.append(a[ans].softmax(-1).max(-1).values)
        diff = (a - b).abs()
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        n_vals += diff.numel()
    cos = float(torch.nn.functional.cosine_similarity(torch.cat(reference), torch.cat(candidate), dim=-1).mean())
    rate = {k: v[0] / max(v[1], 1) for k, v in counts.items()}
    margins_t, probs_t = torch.cat(margins), torch.cat(probs)
    return {"top1_agreement": rate["answer"], "top1_agreement_tie_aware": rate["answer_tie"],
            "positions": counts["answer"][1], "tie_tolerance": tie_tolerance,
            "prompt_end_top1_agreement": rate["next"], "prompt_end_top1_agreement_tie_aware": rate["next_tie"],
            "prompts": counts["next"][1],
            "all_positions_top1_agreement": rate["all"], "all_positions": counts["all"][1],
            "max_abs_logit_diff": max_abs, "mean_abs_logit_diff": sum_abs / n_vals, "mean_cosine": cos,
            "reference_median_top1_prob": float(probs_t.median()) if len(probs_t) else float("nan"),
            "reference_margin_p10": float(margins_t.quantile(0.1)) if len(margins_t) else float("nan")}


def merge_adapter(base_dir: Path, adapter: Path, probe: list[list[int]]) -> tuple[Any, float]:
    """The merged model and the largest logit difference between it and the adapter-applied model."""
    peft_model = load_model(base_dir, adapter=adapter)
    before = all_logits(peft_model, probe)
    merged = peft_model.merge_and_unload().eval()
    after = all_logits(merged, probe)
    return merged, max(float((a - b).abs().max()) for a, b in zip(before, after))


def ollama_modelfile(*, gguf_name: str, template: str | None, system: str | None, stop: str | None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if template == CHATML_TEMPLATE:
        lines += ['TEMPLATE """<s>{{- range .Messages }}<|im_start|>{{ .Role }}',
                  "{{ .Content }}<|im_end|>", "{{ end }}<|im_start|>assistant", '"""']
    else:
        lines += ["# No TEMPLATE: Ollama reads the chat template stored in the GGUF (tokenizer.chat_template)."]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    if stop:
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


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


def model_card(*, name: str, base: str, files: list[dict], merge_diff: float, eval_md: str | None,
               has_loss_plot: bool, modelfile: str, q4_note: str | None = None) -> str:
    lines = [f"# {name}", "", f"LoRA fine-tune of `{base}`, merged and exported to GGUF by slmforge.", ""]
    if eval_md:
        lines += [eval_md, ""]
    if has_loss_plot:
        lines += ["## Training loss", "", "![loss curve](loss.png)", ""]
    lines += [
        "## Export verification", "",
        f"Merged model vs adapter-applied model: max |logit difference| {merge_diff:.2e}.", "",
        *([q4_note, ""] if q4_note else []),
        "Each GGUF is reloaded with transformers (`from_pretrained(dir, gguf_file=...)`) and compared with the merged "
        "model on held-out conversations. *prompt end*: the next-token prediction right after each held-out prompt. "
        "*answer positions*: every prediction made while answering, the answer teacher-forced (many more positions, "
        "including every low-margin token). *strict*: same top-1 token; *tie-aware*: the file's pick also counts when "
        "the merged model rates it within the tie tolerance of its own best logit (the merged model itself has no "
        "clear preference there). The gated figure is the tie-aware one on the positions in the *gated* column. "
        "*merged p(top-1)*: the merged model's median top-1 probability on the answer positions -- a flat model "
        "(small margins) flips more top-1s under the same rounding.",
        "", "| file | bytes | template parity | prompt end strict / tie-aware (n) | answer positions strict / "
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
            f"({v.get('prompts')}) | {v.get('top1_agreement', nan):.4f} / {v.get('top1_agreement_tie_aware', nan):.4f} "
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
    version = "2"  # 2: Q4_0 rounded by GPTQ calibration by default
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
        merged, merge_diff = merge_adapter(inputs.base_model, inputs.adapter, prompts)
        if merge_diff > 1e-3:
            raise StageError("export: the merged model differs from the adapter-applied model",
                             received=f"max |logit diff| {merge_diff:.3g}", expected="<= 1e-3",
                             fix="check the adapter matches the base model (same base_model step)")
        if cfg.keep_merged:
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
        reference = all_logits(merged, prompts)
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
            info["verify"] = compare_logits(reference, all_logits(gguf_model, prompts), prompts,
                                            tie_tolerance=cfg.tie_tolerance)
            del gguf_model
            v = info["verify"]
            info["verify_on"] = cfg.verify_on
            if cfg.verify_on == "answer":
                gated, strict, where = v["top1_agreement_tie_aware"], v["top1_agreement"], f"{v['positions']} held-out answer positions"
            else:
                gated, strict = v["prompt_end_top1_agreement_tie_aware"], v["prompt_end_top1_agreement"]
                where = f"the next token after {v['prompts']} held-out prompts"
            info["gated_top1"] = gated
            info["passed"] = gated >= info["required_top1"]
            if not info["passed"]:
                failures.append(f"{path.name}: top-1 agreement on {where} {gated:.4f} (ties within {cfg.tie_tolerance} "
                                f"logits count as agreeing; strict {strict:.4f}) < required {info['required_top1']}")
            files.append(info)
            ctx.progress(1)

        # 6. Ollama Modelfile and the model card
        eot = tokenizer.convert_ids_to_tokens([tokenizer.eos_token_id])[0] if tokenizer.eos_token_id is not None else IM_END
        modelfile = ollama_modelfile(gguf_name=f"{cfg.model_name}-{cfg.ollama_quantization}.gguf",
                                     template=tokenizer.chat_template, system=cfg.system_prompt, stop=eot)
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
                              eval_md=eval_md, has_loss_plot=has_loss, modelfile=modelfile,
                              q4_note=q4_0_method(calibration) if "Q4_0" in cfg.quantizations else None),
                   out / "README.md")
        stats = {"merge_max_abs_logit_diff": merge_diff, "files": files}
        write_json(stats, out / "export.json")
        if failures:
            raise StageError("export verification failed: " + "; ".join(failures),
                             fix=f"read the model card in {out}; raise training quality or lower min_top1 for that file")
        calibration_stats = {} if calibration is None else {
            "q4_calibration": calibration["method"], "q4_calibration_seconds": calibration["seconds"],
            "q4_calibration_tokens": calibration["tokens"]}
        return {"merge_max_abs_logit_diff": merge_diff, "verify_on": cfg.verify_on, **calibration_stats,
                **{f"{f['file']}:top1": round(f["gated_top1"], 4) for f in files},
                **{f"{f['file']}:answer_top1_tie_aware": round(f["verify"]["top1_agreement_tie_aware"], 4) for f in files}}

    def summary(self, stats):
        return [(k, str(v)) for k, v in stats.items() if ":top1" in k or k.startswith("q4_calibration")]
