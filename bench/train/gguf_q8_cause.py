"""Where Q8_0's KL divergence comes from, measured in llama.cpp on the same held-out positions as the export:

0. ``floor``: the base model's own GGUF (the export's ``*-base-*.gguf``) alone vs the base model in transformers,
   its exact dequantisation: what llama.cpp's runtime rounding (activations quantised for quantised matrix
   products) costs that file; ``nbatch``: the F16 file at llama.cpp batch sizes 64 and 128;
1. the model, not the exporter: the BASE model (the base_model step's folder) written to F16 by slmforge and
   quantised to Q8_0 by llama.cpp, both compared with the base model in transformers;
2. per tensor class: the fine-tune's F16 file quantised to Q8_0 with exactly one class of tensors in Q8_0 and
   every other one kept F16 (``llama-quantize --tensor-type`` / ``--token-embedding-type`` through
   ``train.llama_cpp.quantize``); for small errors the classes' KLDs add up to roughly the full Q8_0 file's;
3. candidate settings: Q8_0 with token_embd (tied: also the output) in F16, and with the worst classes in F16;
4. ``q8floor``: the export's Q8_0 file in llama.cpp against a transformers model whose weights are that file's
   exact dequantisation (``gguf.quants.dequantize`` of every 2-D tensor, the rest as merged): what llama.cpp's
   runtime rounding (activations quantised to 8 bits per 32 values for Q8_0 matrix products) costs on its own;
   beside it, on the same positions in one pass, the file against the merged model (the export's row) and the
   dequantised model against the merged model in transformers (the weights' rounding alone).

    python bench/train/gguf_q8_cause.py --export /tmp/gguf_kld/export \\
        --dataset $W/dataset/<fp> --base $W/base_model/<fp> --out /tmp/gguf_q8 [--threads 2]

``--export``: a folder written by bench/train/gguf_kld.py (merged/ and <name>-F16.gguf).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CLASSES = ["token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def row(name: str, v: dict, size: int) -> str:
    return (f"| {name} | {size / 2**20:,.1f} | {v['tensor_bytes'] * 8 / v['n_params']:.2f} | {v['kld_mean']:.6f} "
            f"± {v['kld_mean_se']:.6f} | {v['kld_p99']:.5f} | {100 * v['top1']:.2f} ± {100 * v['top1_se']:.2f} | "
            f"{v['ppl_ratio']:.4f} |")


HEAD = "| file | MiB | bits/weight | KLD mean | KLD p99 | top-1 % | PPL ratio |\n|---|---:|---:|---:|---:|---:|---:|"


def only(cls: str) -> dict:
    """Quantiser overrides: ``cls`` in Q8_0, every other 2-D tensor F16."""
    others = [c for c in CLASSES if c not in (cls, "token_embd")]
    return {"token_embedding_type": "Q8_0" if cls == "token_embd" else "F16",
            "tensor_types": {rf"\.{c}\.weight$": "F16" for c in others}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify-tokens", type=int, default=4096)
    ap.add_argument("--parts", default="base,floor,nbatch,classes,settings,q8floor")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    from transformers import AutoModelForCausalLM

    from train.export import heldout_conversations, token_sequences
    from train.gguf_export import write_gguf
    from train.inputs import load_tokenizer, torch_setup
    from train.llama_cpp import quantize
    from train.verify import verify_files

    torch_setup(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.base / "model")
    seqs = token_sequences(tok, heldout_conversations(args.dataset), tokens=args.verify_tokens, max_length=1024)
    print(f"{sum(len(s) - 1 for s in seqs)} held-out positions in {len(seqs)} conversations, {args.threads} threads")

    if "floor" in parts:  # the base model's own GGUF alone in llama.cpp vs its exact dequantisation in transformers
        base = AutoModelForCausalLM.from_pretrained(str(args.base / "model"), dtype="float32").eval()
        paths = sorted(args.export.glob("*-base-*.gguf"))
        res = verify_files(base, seqs, paths, threads=args.threads)
        print(f"\nthe base model's GGUF alone vs the BASE model in transformers (llama.cpp's own rounding):\n{HEAD}")
        for p in paths:
            print(row(p.name, res[p.name], p.stat().st_size))
        del base

    if "base" in parts:
        t0 = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(str(args.base / "model"), dtype="float32").eval()
        f16 = args.out / "base-F16.gguf"
        write_gguf(base, tok, f16, quant="F16", name="base")
        quantize(f16, args.out / "base-Q8_0.gguf", qtype="Q8_0", threads=args.threads)
        paths = [f16, args.out / "base-Q8_0.gguf"]
        res = verify_files(base, seqs, paths, threads=args.threads)
        print(f"\nBASE model (not fine-tuned) vs itself in transformers ({time.perf_counter() - t0:.1f} s):\n{HEAD}")
        for p in paths:
            print(row(p.name, res[p.name], p.stat().st_size))
        del base

    merged = AutoModelForCausalLM.from_pretrained(str(args.export / "merged"), dtype="float32").eval()
    if "q8floor" in parts:
        q8_floor(args, merged, seqs)
    f16 = next(p for p in args.export.glob("*-F16.gguf") if "-lora-" not in p.name)
    if "nbatch" in parts:  # llama.cpp's batch size and the F16 file's KLD (reference computed here, not reused)
        for nb in (64, 128):
            r = verify_files(merged, seqs, [f16], threads=args.threads, n_batch=nb)[f16.name]
            print(f"\nF16 vs merged, llama.cpp n_batch {nb}: KLD {r['kld_mean']:.7f}, p99 {r['kld_p99']:.6f}, "
                  f"top-1 {100 * r['top1']:.2f} %, PPL ratio {r['ppl_ratio']:.5f}")
    variants: dict[str, dict] = {"Q8_0 (llama.cpp's mix)": {}} if {"classes", "settings"} & parts else {}
    if "classes" in parts:
        variants |= {f"only {c} in Q8_0, rest F16": only(c) for c in CLASSES}
    if "settings" in parts:
        variants |= {"Q8_0, token_embd F16": {"token_embedding_type": "F16"},
                     "Q8_0, token_embd + attn_k + attn_q F16": {"token_embedding_type": "F16",
                                                                  "tensor_types": {r"\.attn_[qk]\.weight$": "F16"}},
                     "Q8_0, attn_k + attn_q + attn_v F16": {"tensor_types": {r"\.attn_[qkv]\.weight$": "F16"}}}
    if not variants:
        return
    t0 = time.perf_counter()
    paths = {}
    for i, (name, kw) in enumerate(variants.items()):
        paths[name] = args.out / f"merged-v{i}.gguf"
        quantize(f16, paths[name], qtype="Q8_0", threads=args.threads, **kw)
    print(f"\nquantised {len(paths)} variants in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    res = verify_files(merged, seqs, list(paths.values()), threads=args.threads, group_bytes=16 << 30)
    print(f"\nFINE-TUNE (merged model) vs the merged model in transformers ({time.perf_counter() - t0:.1f} s):\n{HEAD}")
    for name, p in paths.items():
        print(row(name, res[p.name], p.stat().st_size))


def dequantized_model(merged_dir: Path, path: Path):
    """The merged model with every 2-D tensor of the GGUF at ``path`` replaced by its exact dequantisation (the
    values llama.cpp multiplies by); 1-D tensors (norms, F32 in the file) stay as merged. A tensor that does not
    match the merged one to within 2 % relative error is refused (a name mapping or layout transform, e.g. the
    Llama q/k permutation, this bench does not undo)."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from train.gguf_archs import architecture

    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype="float32").eval()
    cfg = model.config
    tensor_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, architecture(cfg).gguf), cfg.num_hidden_layers)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    done = set()
    with torch.no_grad():
        for hf_name, w in model.state_dict().items():
            name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if w.ndim != 2 or name not in tensors or name in done:
                continue
            t = tensors[name]
            deq = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(w.shape)
            rel = float((deq - w).norm() / w.norm())
            if rel > 0.02:
                raise SystemExit(f"{name}: dequantised {t.tensor_type.name} differs from merged {hf_name} by {rel:.3g} (relative)")
            w.copy_(deq)
            done.add(name)
    if done != set(tensors):
        raise SystemExit(f"2-D tensors of {path.name} not matched to the merged model: {sorted(set(tensors) - done)[:5]}")
    return model, len(done)


def q8_floor(args, merged, seqs) -> None:
    """llama.cpp running the export's Q8_0 file vs (a) the merged model, (b) the file's exact weights in transformers;
    and (c) those weights vs the merged model, all in transformers -- one pass over the held-out positions."""
    import numpy as np

    from train.llama_cpp import GGUFModel
    from train.verify import KLDStats, reference_logp

    t0 = time.perf_counter()
    q8 = next(p for p in args.export.glob("*-Q8_0.gguf") if "-base-" not in p.name)
    deq, n = dequantized_model(args.export / "merged", q8)
    names = {"file": f"llama.cpp {q8.name} vs merged (the export's row)",
             "floor": "llama.cpp Q8_0 vs its own weights in transformers (runtime rounding alone)",
             "weights": "its weights in transformers vs merged (weight rounding alone)"}
    stats = {k: KLDStats() for k in names}
    n_ctx = max(map(len, seqs))
    with GGUFModel(q8, n_ctx=n_ctx, n_batch=min(256, n_ctx), threads=args.threads) as model:
        for seq in seqs:
            ref, ref_deq = reference_logp(merged, seq)[:-1], reference_logp(deq, seq)[:-1]
            logits = np.concatenate(list(model.logits(seq)))[:-1]
            tgt = seq[1:]
            stats["file"].add(ref, logits.copy(), tgt)  # add() works in place in the array it gets
            stats["floor"].add(ref_deq, logits, tgt)
            stats["weights"].add(ref, ref_deq.numpy().copy(), tgt)  # log-probabilities as logits: softmax-invariant
    print(f"\nQ8_0 runtime floor ({n} tensors dequantised from {q8.name}; {time.perf_counter() - t0:.1f} s):")
    print("| comparison | KLD mean | KLD p99 | top-1 % | PPL ratio |\n|---|---:|---:|---:|---:|")
    for k, label in names.items():
        r = stats[k].result()
        print(f"| {label} | {r['kld_mean']:.6f} ± {r['kld_mean_se']:.6f} | {r['kld_p99']:.5f} | "
              f"{100 * r['top1']:.2f} ± {100 * r['top1_se']:.2f} | {r['ppl_ratio']:.4f} |")


if __name__ == "__main__":
    main()
