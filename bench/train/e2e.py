"""Tiny-model end-to-end through the real runner: dataset -> base_model (tiny) -> train -> eval -> export.

Examples are cloze questions made from the sample runbooks (one per sentence, grouped by runbook), so
the numbers are reproducible offline. Usage (2 torch threads, as on a 2-core laptop):

    .venv/bin/python bench/train/e2e.py /tmp/e2e   # demo sizes: tiny 128-dim Llama, 600 LoRA steps, all six GGUF types

Other text (``--corpus DIR`` with ``.md``/``.txt`` files, ``--skip-docs``/``--max-docs`` for a slice)
checks that the figures are not a property of the runbooks, e.g. the PostgreSQL SQL-command pages
that ``bench/gemma/prepare.py`` converts (apt package postgresql-doc-15):

    .venv/bin/python bench/train/e2e.py /tmp/e2e_pg --corpus workspace/corpora/postgres-sql-md --max-docs 24

Prints the wall time of every stage and the export verification table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import pyarrow as pa

from schemas.arrow import EXAMPLES
from slmforge.stages import parse_stage
from schemas.io import write_parquet
from slmforge.execute import execute
from slmforge.local_executor import LocalExecutor
from slmforge.plan import Step
from slmforge.stages import load_stage

ROOT = Path(__file__).resolve().parents[2]


def examples_from_runbooks(corpus: Path = ROOT / "data/sample/runbooks", *, max_docs: int = 0,
                           skip_docs: int = 0) -> tuple[pa.Table, pa.Table]:
    """Cloze examples from the ``.md``/``.txt`` files of ``corpus`` (sorted by name; ``skip_docs``
    then ``max_docs`` choose a slice, 0 = all)."""
    docs, rows = [], []
    files = sorted(f for f in corpus.iterdir() if f.suffix in (".md", ".txt"))[skip_docs:]
    for f in files[:max_docs or None]:
        text = f.read_text()
        docs.append({"id": f.stem, "text": text})
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), f.stem)
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)) if 40 < len(s) < 200]
        for k, s in enumerate(sentences[:12]):
            words = s.split()
            rows.append(dict(id=f"{f.stem}-{k}", origin="synthetic", source_ids=[f.stem], teacher="bench",
                             template="cloze", judge_score=None, split=None, meta=None,
                             messages=[{"role": "user", "content": f"{title}: complete '{' '.join(words[:5])} ...'"},
                                       {"role": "assistant", "content": s}]))
    return pa.Table.from_pylist(rows, schema=EXAMPLES), pa.Table.from_pylist(docs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--epochs", type=float, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--pretrain-steps", type=int, default=150, help="pretraining steps of the tiny base model")
    ap.add_argument("--quants", default="F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0", help="quantizations of the export step")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data/sample/runbooks",
                    help="folder of .md/.txt files the cloze examples are made from (default: the sample runbooks)")
    ap.add_argument("--max-docs", type=int, default=0, help="use at most this many files of --corpus (0: all)")
    ap.add_argument("--skip-docs", type=int, default=0, help="skip this many files of --corpus first")
    args = ap.parse_args()
    ws = args.workspace
    shutil.rmtree(ws, ignore_errors=True)
    examples, docs = examples_from_runbooks(args.corpus, max_docs=args.max_docs, skip_docs=args.skip_docs)
    print(f"{examples.num_rows} examples from {docs.num_rows} files of {args.corpus}")
    write_parquet(examples, ws / "in" / "examples.parquet")
    write_parquet(docs, ws / "docs" / "part-00000.parquet")
    (ws / "docs" / "_SUCCESS").write_text("")
    entries = [
        {"stage": "dataset", "seed": 0, "validation_fraction": 0.1, "test_fraction": 0.2},
        {"stage": "base_model", "name": "base_model", "inputs": ["docs", "dataset"],
         "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                  "vocab_size": 1024, "pretrain_steps": args.pretrain_steps}},
        {"stage": "train", "inputs": ["dataset", "base_model"], "epochs": args.epochs, "max_steps": args.max_steps, "learning_rate": args.lr,
         "rank": 16, "alpha": 32, "batch_size": 8, "max_length": 256, "threads": 2},
        {"stage": "eval", "inputs": ["dataset", "base_model", "train"], "max_examples": 32, "max_new_tokens": 32,
         "threads": 2},
        {"stage": "export", "inputs": ["dataset", "base_model", "train", "eval"], "model_name": "demo-tiny",
         "quantizations": args.quants.split(","), "threads": 2},
    ]
    docs_step = Step(name="docs", config=parse_stage({"stage": "dataset"}, where="bench"), stage=None, inputs=[])
    docs_step.dir = ws / "docs"
    by_name = {"docs": docs_step}
    timings = {}
    t_all = time.perf_counter()
    for i, entry in enumerate(entries):
        cfg = parse_stage(entry, where=f"bench[{i}]")
        step = Step(name=cfg.step_name, config=cfg, stage=load_stage(cfg), inputs=list(cfg.inputs or []),
                    input_files=[ws / "in" / "examples.parquet"] if cfg.stage == "dataset" else None)
        step.fingerprint = f"bench{i}"
        step.dir = ws / step.name / step.fingerprint
        by_name[step.name] = step
        t0 = time.perf_counter()
        try:
            stats = execute(step, by_name, executor=LocalExecutor(workers=1))
        except Exception as exc:  # a failed verification still leaves export.json to print
            print(step.name, "FAILED", str(exc)[:600])
            stats = {}
        timings[step.name] = round(time.perf_counter() - t0, 1)
        print(step.name, timings[step.name], "s", json.dumps({k: v for k, v in stats.items()
                                                              if not isinstance(v, (dict, list))})[:400])
    print("total", round(time.perf_counter() - t_all, 1), "s", timings)
    export = json.loads(next(by_name["export"].dir.rglob("export.json")).read_text())
    print(f"{export['verify_tokens']} held-out positions; merged-model perplexity {export['files'][0]['verify']['ppl_reference']:.3f}")
    print("file | bits/weight | KLD mean | KLD p99 | top-1 | PPL ratio | gate")
    for f in export["files"]:
        v = f["verify"]
        print(f"{f['file']} | {f['bits_per_weight']:.2f} | {v['kld_mean']:.6f} | {v['kld_p99']:.5f} | {v['top1']:.4f} | "
              f"{v['ppl_ratio']:.4f} | {'PASS' if f['passed'] else 'FAIL'}")

if __name__ == "__main__":
    main()
