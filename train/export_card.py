"""The export stage's model card (README.md beside the GGUF files)."""

from __future__ import annotations

from typing import Any


def _overrides(f: dict[str, Any]) -> str:
    t = f.get("tensor_types")
    if not t:
        return ""
    parts = ([f"token_embd {t['token_embedding_type']}"] if t.get("token_embedding_type") else [])
    parts += [f"`{k}` {v}" for k, v in t.get("tensor_types", {}).items()]
    return " (types set: " + ", ".join(parts) + ")"


def _file_rows(files: list[dict[str, Any]]) -> list[str]:
    rows = ["| file | size | bits/weight | KLD mean | KLD p99 | top-1 | PPL ratio | tokenizer | gate (KLD mean / p99 / top-1 / PPL) | result |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for f in files:
        v, g, t = f["verify"], f["gate"], f["tokenizer"]
        tok = "ok" if not t["failed"] else f"{t['failed']} differences"
        rows.append(
            f"| {f['file']}{' + ' + f['adapter'] if f.get('adapter') else ''}{' (imatrix)' if f.get('imatrix') else ''}{' (GPTQ)' if f.get('method') == 'gptq' else ''}{_overrides(f)} | {f['bytes'] / 2**20:,.1f} MiB | "
            f"{f['bits_per_weight']:.2f} | {v['kld_mean']:.6f} | {v['kld_p99']:.5f} | {100 * v['top1']:.2f} % | "
            f"{v['ppl_ratio']:.4f} | {tok} | ≤ {g['max_kld_mean']:g} / ≤ {g['max_kld_p99']:g} / ≥ {g['min_top1']:g} / "
            f"≤ {g['max_ppl_ratio']:g} | {'PASS' if f['passed'] else 'FAIL'} |")
    return rows


def model_card(*, name: str, base: str, stats: dict[str, Any], eval_md: str | None, has_loss_plot: bool,
               modelfile: str) -> str:
    files = stats["files"] + ([stats["base_lora"]] if stats.get("base_lora") else [])
    lines = [f"# {name}", "", f"LoRA fine-tune of `{base}`, merged and exported to GGUF by slmforge.", ""]
    if eval_md:
        lines += [eval_md, ""]
    if has_loss_plot:
        lines += ["## Training loss", "", "![loss curve](loss.png)", ""]
    v0 = files[0]["verify"]
    lines += [
        "## Export verification (in llama.cpp)", "",
        f"Merged model ({stats['precision']}) vs adapter-applied model: max |logit difference| "
        f"{stats['merge_max_abs_logit_diff']:.2e} on {stats['merge_check_sequences']} held-out conversations.", "",
        "The F16 file is written by slmforge; the other files by llama.cpp's own quantiser from it. Each file is "
        "loaded in llama.cpp and its logits compared with the merged model's on the same token ids over "
        f"{stats['verify_tokens']:,} held-out positions ({stats['verify_sequences']} conversations of the test split, "
        f"merged-model perplexity {v0['ppl_reference']:.2f}), with the statistics of llama.cpp's "
        "`perplexity --kl-divergence`: mean and 99th-percentile KL divergence per token (nats), top-1 agreement "
        "(same most likely next token), and PPL ratio = perplexity of the file / of the merged model. "
        "*bits/weight*: tensor bytes × 8 / parameters. *tokenizer*: held-out conversations (rendered, and their "
        "prompts) and message texts tokenize in llama.cpp to exactly the ids used in training, BOS once, and the "
        "template's end-of-turn token ends generation in llama.cpp.", "",
        *_file_rows(files), "",
    ]
    for f in files:
        c = f.get("calibration")
        if c:
            lines += [f"`{f['file']}`: GPTQ with full-precision targets on {c['sequences']} train-split conversations "
                      f"({c['tokens']:,} tokens, damping {c['damp']}, {c['seconds']:.1f} s), written by slmforge in the "
                      "standard Q4_0 format.", ""]
    pair = next((f for f in files if f.get("adapter")), None)
    if pair:
        lo = pair["lora"]
        lines += [f"`{pair['file']}` + `{pair['adapter']}`: the base model's own GGUF (`{pair['source']}`, tensors copied "
                  f"unchanged, this export's tokenizer and template metadata) with the LoRA adapter in llama.cpp's adapter "
                  f"format ({lo['adapted_tensors']} weights, rank {'/'.join(map(str, lo['ranks']))}, alpha {lo['alpha']:g}, "
                  f"{lo['bytes'] / 2**20:,.1f} MiB), run together by llama.cpp (`llama-cli -m {pair['file']} --lora "
                  f"{pair['adapter']}`, Ollama's `ADAPTER`). The base keeps its own quantisation; the fine-tune is not "
                  "rounded onto it.", ""]
    im = stats.get("imatrix")
    if im:
        lines += [f"Importance matrix (`{im['file']}`, llama.cpp's format): {im['sequences']} train-split conversations, "
                  f"{im['tokens']:,} tokens, {im['tensors']} tensors, {im['seconds']:.1f} s.", ""]
    sm = stats.get("smoothing")
    if sm:
        ck = sm.get("check")
        seen = (f" Whole-model check on {ck['rows']} other train conversations, every product simulated as Q8_0: KLD "
                f"{ck['kld_plain']:.6f} unscaled vs {ck['kld_smoothed']:.6f} scaled." if ck else "")
        if sm.get("kept", True):
            lines += [f"Smoothing (train/smooth.py): the F16 file, and so every file quantised from it, holds the merged "
                      f"model with its channels rescaled exactly ({sm['scaled']} of {sm['places']} layer inputs, median "
                      f"exponent {sm['exponent_median']}, chosen on {sm['tokens']:,} train-split positions); the table "
                      f"compares each file with the unscaled merged model.{seen}", ""]
        else:
            lines += [f"Smoothing (train/smooth.py) was searched but **not used**: the scaled model was not closer in the "
                      f"whole-model check, so the files hold the merged model as it is.{seen}", ""]
    gen = stats.get("generation")
    if gen:
        lines += [f"Stop at end-of-turn in llama.cpp (F16 file, greedy): of {gen['conversations']} held-out conversations fed up "
                  f"to the end of their last answer, the merged model's next token is `{gen['end_of_turn']}` in "
                  f"{gen['checked']}; llama.cpp ended on it in {gen['stopped_at_end_of_turn']} "
                  f"({'ok' if not gen['failed'] else 'FAILED'}).", ""]
    lines += ["## Files", ""]
    lines += [f"- `{f['file']}` sha256 `{f['sha256']}`" for f in files]
    lines += [f"- `{f['adapter']}` sha256 `{f['adapter_sha256']}`" for f in files if f.get("adapter")]
    timings = stats.get("timings")
    if timings:
        lines += ["", "## Export time", "", f"Wall seconds per phase ({stats.get('threads') or 'all'} threads):", "",
                  "| phase | seconds |", "|---|---:|", *[f"| {k} | {v:,.1f} |" for k, v in timings.items()]]
    lines += ["", "## Run with Ollama", "", "```", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "",
              "Modelfile:", "", "```", modelfile.rstrip(), "```", ""]
    return "\n".join(lines)
