"""How much of the LoRA update to keep: domain answer loss vs general-text perplexity at adapter scales s ≤ 1.

Weight-space interpolation between the base and the fine-tuned model (WiSE-FT, Wortsman et al. 2022): the merged
weight is ``W + s·(α/r)·B·A``. s = 1 is the trained model, s = 0 the base. Forgetting grows with the update, and so
does the domain gain; this measures both on VALIDATION data only, so the scale can be chosen without the test pages,
the hand-written or the blind questions:

- domain: answer loss (labelled tokens only) of the dataset's validation-split rows (the RAFT prompts);
- general: perplexity of held-out general texts (``--general``): data/eval/general_validation.jsonl (everyday prose
  written as a validation set), data/eval/general_docstrings.jsonl (CPython docstrings) or licence excerpts that
  models know by heart (bench/gemma/general_memorized.py). Not the replay corpus's validation texts: the replay
  trains on that genre (fortunes), so their perplexity falls with training and says nothing about forgetting;
- ``--report`` texts (e.g. data/eval/general_text.jsonl, the recipe's forgetting target) are printed but are not
  part of the choice.

    python bench/raft/adapter_scale.py --base WS/base_model/<fp>/model --adapter WS/train/<fp>/adapter \\
        --dataset WS/dataset/<fp> --general data/eval/general_validation.jsonl \\
        --report data/eval/general_text.jsonl --scales 1,0.9,0.8,0.7,0.6 --threads 2 [--out scale.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def set_scale(model, scale: float, trained: dict) -> None:
    """The adapter at ``scale`` of its trained update, as the train stage saves it (``train.sft.scale_lora_update``
    on the trained lora_B weights, kept in ``trained`` on the first call)."""
    from train.sft import scale_lora_update

    params = dict(model.named_parameters())
    if not trained:
        trained.update({n: p.detach().clone() for n, p in params.items() if ".lora_B." in n})
    for name, weight in trained.items():
        params[name].data.copy_(weight)
    scale_lora_update(model, scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="base model folder (a base_model step's model/)")
    ap.add_argument("--adapter", type=Path, required=True, help="LoRA adapter folder (a train step's adapter/)")
    ap.add_argument("--dataset", type=Path, required=True, help="dataset step folder (its validation split is read)")
    ap.add_argument("--general", type=Path, required=True, help="held-out general texts (JSON lines with 'text')")
    ap.add_argument("--report", type=Path, action="append", default=[], help="more texts, printed only")
    ap.add_argument("--scales", default="1,0.9,0.8,0.7,0.6")
    ap.add_argument("--rows", type=int, default=None, help="the first N validation rows (by id); default all; 0: no answer loss")
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from train.domain_eval import load_jsonl, text_perplexity
    from train.evaluate import heldout_loss
    from train.inputs import load_model, load_tokenizer, read_examples, torch_setup

    torch_setup(args.threads)
    tok = load_tokenizer(args.adapter)
    val = read_examples(args.dataset, split="validation")[:args.rows]
    general = [r["text"] for r in load_jsonl(args.general)]
    reports = {p.name: [r["text"] for r in load_jsonl(p)] for p in args.report}
    scales = [float(s) for s in args.scales.split(",")]
    print(f"{len(val)} validation rows, {len(general)} general validation texts, scales {scales}", flush=True)

    model = load_model(args.base, adapter=args.adapter)
    trained: dict = {}
    results = {}
    for s in [0.0] + scales:  # 0 = the base model, the reference for the perplexity rise
        t0 = time.perf_counter()
        set_scale(model, s, trained)
        r = {"answer": heldout_loss(model, tok, val, max_length=args.max_length, batch_size=4) if val
             else {"loss": float("nan"), "tokens": 0},
             "general": text_perplexity(model, tok, general)}
        r |= {name: text_perplexity(model, tok, texts) for name, texts in reports.items()}
        results[s] = r
        print(f"scale {s:.2f}: answer loss {r['answer']['loss']:.4f}, general ppl {r['general']['perplexity']:.3f}"
              + "".join(f", {n} ppl {r[n]['perplexity']:.3f}" for n in reports)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)

    base = results[0.0]
    print(f"\n| scale | answer loss (validation) | {args.general.name} ppl | rise |"
          + "".join(f" {n} ppl | rise |" for n in reports))
    print("|---:|---:|---:|---:|" + "---:|---:|" * len(reports))
    for s, r in results.items():
        rise = r["general"]["perplexity"] / base["general"]["perplexity"] - 1
        cells = "".join(f" {r[n]['perplexity']:.3f} | {r[n]['perplexity'] / base[n]['perplexity'] - 1:+.1%} |"
                        for n in reports)
        print(f"| {s:.2f} | {r['answer']['loss']:.4f} | {r['general']['perplexity']:.3f} | {rise:+.1%} |{cells}")
    if args.out:
        args.out.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    assert all(math.isfinite(r["general"]["loss"]) for r in results.values())


if __name__ == "__main__":
    main()
