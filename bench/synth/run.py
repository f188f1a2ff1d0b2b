"""Teacher throughput: requests/s and requests in flight of synth's OpenAI-compatible teacher path.

Two servers on 127.0.0.1, both driven through ``synth.teachers.Teacher`` (distilabel ``OpenAILLM``
+ our bounded-concurrency loop), i.e. exactly what the synth stage does:

* ``stub``: a fixed-latency OpenAI-compatible server (bench/synth/stub_server.py). Its ceiling is
  concurrency / latency, so requests/s close to it means the client is not the limit; the server
  reports the most requests it saw at once.
* ``serve``: ``transformers serve`` with a tiny Llama built here (no downloads), on CPU. The tiny
  model is the bottleneck; the figures show what our client keeps in flight against a real server.

    .venv/bin/python bench/synth/run.py [--requests 200] [--concurrency 1 8 32] [--latency 0.2] [--skip-serve]

Writes bench/synth/results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synth.config import TeacherConfig  # noqa: E402
from synth.teachers import Teacher  # noqa: E402
from tests.synth.conftest import free_port, start_server  # noqa: E402


def wait_health(url: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url}")


def get(url: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def prompts(n: int) -> list[list[dict]]:
    texts = [p.read_text() for p in sorted((ROOT / "data/sample/runbooks").glob("*.md"))]
    return [[{"role": "user", "content": f"Write one question about this passage.\n\n{texts[i % len(texts)][:600]}"}]
            for i in range(n)]


def measure(base_url: str, model: str, *, n: int, concurrency: int, max_new_tokens: int) -> dict:
    t = Teacher(TeacherConfig(kind="openai", model=model, base_url=base_url, concurrency=concurrency,
                              max_new_tokens=max_new_tokens, temperature=0, retries=2, timeout=300)).load()
    t.generate(prompts(min(concurrency, 4)))  # warm-up (connections, server model load)
    t.tally = type(t.tally)()
    started = time.perf_counter()
    replies = t.generate(prompts(n))
    secs = time.perf_counter() - started
    t.close()
    return {"requests": n, "concurrency": concurrency, "seconds": round(secs, 3), "requests_per_s": round(n / secs, 2),
            "client_max_in_flight": t.tally.max_in_flight, "failures": sum(r.text is None for r in replies),
            "output_tokens": t.tally.output_tokens, "output_tokens_per_s": round(t.tally.output_tokens / secs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--serve-requests", type=int, default=48)
    ap.add_argument("--serve-max-new-tokens", type=int, default=16)
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    out = {"machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}".strip(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "stub": [], "serve": []}

    port = free_port()
    stub = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stub_server.py")), "--port", str(port),
                             "--latency", str(args.latency)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(f"http://127.0.0.1:{port}/health", stub)
        for c in args.concurrency:
            get(f"http://127.0.0.1:{port}/reset", "POST")
            m = measure(f"http://127.0.0.1:{port}/v1", "stub", n=args.requests, concurrency=c, max_new_tokens=16)
            m["server_max_in_flight"] = get(f"http://127.0.0.1:{port}/stats")["max_in_flight"]
            m["ceiling_requests_per_s"] = round(c / args.latency, 2)
            m["latency_s"] = args.latency
            out["stub"].append(m)
            print("stub ", json.dumps(m), flush=True)
    finally:
        stub.terminate()

    if not args.skip_serve:
        from train.config import TinyModelConfig
        from train.base_model import build_tiny

        with tempfile.TemporaryDirectory() as tmp:
            texts = [p.read_text() for p in sorted((ROOT / "data/sample/runbooks").glob("*.md"))]
            model, tok = build_tiny(texts, TinyModelConfig(vocab_size=600, hidden_size=64, intermediate_size=128,
                                                           num_layers=2, num_heads=4, num_kv_heads=2))
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            proc, url = start_server(Path(tmp), Path(tmp) / "serve.log")
            try:
                for c in args.concurrency:
                    m = measure(url, tmp, n=args.serve_requests, concurrency=c, max_new_tokens=args.serve_max_new_tokens)
                    out["serve"].append(m)
                    print("serve", json.dumps(m), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    (Path(__file__).with_name("results.json")).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
