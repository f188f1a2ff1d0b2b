"""Warm `ask` latency on a bundle, side by side with llama.cpp's own chat path on the same model.

For each question: ours = ``Reader.answer`` (retrieval + prompt format + chat template + llama.cpp greedy);
peer = ``Llama.create_chat_completion`` (llama-cpp-python's own template handler from the GGUF) on the same
messages (the passages ours retrieved), greedy, the same max tokens and repeat penalty (llama.cpp's path has no
loop guard: where ours cuts a loop, the answers differ). The context's cache is reset before every call, so
neither reuses the other's prompt (``--keep-cache``: ours keeps the previous prompt's prefix, as a running
``serve`` does). Reports median/p90 seconds, the paired median ratio ours/peer, prompt and answer tokens, how
answers ended, and whether both produced the same answer text.

    python bench/bundle/ask_latency.py --bundle DIR --questions data/eval/postgres_questions.jsonl --threads 2 \
        [--max-tokens N] [--loop-ngram N] [--repeat-penalty X] [--llama flash_attn=true]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None, help="default: ask's (the physical cores)")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--max-questions", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--loop-ngram", type=int, default=None)
    ap.add_argument("--repeat-penalty", type=float, default=None)
    ap.add_argument("--keep-cache", action="store_true", help="ours keeps the previous prompt's prefix in the cache")
    ap.add_argument("--llama", action="append", default=[], metavar="KEY=VALUE",
                    help="a further llama_cpp.Llama parameter for both, e.g. flash_attn=true, n_ubatch=256")
    ap.add_argument("-k", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    options = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.llama)}

    from train.answer import read_questions
    from train.bundle import open_bundle

    started = time.perf_counter()
    bundle = open_bundle(args.bundle)
    verify_s = time.perf_counter() - started
    from train.answer import Reader

    started = time.perf_counter()
    reader = Reader(bundle, gguf=args.gguf, threads=args.threads, llama_options=options).load()
    load_s = time.perf_counter() - started
    rows = read_questions(args.questions)[: args.max_questions]
    gen = reader.generation.override(max_tokens=args.max_tokens, loop_ngram=args.loop_ngram,
                                     repeat_penalty=args.repeat_penalty)
    kw = dict(k=args.k, max_tokens=gen.max_tokens, loop_ngram=gen.loop_ngram, repeat_penalty=gen.repeat_penalty)
    max_tokens = gen.max_tokens
    reader.answer(rows[0]["question"], **kw)  # warm-up
    ours, peer, same, ptoks, ctoks, finish = [], [], 0, [], [], {}
    for row in rows:
        if not args.keep_cache:
            reader.llm.reset()
        t = time.perf_counter()
        ans = reader.answer(row["question"], **kw)
        ours.append(time.perf_counter() - t)
        finish[ans.finish_reason] = finish.get(ans.finish_reason, 0) + 1
        messages = reader.format.render_messages(row["question"], None if ans.closed_book else ans.passages)
        reader.llm.reset()
        t = time.perf_counter()
        out = reader.llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_tokens,
                                                repeat_penalty=gen.repeat_penalty, seed=0)
        peer.append(time.perf_counter() - t)
        same += out["choices"][0]["message"]["content"].strip() == ans.answer
        ptoks.append(ans.prompt_tokens)
        ctoks.append(ans.completion_tokens)

    def q(xs, p):
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    result = {
        "bundle": str(args.bundle), "model": reader.model_name, "threads": reader.threads, "questions": len(rows),
        "generation": {"max_tokens": gen.max_tokens, "loop_ngram": gen.loop_ngram, "repeat_penalty": gen.repeat_penalty},
        "llama_options": options, "keep_cache": args.keep_cache,
        "verify_seconds": round(verify_s, 3), "load_seconds": round(load_s, 3),
        "ours_median_s": round(statistics.median(ours), 3), "ours_p90_s": round(q(ours, 0.9), 3),
        "peer_median_s": round(statistics.median(peer), 3), "peer_p90_s": round(q(peer, 0.9), 3),
        "paired_median_ratio": round(statistics.median(a / b for a, b in zip(ours, peer)), 3),
        "prompt_tokens_median": statistics.median(ptoks), "answer_tokens_median": statistics.median(ctoks),
        "answer_tokens_p90": q(ctoks, 0.9), "finish_reasons": finish,
        "same_answer_as_peer": f"{same}/{len(rows)}",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    reader.close()


if __name__ == "__main__":
    main()
