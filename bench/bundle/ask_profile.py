"""Where the time of one warm `ask` goes: prompt evaluation (prefill) vs generation (decode), per llama.cpp setting.

The prompts are the real ones (``Reader``: retrieval with the question, the prompt format, the bundle's chat
template). Each setting loads the bundle's GGUF with those llama.cpp parameters (threads, n_batch/n_ubatch,
flash_attn, swa_full, mlock) and, per question, times

* ``prefill``: the whole prompt from an empty cache (time to the first token, i.e. prompt + one sample);
* ``decode``: ``--decode`` more greedy tokens, reported as tokens per second;
* ``reuse``: the same prompt after the previous question's (the cache keeps the common prefix -- the system
  text and template head -- when llama.cpp can remove the rest of the cache, which a sliding-window model
  needs ``swa_full`` for); ``reuse_tokens`` is how many prompt tokens were skipped.

Settings are run side by side in one process, in turn per question (round robin), so machine noise hits all.
The estimate of an answer's time is ``prefill + answer_tokens / decode``.

    python bench/bundle/ask_profile.py --bundle DIR --questions data/eval/postgres_questions.jsonl \\
        --settings base,flash,ub128,t1 [--decode 32] [--out profile.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

#: name -> llama.cpp parameters on top of the baseline (threads from --threads, everything else its default)
SETTINGS = {
    "base": {},
    "t1": {"n_threads": 1, "n_threads_batch": 1},
    "flash": {"flash_attn": True},
    "ub128": {"n_batch": 512, "n_ubatch": 128},
    "ub256": {"n_batch": 512, "n_ubatch": 256},
    "b1024": {"n_batch": 1024, "n_ubatch": 1024},
    "swa_full": {"swa_full": True},
    "flash_swa_full": {"flash_attn": True, "swa_full": True},
    "mlock": {"use_mlock": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--max-questions", type=int, default=16)
    ap.add_argument("--decode", type=int, default=32, help="tokens generated per question for the decode rate")
    ap.add_argument("--settings", default="base,flash,ub128,swa_full")
    ap.add_argument("-k", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import llama_cpp

    from train.answer import Reader, read_questions
    from train.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    reader = Reader(bundle, gguf=args.gguf, threads=args.threads).load()
    rows = read_questions(args.questions)[: args.max_questions]
    prompts = []
    for row in rows:
        p = reader._prepare(row["question"], k=args.k, closed_book=False,
                            generation=reader.generation.override(max_tokens=args.decode + 1), history=None)
        prompts.append(p["ids"])
    path, n_ctx = str(reader.gguf), reader.n_ctx
    reader.close()

    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    models, load_s = {}, {}
    for name in names:
        kw = {"n_threads": args.threads, "n_threads_batch": args.threads, **SETTINGS[name]}
        t = time.perf_counter()
        models[name] = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, verbose=False, **kw)
        load_s[name] = time.perf_counter() - t

    def run(llm, ids, *, reset: bool) -> tuple[float, float, int]:
        if reset:
            llm.reset()
        before = llm.n_tokens
        common = 0
        for a, b in zip(llm._input_ids[:before], ids):
            if a != b:
                break
            common += 1
        gen = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
        t = time.perf_counter()
        next(gen)
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.decode):
            next(gen)
        decode = time.perf_counter() - t
        gen.close()
        return first, args.decode / decode, common

    for llm in models.values():  # warm-up: pages in, threads up
        run(llm, prompts[0], reset=True)
    res = {n: {"prefill": [], "decode_tps": [], "reuse": [], "reuse_tokens": []} for n in names}
    for i, ids in enumerate(prompts):
        for name, llm in models.items():
            # reuse: the cache holds the previous question's prompt + answer
            if i > 0:
                run(llm, prompts[i - 1], reset=True)
                first, _, common = run(llm, ids, reset=False)
                res[name]["reuse"].append(first)
                res[name]["reuse_tokens"].append(common)
            first, tps, _ = run(llm, ids, reset=True)
            res[name]["prefill"].append(first)
            res[name]["decode_tps"].append(tps)

    med = statistics.median
    ptoks = [len(p) for p in prompts]
    out = {"bundle": str(args.bundle), "gguf": Path(path).name, "threads": args.threads, "questions": len(prompts),
           "prompt_tokens_median": med(ptoks), "decode_tokens": args.decode, "settings": {}}
    for name in names:
        r = res[name]
        out["settings"][name] = {
            "params": SETTINGS[name], "load_s": round(load_s[name], 3),
            "prefill_median_s": round(med(r["prefill"]), 3),
            "prefill_tokens_per_s": round(med(p / s for p, s in zip(ptoks, r["prefill"])), 1),
            "decode_tokens_per_s": round(med(r["decode_tps"]), 1),
            "reuse_prefill_median_s": round(med(r["reuse"]), 3) if r["reuse"] else None,
            "reuse_tokens_median": med(r["reuse_tokens"]) if r["reuse_tokens"] else None,
        }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    for llm in models.values():
        llm.close()
    del llama_cpp


if __name__ == "__main__":
    main()
