"""Merge the LoRA adapter, export GGUF files, and verify every file before the stage succeeds.

Top to bottom: merge (and check the merged model equals the adapter-applied one) -> write each
GGUF -> parity gate (the GGUF's tokenizer + template, as transformers rebuilds them, must render
held-out conversations to the same tokens as the training tokenizer) -> verify (reload the GGUF
with ``from_pretrained(dir, gguf_file=...)`` and compare next-token top-1 and logits with the
merged model on held-out prompts) -> Ollama Modelfile -> model card. Any failed check fails the
stage after the model card is written, so the reason can be read next to the files.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from schemas.config.train import ExportConfig
from schemas.errors import StageError
from schemas.io import write_json, write_text
from schemas.stage import Stage, StageContext
from train.inputs import EXAMPLE_COLUMNS
from train.chat import CHATML_TEMPLATE, IM_END, encode_example, parity_gate
from train.gguf_export import write_gguf
from train.inputs import find_inputs, load_model, load_tokenizer, read_examples, torch_setup


def heldout_conversations(examples: Path, *, limit: int) -> list[list[dict[str, str]]]:
    rows = read_examples(examples, split="test") or read_examples(examples, split="validation")
    if not rows:
        raise StageError("export: no held-out rows (test or validation split) to verify with",
                         received=str(examples), fix="give the dataset step a non-zero test_fraction")
    return [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in rows[:limit]]


def verification_inputs(tokenizer, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Held-out conversations as token ids with the positions that are compared.

    ``prompt_ends``: the last token of each prompt (the model's next-token prediction for the
    held-out prompt — the gated number). ``positions``: every position whose next token is an
    answer token (the answer teacher-forced; reported, not gated).
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
    """Next-token top-1 agreement on the held-out prompts (gated); teacher-forced answer positions and every
    position (informational); logit differences."""
    import torch

    counts = {"next": [0, 0], "answer": [0, 0], "all": [0, 0], "next_tie": [0, 0]}
    max_abs, sum_abs, n_vals = 0.0, 0.0, 0
    for a, b, it in zip(reference, candidate, items):
        pick = b.argmax(-1)
        same = a.argmax(-1) == pick
        # a tie of the reference: the candidate's pick is within tie_tolerance of the reference's best logit
        tied = a.max(-1).values - a.gather(-1, pick[:, None])[:, 0] <= tie_tolerance
        for key, ok, pos in (("next", same, it["prompt_ends"]), ("answer", same, it["positions"]),
                             ("all", same, range(len(same))), ("next_tie", same | tied, it["prompt_ends"])):
            idx = torch.tensor(list(pos), dtype=torch.long)
            counts[key][0] += int(ok[idx].sum())
            counts[key][1] += len(idx)
        diff = (a - b).abs()
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        n_vals += diff.numel()
    cos = float(torch.nn.functional.cosine_similarity(torch.cat(reference), torch.cat(candidate), dim=-1).mean())
    rate = {k: v[0] / max(v[1], 1) for k, v in counts.items()}
    return {"top1_agreement": rate["next"], "prompts": counts["next"][1],
            "top1_agreement_tie_aware": rate["next_tie"], "tie_tolerance": tie_tolerance,
            "answer_top1_agreement": rate["answer"], "answer_positions": counts["answer"][1],
            "all_positions_top1_agreement": rate["all"], "all_positions": counts["all"][1],
            "max_abs_logit_diff": max_abs, "mean_abs_logit_diff": sum_abs / n_vals, "mean_cosine": cos}


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


def model_card(*, name: str, base: str, files: list[dict], merge_diff: float, eval_md: str | None,
               has_loss_plot: bool, modelfile: str) -> str:
    lines = [f"# {name}", "", f"LoRA fine-tune of `{base}`, merged and exported to GGUF by slmforge.", ""]
    if eval_md:
        lines += [eval_md, ""]
    if has_loss_plot:
        lines += ["## Training loss", "", "![loss curve](loss.png)", ""]
    lines += [
        "## Export verification", "",
        f"Merged model vs adapter-applied model: max |logit difference| {merge_diff:.2e}.", "",
        "Each GGUF is reloaded with transformers (`from_pretrained(dir, gguf_file=...)`) and compared with the merged "
        "model on held-out prompts. *next-token top-1*: the prediction right after each held-out prompt, strict, and "
        "tie-aware (gated: the file's pick also counts when the merged model rates it within the tie tolerance of its "
        "own best logit, i.e. the merged model itself has no clear preference). "
        "Informational: *answer* = every answer token teacher-forced; *all* = every position, including prompt text "
        "where the next token is uncertain and near-ties flip under quantisation.",
        "", "| file | bytes | template parity | next-token top-1 (strict) | tie-aware (gated) | answer top-1 | all positions | max abs logit diff | "
        "mean cosine | required | result |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in files:
        v = f.get("verify") or {}
        parity = "ok" if f.get("parity", {}).get("differences") == 0 else f.get("parity_error", "failed")
        lines.append(
            f"| {f['file']} | {f['bytes']} | {parity} | {v.get('top1_agreement', float('nan')):.4f} ({v.get('prompts')}) | "
            f"{v.get('top1_agreement_tie_aware', float('nan')):.4f} (±{v.get('tie_tolerance', 0)}) | "
            f"{v.get('answer_top1_agreement', float('nan')):.4f} | {v.get('all_positions_top1_agreement', float('nan')):.4f} | {v.get('max_abs_logit_diff', float('nan')):.4f} | "
            f"{v.get('mean_cosine', float('nan')):.5f} | {f['required_top1']:.2f} | {'PASS' if f['passed'] else 'FAIL'} |"
        )
    lines += ["", "## Files", ""]
    lines += [f"- `{f['file']}` sha256 `{f['sha256']}`" for f in files]
    lines += ["", "## Run with Ollama", "", "```", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "",
              "Modelfile:", "", "```", modelfile.rstrip(), "```", ""]
    return "\n".join(lines)


class ExportStage(Stage[ExportConfig]):
    kind = "artifact"
    version = "1"
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

        # 2-4. write, parity-check and verify every GGUF
        files, failures = [], []
        for quant in cfg.quantizations:
            path = out / f"{cfg.model_name}-{quant}.gguf"
            info = write_gguf(merged, tokenizer, path, quant=quant, name=cfg.model_name)
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
            gated = info["verify"]["top1_agreement_tie_aware"]
            info["passed"] = gated >= info["required_top1"]
            if not info["passed"]:
                failures.append(f"{path.name}: next-token top-1 agreement {gated:.4f} (ties within "
                                f"{cfg.tie_tolerance} logits count as agreeing) < required {info['required_top1']}")
            files.append(info)
            ctx.progress(1)

        # 5. Ollama Modelfile and the model card
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
                              eval_md=eval_md, has_loss_plot=has_loss, modelfile=modelfile), out / "README.md")
        stats = {"merge_max_abs_logit_diff": merge_diff, "files": files}
        write_json(stats, out / "export.json")
        if failures:
            raise StageError("export verification failed: " + "; ".join(failures),
                             fix=f"read the model card in {out}; raise training quality or lower min_top1 for that file")
        return {"merge_max_abs_logit_diff": merge_diff,
                **{f"{f['file']}:top1": round(f["verify"]["top1_agreement"], 4) for f in files},
                **{f"{f['file']}:top1_tie_aware": round(f["verify"]["top1_agreement_tie_aware"], 4) for f in files}}

    def summary(self, stats):
        return [(k, str(v)) for k, v in stats.items() if ":top1" in k]
