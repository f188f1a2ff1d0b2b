"""General-text perplexity of the base model and of LoRA checkpoints of one training run (when did it forget?).

Uses train/domain_eval.py's ``text_perplexity`` (the forgetting check of the Gemma recipe) on each adapter in turn:

    python bench/raft/forgetting_by_checkpoint.py --base WS/base_model/<fp>/model \\
        --adapter step20=WS/train/<fp>/_work/checkpoints/checkpoint-20 --adapter final=WS/train/<fp>/adapter \\
        --general data/eval/general_text.jsonl --threads 2 [--per-text]

``--per-text`` adds each text's perplexity per arm (which texts carry the rise).
"""

from __future__ import annotations

import argparse
import json
import math


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="base model folder (a base_model step's model/)")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="LoRA adapter folder (repeat)")
    ap.add_argument("--general", required=True, help="JSON lines with 'text'")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--per-text", action="store_true", help="also each text's perplexity per arm")
    args = ap.parse_args()

    from train.domain_eval import load_jsonl, text_perplexity
    from train.inputs import load_model, load_tokenizer, torch_setup

    torch_setup(args.threads)
    tokenizer = load_tokenizer(args.base)
    rows = load_jsonl(args.general)
    texts = [r["text"] for r in rows]
    arms = [("base", None)] + [tuple(a.split("=", 1)) for a in args.adapter]
    results = {}
    for name, adapter in arms:
        model = load_model(args.base, adapter=adapter)
        if args.per_text:  # the whole set's figure from the texts' (token-weighted losses), not a second pass
            per_text = {r.get("id", str(i)): text_perplexity(model, tokenizer, [r["text"]]) for i, r in enumerate(rows)}
            tokens = sum(v["tokens"] for v in per_text.values())
            loss = sum(v["loss"] * v["tokens"] for v in per_text.values()) / max(tokens, 1)
            results[name] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens,
                             "per_text": per_text}
        else:
            results[name] = text_perplexity(model, tokenizer, texts)
        del model
    base = results["base"]["perplexity"]
    for name, r in results.items():
        print(f"{name:<12} perplexity {r['perplexity']:8.3f}  {r['perplexity'] / base - 1:+.1%}  ({r['tokens']} tokens)")
    if args.per_text:
        names = list(results)
        print("\n| text | tokens | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names))
        for key, first in results["base"]["per_text"].items():
            cells = [f"{results[n]['per_text'][key]['perplexity']:.2f}"
                     + ("" if n == "base" else f" ({results[n]['per_text'][key]['perplexity'] / first['perplexity'] - 1:+.1%})")
                     for n in names]
            print(f"| {key} | {first['tokens']} | " + " | ".join(cells) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
