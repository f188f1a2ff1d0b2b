"""Warm `ask` latency on a bundle, side by side with llama.cpp's own chat path on the same model.

For each question: ours = ``Reader.answer`` (retrieval + prompt format + chat template + llama.cpp greedy);
peer = ``Llama.create_chat_completion`` (llama-cpp-python's own template handler from the GGUF) on the same
messages (the passages ours retrieved), greedy, the same max tokens. The context's cache is reset before every
call, so neither reuses the other's prompt. Reports median/p90 seconds, the paired median ratio ours/peer,
prompt and answer tokens, and whether both produced the same answer text.

    python bench/bundle/ask_latency.py --bundle DIR --questions data/eval/postgres_questions.jsonl --threads 2
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--max-questions", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("-k", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from train.answer import read_questions
    from train.bundle import open_bundle

    started = time.perf_counter()
    bundle = open_bundle(args.bundle)
    verify_s = time.perf_counter() - started
    from train.answer import Reader

    started = time.perf_counter()
    reader = Reader(bundle, gguf=args.gguf, threads=args.threads).load()
    load_s = time.perf_counter() - started
    rows = read_questions(args.questions)[: args.max_questions]
    max_tokens = args.max_tokens or int(bundle.manifest["llama"]["max_new_tokens"])
    reader.answer(rows[0]["question"], k=args.k, max_tokens=max_tokens)  # warm-up
    ours, peer, same, ptoks, ctoks = [], [], 0, [], []
    for row in rows:
        reader.llm.reset()
        t = time.perf_counter()
        ans = reader.answer(row["question"], k=args.k, max_tokens=max_tokens)
        ours.append(time.perf_counter() - t)
        messages = reader.format.render_messages(row["question"], None if ans.closed_book else ans.passages)
        reader.llm.reset()
        t = time.perf_counter()
        out = reader.llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_tokens,
                                                repeat_penalty=1.0, seed=0)
        peer.append(time.perf_counter() - t)
        same += out["choices"][0]["message"]["content"].strip() == ans.answer
        ptoks.append(ans.prompt_tokens)
        ctoks.append(ans.completion_tokens)

    def q(xs, p):
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    result = {
        "bundle": str(args.bundle), "gguf": reader.gguf.name, "threads": args.threads, "questions": len(rows),
        "verify_seconds": round(verify_s, 3), "load_seconds": round(load_s, 3),
        "ours_median_s": round(statistics.median(ours), 3), "ours_p90_s": round(q(ours, 0.9), 3),
        "peer_median_s": round(statistics.median(peer), 3), "peer_p90_s": round(q(peer, 0.9), 3),
        "paired_median_ratio": round(statistics.median(a / b for a, b in zip(ours, peer)), 3),
        "prompt_tokens_median": statistics.median(ptoks), "answer_tokens_median": statistics.median(ctoks),
        "same_answer_as_peer": f"{same}/{len(rows)}",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    reader.close()


if __name__ == "__main__":
    main()
