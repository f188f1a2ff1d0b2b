"""Cost of a Gemma-3-270M LoRA training step on RAFT rows vs closed-book rows, side by side in one run (ratio).

Both arms: the real ``train`` stage (fp32 LoRA on CPU, all 7 projections, r=16), the same model, threads and
number of steps, general-text replay at 0.5 from the same folder; only the rows and the shapes differ:

* closed-book: the recipe before RAFT (1200-char chunks, closed-book rows, batch 6, max_length 160);
* RAFT: data/recipes/postgres-docs.yaml now (600-char chunks, k=3 passages, batch 4, max_length 768).

Usage (datasets from ``slmforge run`` of each recipe up to ``dataset``; a base_model step folder of Gemma)::

    python bench/raft/train_step_cost.py --base WS/base_model/<fp> \\
        --closed WS1/dataset/<fp> --raft WS2/dataset/<fp> --replay DIR --steps 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def arm(name: str, dataset: Path, base: Path, replay: str, *, steps: int, batch: int, max_length: int, root: Path) -> dict:
    from schemas.stage import StageContext
    from train.config import TrainConfig
    from train.sft import TrainStage

    cfg = TrainConfig(quantization="none", max_steps=steps, batch_size=batch, learning_rate=5e-4, warmup_steps=1,
                      rank=16, alpha=32, max_length=max_length, threads=2, max_validation_rows=1, save_steps=1000,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      replay_path=replay, replay_fraction=0.5)
    d = root / name
    (d / "_work").mkdir(parents=True)
    started = time.perf_counter()
    stats = TrainStage(cfg).run(StageContext(stage_dir=d, work_dir=d / "_work", step=name,
                                             inputs={"dataset": dataset, "base": base}, out_dir=d))
    return {"arm": name, "steps": steps, "batch": batch, "max_length": max_length,
            "trainer_s": stats.get("train_runtime_s"), "stage_s": round(time.perf_counter() - started, 1),
            "s_per_step": round(stats.get("train_runtime_s", 0) / steps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--closed", type=Path, required=True)
    ap.add_argument("--raft", type=Path, required=True)
    ap.add_argument("--replay", required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [arm("closed", args.closed, args.base, args.replay, steps=args.steps, batch=6, max_length=160, root=root),
                arm("raft", args.raft, args.base, args.replay, steps=args.steps, batch=4, max_length=768, root=root)]
    rows.append({"ratio_raft_over_closed_per_step": round(rows[1]["s_per_step"] / rows[0]["s_per_step"], 2)})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
