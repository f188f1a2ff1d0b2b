"""Tiny local teachers for the synth tests: no downloads, built and (briefly) trained here.

* ``random_teacher``: a tiny Llama from a config + a BPE tokenizer trained on local text
  (train.base_model.build_tiny), saved with save_pretrained. Its replies are garbage, which is
  what exercises parse-failure quarantine.
* ``trained_teacher``: the same model trained (a few dozen steps, until greedy decoding reproduces
  every reply) to answer *our* rendered prompts for the first MEMORISED_CHUNKS test chunks: generation
  (grounded_qa_gen_v1), judge (judge_v1) and one multi-turn follow-up (followup_qa_v1). It memorises
  those replies, so the happy path (parse, judge, keep) runs through real generation; on other prompts
  it parrots, which the tests treat as garbage. It is not a capable teacher and says nothing about quality.
* ``served_teacher``: ``transformers serve`` (OpenAI-compatible, fastapi + uvicorn) serving the
  trained model on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.synth.test_synth import DOC, _chunks  # noqa: F401  (the chunks the teacher is trained on)

TINY = dict(vocab_size=600, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=1024)


#: chunks whose prompts the trained teacher memorises (the first ones of test_chunks)
MEMORISED_CHUNKS = 3


def judge_reply(groundedness: int, helpfulness: int) -> str:
    return f"Groundedness: {groundedness}\nHelpfulness: {helpfulness}"


def test_chunks(tmp_path: Path):
    """The chunks every LLM-teacher test uses (DOC at 400 chars: a handful of passages)."""
    return _chunks(tmp_path, DOC, max_chars=400)


def memorised_pairs(chunks) -> list[tuple[str, str]]:
    """(prompt, reply) the trained teacher learns: one QA per chunk and the judge verdict on it, plus a follow-up
    QA (and its verdict) where the chunk has a second extractive QA."""
    from synth.extractive import generate
    from synth.tasks import FOLLOWUP_TEMPLATE, GEN_TEMPLATE, JUDGE_TEMPLATE, render

    pairs = []
    for c in chunks.to_pylist()[:MEMORISED_CHUNKS]:
        qas = generate(c["text"], heading=c["heading"], source=c["source"], limit=2)
        if not qas:
            continue
        q, a = qas[0].question, qas[0].answer
        pairs.append((render(GEN_TEMPLATE, passage=c["text"], source=c["source"], heading=c["heading"]),
                      f"Question: {q}\nAnswer: {a}"))
        pairs.append((render(JUDGE_TEMPLATE, passage=c["text"], question=q, answer=a), judge_reply(5, 4)))
        if len(qas) > 1:  # a second extractive QA of the chunk becomes the memorised follow-up turn
            q2, a2 = qas[1].question, qas[1].answer
            pairs.append((render(FOLLOWUP_TEMPLATE, passage=c["text"], source=c["source"], heading=c["heading"],
                                 turns=[{"question": q, "answer": a}]), f"Question: {q2}\nAnswer: {a2}"))
            pairs.append((render(JUDGE_TEMPLATE, passage=c["text"], question=q2, answer=a2), judge_reply(4, 4)))
    return pairs


def _train(model, tokenizer, pairs, *, steps: int) -> tuple[float, int]:
    import torch

    from train.chat import encode_example

    enc = [encode_example(tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                          max_length=1024) for p, r in pairs]
    width = max(len(e["input_ids"]) for e in enc)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in enc])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in enc])
    attn = (torch.arange(width)[None, :] < torch.tensor([len(e["input_ids"]) for e in enc])[:, None]).long()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    loss, step = None, 0
    for step in range(steps):
        out = model(input_ids=ids, attention_mask=attn, labels=labels)
        loss = out.loss
        # stop once every reply token is the argmax under teacher forcing with a margin (low loss): greedy decoding,
        # left-padded in a batch, then reproduces it
        pred = out.logits[:, :-1].argmax(-1)
        gold = labels[:, 1:]
        if float(loss.detach()) < 0.03 and bool(((pred == gold) | (gold == -100)).all()):
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss.detach()), step


@pytest.fixture(scope="session")
def teachers(tmp_path_factory):
    """{"random": folder, "trained": folder, "chunks": table, "pairs": [(prompt, reply)], "loss": float}."""
    import torch

    from train.config import TinyModelConfig
    from train.base_model import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a shared 2-core machine
    root = tmp_path_factory.mktemp("teachers")
    chunks = test_chunks(root)
    pairs = memorised_pairs(chunks)
    texts = [DOC] + [p + "\n" + r for p, r in pairs]
    model, tok = build_tiny(texts, TinyModelConfig(**TINY))
    random_dir = root / "random"
    model.save_pretrained(random_dir)
    tok.save_pretrained(random_dir)
    try:
        loss, steps = _train(model, tok, pairs, steps=400)
    finally:
        torch.set_num_threads(threads)
    trained_dir = root / "trained"
    model.save_pretrained(trained_dir)
    tok.save_pretrained(trained_dir)
    return {"random": random_dir, "trained": trained_dir, "chunks": chunks, "pairs": pairs, "loss": loss, "steps": steps}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log: Path, *, port: int | None = None, timeout: float = 120.0):
    """``transformers serve <model_dir>`` on 127.0.0.1; returns (process, base_url) once /health answers."""
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--log-level", "warning"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"transformers serve did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def served_teacher(teachers, tmp_path_factory):
    """(base_url, model name) of ``transformers serve`` serving the trained tiny teacher."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_server(teachers["trained"], log)
    try:
        yield url, str(teachers["trained"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
