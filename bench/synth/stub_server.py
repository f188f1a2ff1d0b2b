"""A minimal OpenAI-compatible chat server with a fixed latency per request (bench only).

It stands for a teacher whose speed we know exactly, so the benchmark can tell whether *our*
client is the limit: with latency L and C requests in flight the ceiling is C / L requests/s.
GET /stats returns the most requests the server saw at once (measured on the server side).

    python bench/synth/stub_server.py --port 8977 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()
STATE = {"in_flight": 0, "max_in_flight": 0, "requests": 0, "latency": 0.2}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> dict:
    body = await request.json()
    STATE["in_flight"] += 1
    STATE["requests"] += 1
    STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
    try:
        await asyncio.sleep(STATE["latency"])
    finally:
        STATE["in_flight"] -= 1
    text = "Question: What is the stub?\nAnswer: The stub answers every request after a fixed delay."
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {"id": f"stub-{STATE['requests']}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 16, "total_tokens": prompt_tokens + 16}}


@app.get("/stats")
async def stats() -> dict:
    return dict(STATE)


@app.post("/reset")
async def reset() -> dict:
    STATE.update(in_flight=0, max_in_flight=0, requests=0)
    return dict(STATE)


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8977)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    STATE["latency"] = args.latency
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
