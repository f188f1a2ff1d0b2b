"""Choose the LoRA configuration of data/recipes/postgres-docs.yaml on the VALIDATION split.

Trains each configuration with the real train stage (same dataset, base model and code as the
recipe) and scores it on data never used for the final report: the dataset's validation pages
(answer perplexity, greedy-answer token F1) and the held-back 10 % of the replay corpus
(general-text perplexity, the forgetting proxy). The test split and data/eval/general_text.jsonl
are not read here: they stay for the recipe's final numbers.

    python bench/gemma/sweep.py --dataset workspace/postgres-docs/dataset/<fp> \
        --base workspace/postgres-docs/base_model/<fp> --out /tmp/sweep [--only NAME ...]

Prints one JSON line per configuration and writes results.json (fast on a GPU; minutes per
configuration on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL7 = ATTN + ["gate_proj", "up_proj", "down_proj"]
REPLAY = "workspace/corpora/general-replay/train.jsonl"
COMMON = dict(quantization="none", batch_size=4, warmup_steps=3, lr_scheduler="cosine", rank=16, alpha=32,
              max_length=160, save_steps=1000)
CONFIGS = {  # in the order they are tried (a time-limited run scores the first ones)
    "attn-lr5e-4-10": dict(target_modules=ATTN, learning_rate=5e-4, max_steps=10),
    "all7-lr5e-4-10-r25": dict(target_modules=ALL7, learning_rate=5e-4, max_steps=10, replay_fraction=0.25),
    "all7-lr5e-4-20-r25": dict(target_modules=ALL7, learning_rate=5e-4, max_steps=20, replay_fraction=0.25),
    "attn-lr1e-3-20-r25": dict(target_modules=ATTN, learning_rate=1e-3, max_steps=20, replay_fraction=0.25),
    "all7-lr5e-4-20-r50": dict(target_modules=ALL7, learning_rate=5e-4, max_steps=20, replay_fraction=0.5),
    "attn-lr5e-4-30-r25": dict(target_modules=ATTN, learning_rate=5e-4, max_steps=30, replay_fraction=0.25),
    "all7-lr3e-4-20-r25": dict(target_modules=ALL7, learning_rate=3e-4, max_steps=20, replay_fraction=0.25),
    "attn-lr1e-3-20-r50": dict(target_modules=ATTN, learning_rate=1e-3, max_steps=20, replay_fraction=0.5),
    "all7-lr5e-4-10": dict(target_modules=ALL7, learning_rate=5e-4, max_steps=10),
    "all7-lr1e-3-20-r50": dict(target_modules=ALL7, learning_rate=1e-3, max_steps=20, replay_fraction=0.5),
}


def score_model(model, tokenizer, rows, general, *, max_new_tokens: int) -> dict[str, float]:
    from train.domain_eval import text_perplexity
    from train.evaluate import evaluate_model, prompts_and_references

    prompts, refs = prompts_and_references(rows)
    metrics, _ = evaluate_model(model, tokenizer, rows, prompts, refs, max_length=256, batch_size=8,
                                max_new_tokens=max_new_tokens)
    return {"answer_perplexity": metrics["perplexity"], **{k: metrics[k] for k in ("exact_match", "token_f1", "rouge_l")},
            "general_perplexity": text_perplexity(model, tokenizer, general)["perplexity"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True, help="the base_model step folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--replay-validation", type=Path, default=Path("workspace/corpora/general-replay/validation.jsonl"))
    ap.add_argument("--rows", type=int, default=48, help="validation rows scored (first by id)")
    ap.add_argument("--general", type=int, default=60, help="replay-validation entries for the forgetting proxy")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    args = ap.parse_args(argv)

    from train.config import TrainConfig
    from schemas.stage import StageContext
    from train.inputs import load_model, load_tokenizer, read_examples
    from train.sft import TrainStage

    rows = read_examples(args.dataset, split="validation")[:args.rows]  # sorted by id
    if not rows:
        print("the dataset has no validation split: set validation_fraction > 0 in its dataset step", file=sys.stderr)
        return 2
    general = [json.loads(ln)["text"] for ln in args.replay_validation.read_text().splitlines() if ln.strip()][:args.general]
    model_dir = args.base / "model"
    tokenizer = load_tokenizer(model_dir)
    results = {}

    def report(name: str, metrics: dict) -> None:
        results[name] = metrics
        print(json.dumps({"config": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}}),
              flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report("base", {**score_model(load_model(model_dir), tokenizer, rows, general, max_new_tokens=args.max_new_tokens),
                    "seconds": round(time.time() - t0, 1)})
    for name, extra in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        cfg = {**COMMON, **extra}
        if cfg.get("replay_fraction"):
            cfg["replay_path"] = REPLAY
        d = args.out / name
        shutil.rmtree(d, ignore_errors=True)
        (d / "_work").mkdir(parents=True)
        t0 = time.time()
        stats = TrainStage(TrainConfig(**cfg)).run(StageContext(stage_dir=d, work_dir=d / "_work", step=name,
                                                                inputs={"dataset": args.dataset, "base_model": args.base},
                                                                out_dir=d))
        t_train = time.time() - t0
        model = load_model(model_dir, adapter=d / "adapter")
        metrics = score_model(model, tokenizer, rows, general, max_new_tokens=args.max_new_tokens)
        del model
        report(name, {**metrics, "train_seconds": round(t_train, 1), "seconds": round(time.time() - t0, 1),
                      "device": stats["device"], "steps": stats["steps"], "replay_sequences": stats["replay_sequences"],
                      "last_loss": stats["last_loss"], "validation_loss": stats["validation_loss"]})
        shutil.rmtree(d / "_work", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
