"""The export stage on a real fine-tune, judged in llama.cpp: every quant type, its KL divergence against the
merged model, and the export's wall time -- plus, side by side in the same verification pass, the variants
the stage does not write by default: llama.cpp's quantiser with an importance matrix (train split), and the
GPTQ-calibrated Q4_0 the previous exporter wrote (``train/q4_calibrate.py`` on the train split, written by
``train.gguf_export`` with ``q4_0_weights``).

    python bench/train/gguf_kld.py \\
        --dataset workspace/postgres-docs/dataset/<fp> --base workspace/postgres-docs/base_model/<fp> \\
        --train workspace/postgres-docs/train/<fp> --out /tmp/gguf_kld [--threads 2] [--variants imatrix,gptq]

Prints the stage's wall time, its table (the model card's), and a table of the extra variants.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TYPES = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"]


def row(name: str, v: dict, size: int) -> str:
    return (f"| {name} | {size / 2**20:,.1f} | {v['tensor_bytes'] * 8 / v['n_params']:.2f} | {v['kld_mean']:.6f} "
            f"± {v['kld_mean_se']:.6f} | {v['kld_p99']:.5f} | {100 * v['top1']:.2f} ± {100 * v['top1_se']:.2f} | "
            f"{v['ppl_ratio']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify-tokens", type=int, default=4096)
    ap.add_argument("--name", default="gemma-3-270m-postgres-sql")
    ap.add_argument("--variants", default="imatrix,gptq", help="extras: imatrix, gptq (files verified side by side), precision (bf16/fp16 reference vs fp32); '' none")
    ap.add_argument("--calibration-rows", type=int, default=128)
    ap.add_argument("--smooth", action="store_true", help="the export's smooth: true (train/smooth.py)")
    ap.add_argument("--reuse", action="store_true", help="skip the export stage when --out holds its files (extras only)")
    args = ap.parse_args()

    from schemas.stage import StageContext
    from train.config import ExportConfig
    from train.export import ExportStage

    out = args.out / "export"
    (out / "_work").mkdir(parents=True, exist_ok=True)
    cfg = ExportConfig(model_name=args.name, quantizations=TYPES, ollama_quantization="Q8_0", threads=args.threads,
                       verify_tokens=args.verify_tokens, smooth=args.smooth)
    ctx = StageContext(stage_dir=out, work_dir=out / "_work", step="export", out_dir=out,
                       inputs={"dataset": args.dataset, "base_model": args.base, "train": args.train})
    if args.reuse and (out / "export.json").exists():  # extras only, on the files of an earlier run
        return extra_rows(args, cfg, out, [v for v in args.variants.split(",") if v])
    started = time.perf_counter()
    load_before = os.getloadavg()
    error = None
    try:
        ExportStage(cfg).run(ctx)
    except Exception as exc:  # a failed gate is a finding: the card and export.json are written first
        error = str(exc)
    seconds = time.perf_counter() - started
    print(f"load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after: "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + f"; {os.cpu_count()} CPUs")
    report = json.loads((out / "export.json").read_text())
    print(f"export stage ({', '.join(TYPES)} + tokenizer, generation and KLD verification): {seconds:.1f} s "
          f"wall, {args.threads} threads; {report['verify_tokens']} held-out positions in {report['verify_sequences']} "
          f"conversations; verification {report['verify_seconds']:.1f} s")
    if error:
        print("stage FAILED:", error[:2000])
    head = ["| file | MiB | bits/weight | KLD mean | KLD p99 | top-1 % | PPL ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(head))
    for f in report["files"] + ([report["base_lora"]] if report.get("base_lora") else []):
        name = f["file"] + (f" + {f['adapter']}" if f.get("adapter") else "")
        print(row(name, f["verify"], f["bytes"]) + f" {'PASS' if f['passed'] else 'FAIL'} (write {f['write_seconds']} s)")
    card = (out / "README.md").read_text()
    print("\n" + card[card.index("## Export time"):].strip())  # the phases in order (export.json sorts its keys)
    t = report["files"][0]["verify_timing"]
    print(f"\nverification: reference logits + probabilities (transformers, n_batch {t['n_batch']}) {t['reference_seconds']:.1f} s; "
          "per file llama.cpp evaluation / KLD statistics: " + "; ".join(
              f"{f['type']} {f['verify_timing']['llama_cpp_seconds']:.1f} / {f['verify_timing']['stats_seconds']:.1f} s"
              for f in report["files"] + ([report["base_lora"]] if report.get("base_lora") else [])))
    for f in report["files"]:
        if f.get("calibration"):
            c = f["calibration"]
            print(f"{f['type']} calibration ({c['method']}): {c['sequences']} train conversations, {c['tokens']} tokens, "
                  f"{c['seconds']:.1f} s (layer forward passes {c['forward_seconds']:.1f} s, rounding {c['rounding_seconds']:.1f} s)")
    if report.get("smoothing"):
        print("smoothing:", json.dumps(report["smoothing"]))
    print("merged-model perplexity on the held-out text:", round(report["files"][0]["verify"]["ppl_reference"], 3))
    print("generation:", json.dumps(report["generation"]))
    print("tokenizer:", json.dumps({f["file"]: {k: f["tokenizer"][k] for k in ("chat_renderings", "texts", "failed")}
                                    for f in report["files"]}))
    variants = [v for v in args.variants.split(",") if v]
    if variants:
        extra_rows(args, cfg, out, variants)


def extra_rows(args, cfg, out: Path, variants: list[str]) -> None:
    """The importance-matrix and GPTQ variants, verified side by side with llama.cpp's plain Q4_0 / Q4_K_M."""
    from transformers import AutoModelForCausalLM

    from train.export import heldout_conversations, token_sequences
    from train.gguf_export import write_gguf
    from train.inputs import conversations, load_tokenizer, read_examples
    from train.llama_cpp import quantize
    from train.llama_imatrix import collect_imatrix
    from train.verify import verify_files

    tok = load_tokenizer(args.base / "model")
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype="float32").eval()
    seqs = token_sequences(tok, heldout_conversations(args.dataset), tokens=cfg.verify_tokens, max_length=cfg.verify_max_length)
    train_rows = conversations(read_examples(args.dataset, split="train")[:args.calibration_rows])
    calib = token_sequences(tok, train_rows, tokens=1 << 62, max_length=512)
    f16 = out / f"{cfg.model_name}-F16.gguf"
    paths, timing = [out / f"{cfg.model_name}-Q4_0.gguf", out / f"{cfg.model_name}-Q4_K_M.gguf"], {}
    if "imatrix" in variants:
        t0 = time.perf_counter()
        stats = collect_imatrix(f16, calib, threads=args.threads, n_ctx=max(map(len, calib)))
        timing["imatrix"] = time.perf_counter() - t0
        for q in ("Q4_0", "Q4_K_M", "Q5_K_M"):
            p = out / f"{cfg.model_name}-{q}-imatrix.gguf"
            quantize(f16, p, qtype=q, threads=args.threads, imatrix=stats.means())
            paths.append(p)
        print(f"imatrix: {stats.sequences} train conversations, {stats.tokens} tokens, {timing['imatrix']:.1f} s")
    if "gptq" in variants:
        from train.q4_calibrate import calibrate_q4_0

        t0 = time.perf_counter()
        weights, info = calibrate_q4_0(merged, calib)
        p = out / f"{cfg.model_name}-Q4_0-gptq.gguf"
        write_gguf(merged, tok, p, quant="Q4_0", name=cfg.model_name, q4_0_weights=weights)
        timing["gptq"] = time.perf_counter() - t0
        paths.append(p)
        print(f"GPTQ Q4_0: {len(calib)} train conversations, {timing['gptq']:.1f} s (calibration + write)")
    if "precision" in variants:
        precision_rows(merged, seqs, out)
    if len(paths) == 2 and not {"imatrix", "gptq"} & set(variants):
        return
    t0 = time.perf_counter()
    res = verify_files(merged, seqs, paths, threads=args.threads)
    print(f"side-by-side verification of {len(paths)} files: {time.perf_counter() - t0:.1f} s")
    print("| file | MiB | bits/weight | KLD mean | KLD p99 | top-1 % | PPL ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        print(row(p.name, res[p.name], p.stat().st_size))


def precision_rows(merged, seqs, out: Path) -> None:
    """What a bf16 / fp16 reference costs: the merged model loaded in that dtype (from merged/, written in fp32)
    against the fp32 merged model, with the same statistics as the files."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.verify import KLDStats, reference_logp

    print("| merged model as reference | KLD mean | KLD p99 | top-1 % | PPL ratio |\n|---|---:|---:|---:|---:|")
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        low = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=dtype).eval()
        st = KLDStats()
        for ids in seqs:
            ref = reference_logp(merged, ids)
            with torch.no_grad():
                logits = low(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            st.add(ref[:-1], logits[:-1], ids[1:])
        r = st.result()
        print(f"| {name} | {r['kld_mean']:.6f} | {r['kld_p99']:.5f} | {100 * r['top1']:.2f} | {r['ppl_ratio']:.4f} |")
        del low


if __name__ == "__main__":
    main()
