"""Cost of a Gemma-3-270M RAFT training step: the model's own loss (logits at every position) vs the loss with the
output layer on labelled positions only (train/answer_head.py), side by side in one run on the same rows.

Both arms run the real ``train`` stage with the recipe's settings (fp32 LoRA on CPU, 7 projections, r=16, batch 4,
max_length 768, replay 0.5) for the same number of steps; the first arm swaps in ``transformers.Trainer``.
Reports seconds per step, the ratio, and the first losses of both arms (equal up to float rounding: same rows,
same seed, same loss).

    python bench/raft/head_loss_cost.py --base WS/base_model/<fp> --raft WS/dataset/<fp> --replay FILE --steps 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def arm(name: str, dataset: Path, base: Path, replay: str, *, steps: int, root: Path) -> dict:
    import train.sft as sft
    from schemas.stage import StageContext
    from train.answer_head import trainer_class
    from train.config import TrainConfig

    if name == "model_loss":
        from transformers import Trainer

        sft.trainer_class = lambda: Trainer
    else:
        sft.trainer_class = trainer_class
    cfg = TrainConfig(quantization="none", max_steps=steps, batch_size=4, learning_rate=5e-4, warmup_steps=1,
                      rank=16, alpha=32, max_length=768, threads=2, max_validation_rows=4, save_steps=1000,
                      logging_steps=1,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      replay_path=replay, replay_fraction=0.5)
    d = root / name
    (d / "_work").mkdir(parents=True)
    started = time.perf_counter()
    stats = sft.TrainStage(cfg).run(StageContext(stage_dir=d, work_dir=d / "_work", step=name,
                                                 inputs={"dataset": dataset, "base": base}, out_dir=d))
    history = json.loads((d / "loss.json").read_text())["history"]
    return {"arm": name, "steps": steps, "trainer_s": stats.get("train_runtime_s"),
            "stage_s": round(time.perf_counter() - started, 1),
            "s_per_step": round(stats.get("train_runtime_s", 0) / steps, 2),
            "losses": [round(h["loss"], 4) for h in history if "loss" in h],
            "validation_loss": stats.get("validation_loss")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--raft", type=Path, required=True)
    ap.add_argument("--replay", required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [arm(a, args.raft, args.base, args.replay, steps=args.steps, root=Path(tmp))
                for a in ("model_loss", "labelled_loss")]
    rows.append({"speedup": round(rows[0]["s_per_step"] / rows[1]["s_per_step"], 2)})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
