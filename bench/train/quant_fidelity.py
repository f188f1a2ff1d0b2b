"""How much each GGUF quantisation moves a merged model's predictions, without writing the files.

The 2-D weights are quantised and dequantised with the exporter's own quantisers (Q8_0:
``gguf.quants``; Q4_0: ``train.gguf_export.quantize_q4_0``, round-to-nearest, and Q4_0-gptq:
``train.q4_calibrate`` on the dataset's train split, the export's default; embeddings stay Q8_0 as in the export)
and the model is compared with itself on held-out conversations with ``train.export.compare_logits``
(the export stage's verification reloads the real files; this is the quick what-if for a big model).

    python bench/train/quant_fidelity.py MERGED_DIR DATASET_DIR [--prompts 32] [--threads 2] [--calibration-rows 128]

``--calibrate-on heldout`` is a diagnostic, never what the export does: GPTQ calibrated on the very held-out
conversations it is then compared on, an upper bound for any activation-calibrated rounding.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("merged", type=Path, help="merged Hugging Face model folder (export's merged/)")
    ap.add_argument("dataset", type=Path, help="dataset step folder (test or validation split is used)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tie-tolerance", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-rows", type=int, default=128, help="train-split rows of the GPTQ calibration")
    ap.add_argument("--logits-memory-mb", type=int, default=2048,
                    help="reference logits kept in memory (beyond it they are recomputed; a 262k vocabulary takes ~150 MB a conversation)")
    ap.add_argument("--variants", default="Q8_0,Q4_0,Q4_0-gptq", help="comma-separated: Q8_0, Q4_0 (round-to-nearest), Q4_0-gptq")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ damping")
    ap.add_argument("--calibrate-on", choices=["train", "heldout"], default="train",
                    help="GPTQ calibration rows: the train split (as the export), or the compared held-out rows (diagnostic)")
    args = ap.parse_args()

    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from train.export import ReferenceLogits, heldout_conversations, verification_inputs, verify_model
    from train.gguf_export import quantize_q4_0
    from train.inputs import load_tokenizer
    from train.q4_calibrate import calibrate_q4_0, calibration_sequences

    torch.set_num_threads(args.threads)
    Q = gguf.GGMLQuantizationType
    model = AutoModelForCausalLM.from_pretrained(str(args.merged), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(args.merged)
    items = verification_inputs(tokenizer, heldout_conversations(args.dataset, limit=args.prompts))
    # the unrounded model stays loaded as the reference; its logits are kept up to --logits-memory-mb
    reference = ReferenceLogits(copy.deepcopy(model), items, budget_bytes=args.logits_memory_mb << 20)
    original = {n: p.data.clone() for n, p in model.named_parameters() if p.ndim == 2}

    def roundtrip(w: torch.Tensor, q) -> torch.Tensor:
        raw = quantize_q4_0(w.numpy()) if q == Q.Q4_0 else gguf.quants.quantize(w.numpy(), q)
        return torch.from_numpy(gguf.quants.dequantize(raw, q).reshape(w.shape).copy())

    keys = ("prompts", "prompt_end_top1_agreement", "prompt_end_top1_agreement_tie_aware", "prompt_end_tie_aware_ci95", "positions",
            "answer_top1_agreement", "answer_top1_agreement_tie_aware", "max_abs_logit_diff", "mean_cosine",
            "reference_median_top1_prob")
    variants = {"Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_0-gptq": Q.Q4_0}
    for name in args.variants.split(","):
        qtype = variants[name]
        t0 = time.perf_counter()
        calibrated = {}
        if name == "Q4_0-gptq":
            with torch.no_grad():  # calibrate the unrounded model
                for n, p in model.named_parameters():
                    if n in original:
                        p.copy_(original[n])
            sequences = (calibration_sequences(tokenizer, args.dataset, rows=args.calibration_rows, max_length=512)
                         if args.calibrate_on == "train" else [it["input_ids"] for it in items])
            calibrated, info = calibrate_q4_0(model, sequences, damp=args.damp)
            print("calibration", json.dumps(info), flush=True)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in calibrated:
                    p.copy_(torch.from_numpy(gguf.quants.dequantize(calibrated[n], Q.Q4_0).reshape(p.shape).copy()))
                elif n in original:
                    embed = "embed_tokens" in n or "lm_head" in n
                    p.copy_(roundtrip(original[n], Q.Q8_0 if embed else qtype))
        r = verify_model(reference, model, tie_tolerance=args.tie_tolerance)
        print(name, f"{time.perf_counter() - t0:.0f} s", json.dumps({k: [round(x, 4) for x in r[k]] if isinstance(r[k], list) else round(r[k], 4) for k in keys}), flush=True)


if __name__ == "__main__":
    main()
