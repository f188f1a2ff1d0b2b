"""Peak memory of writing an F16 GGUF: the streaming writer vs the writer it replaced, side by side.

Each configuration runs in a fresh process: build a Llama-shaped model of about ``--params`` parameters from
a config (random weights) in ``--dtype``, note the resident memory, write an F16 GGUF, and report the peak
resident memory during the write (sampled every 2 ms) above the model. The old writer (every converted tensor kept until the file
is written) is taken from git (``--old-ref``, default ``main``) into a temporary module.

    python bench/train/gguf_memory.py [--params 300e6] [--dtypes bf16,fp32] [--old-ref main] [--out /tmp/gguf_mem]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    import importlib.util
    import threading
    import time

    import psutil
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.train.archs_util import tokenizer

    hidden, vocab = 1024, 32000
    layers = max(1, round((args.params - 2 * vocab * hidden) / (16 * hidden * hidden)))  # 4h² attention + 12h² MLP
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512)
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    if args.writer == "old":
        spec = importlib.util.spec_from_file_location("old_gguf_export", args.old_module)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        write_gguf = module.write_gguf
    else:
        from train.gguf_export import write_gguf
    proc = psutil.Process()
    rss_model = proc.memory_info().rss
    samples, done = [rss_model], threading.Event()

    def sample() -> None:  # resident memory every 2 ms while the file is written
        while not done.is_set():
            samples.append(proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    info = write_gguf(model, tokenizer("gpt2"), Path(args.out) / f"{args.writer}-{args.dtype}.gguf", quant="F16", name="m")
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = max(samples)
    print(json.dumps({"writer": args.writer, "dtype": args.dtype, "params": params, "largest_tensor": largest,
                      "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                      "rss_model": rss_model, "peak": peak, "seconds": seconds, "file_bytes": info["bytes"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=300e6)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--old-ref", default="main")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gguf_mem")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--writer", default="new", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    ap.add_argument("--old-module", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    args.out.mkdir(parents=True, exist_ok=True)
    old = args.out / "old_gguf_export.py"
    old.write_text(subprocess.run(["git", "show", f"{args.old_ref}:train/gguf_export.py"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout)
    rows = []
    for dtype in args.dtypes.split(","):
        for writer in ("old", "new"):
            out = subprocess.run([sys.executable, __file__, "--child", "--writer", writer, "--dtype", dtype,
                                  "--params", str(args.params), "--out", str(args.out), "--old-module", str(old)],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            (args.out / f"{writer}-{dtype}.gguf").unlink()
    mb = 1 << 20
    print("| model dtype | writer | params | model MB | largest tensor (params) | RSS with model MB | peak RSS MB | "
          "peak above model MB | above model / model | write s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        above = r["peak"] - r["rss_model"]
        print(f"| {r['dtype']} | {r['writer']} | {r['params'] / 1e6:.0f}M | {r['model_bytes'] / mb:.0f} | "
              f"{r['largest_tensor'] / 1e6:.1f}M | {r['rss_model'] / mb:.0f} | {r['peak'] / mb:.0f} | {above / mb:.0f} | "
              f"{above / r['model_bytes']:.2f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
