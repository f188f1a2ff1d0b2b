"""Teacher backends behind one config shape, driven with bounded concurrency and a token/cost tally.

* ``openai``: distilabel's ``OpenAILLM`` with ``base_url`` (any OpenAI-compatible server). We call its
  ``agenerate`` ourselves from one event loop with a semaphore of ``concurrency``, so exactly that many
  requests stay in flight until the queue drains (distilabel's own ``generate`` gathers a whole batch and
  waits for its slowest request before starting the next). Retries and timeouts are the OpenAI client's
  (``max_retries`` with exponential backoff on connection errors, 408/409/429/5xx; ``timeout`` per request).
* ``transformers``: distilabel's ``TransformersLLM`` on a local folder, ``concurrency`` prompts per call.

A failed request never becomes a ``None`` row: :class:`Reply` carries ``text=None`` and ``error``, and the
stage quarantines it with the prompt it came from.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.config import TeacherConfig
from schemas.errors import ConfigError, require

#: a placeholder key for local servers that ignore it (the OpenAI client refuses to start without one)
LOCAL_API_KEY = "sk-local-no-key"


@dataclass
class Reply:
    """One teacher answer: the text, or ``None`` with the error that explains why."""

    text: str | None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


@dataclass
class Tally:
    """Requests, failures, tokens, cost and the most requests seen in flight at once."""

    requests: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    max_in_flight: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, cfg: TeacherConfig) -> float:
        return self.input_tokens * cfg.cost_per_input_token + self.output_tokens * cfg.cost_per_output_token

    def counters(self, prefix: str, cfg: TeacherConfig) -> dict[str, float]:
        out = {f"{prefix}:requests": self.requests, f"{prefix}:failures": self.failures,
               f"{prefix}:input_tokens": self.input_tokens, f"{prefix}:output_tokens": self.output_tokens,
               f"{prefix}:max_in_flight": self.max_in_flight}
        if cfg.cost_per_input_token or cfg.cost_per_output_token:
            out[f"{prefix}:cost"] = round(self.cost(cfg), 6)
        return out


def _count(stats: Any, key: str) -> int:
    v = (stats or {}).get(key)
    if isinstance(v, list):
        v = v[0] if v else 0
    return int(v or 0)


def teacher_name(cfg: TeacherConfig) -> str:
    return "extractive-v1" if cfg.kind == "extractive" else f"{cfg.kind}:{cfg.model}"


def build_llm(cfg: TeacherConfig):
    """The distilabel LLM for ``cfg`` (not loaded). Raises ConfigError for a missing model folder or key."""
    require("distilabel", extra="synth", purpose=f"the {cfg.kind} teacher")
    require("requests", extra="synth", purpose="distilabel (undeclared dependency of distilabel 1.5.3)")
    if cfg.kind == "openai":
        require("openai", extra="synth", purpose="the openai teacher")
        from distilabel.models.llms import OpenAILLM

        key = LOCAL_API_KEY
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ConfigError(f"teacher: environment variable {cfg.api_key_env!r} is empty or unset",
                                  received=cfg.api_key_env, expected="the name of a set variable holding the API key",
                                  fix=f"export {cfg.api_key_env}=... or drop 'api_key_env' for a local server")
        kw: dict[str, Any] = {"model": cfg.model, "api_key": key, "max_retries": cfg.retries,
                              "timeout": max(1, math.ceil(cfg.timeout))}
        if cfg.base_url:
            kw["base_url"] = cfg.base_url
        return OpenAILLM(**kw)
    if cfg.kind == "transformers":
        require("transformers", extra="synth", purpose="the transformers teacher")
        folder = Path(str(cfg.model)).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError("teacher: 'model' of a transformers teacher must be a local model folder",
                              received=str(cfg.model), expected="a folder with config.json, weights and tokenizer files",
                              fix="save the model with save_pretrained() and point 'model' at that folder")
        from distilabel.models.llms import TransformersLLM

        return TransformersLLM(model=str(folder), device=cfg.device)
    raise ConfigError(f"teacher kind {cfg.kind!r} has no LLM", expected="openai or transformers")


class Teacher:
    """Cheap constructor, expensive :meth:`load`; :meth:`generate` keeps ``concurrency`` requests in flight."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.llm = None
        self.tally = Tally()
        self._in_flight = 0

    @property
    def name(self) -> str:
        return teacher_name(self.cfg)

    def load(self) -> Teacher:
        if self.llm is None:
            self.llm = build_llm(self.cfg)
            if self.cfg.kind == "transformers":
                # a local folder needs no hub; with HF_HUB_OFFLINE a missing file fails loudly instead of downloading
                old = os.environ.get("HF_HUB_OFFLINE")
                os.environ["HF_HUB_OFFLINE"] = "1"
                try:
                    self.llm.load()
                finally:
                    if old is None:
                        os.environ.pop("HF_HUB_OFFLINE", None)
                    else:
                        os.environ["HF_HUB_OFFLINE"] = old
            else:
                self.llm.load()
        return self

    def close(self) -> None:
        """Close the async HTTP client on its own loop (else its cleanup may run after distilabel closed the loop)."""
        client = getattr(self.llm, "_aclient", None) if self.llm is not None else None
        if client is not None:
            try:
                self.llm.event_loop.run_until_complete(client.close())
            except Exception:  # best effort at shutdown: nothing to recover
                pass
        self.llm = None

    def generation_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.kind == "transformers":
            return {"max_new_tokens": cfg.max_new_tokens, "temperature": max(cfg.temperature, 1e-5),
                    "do_sample": cfg.temperature > 0}
        return {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}

    def generate(self, prompts: list[list[dict]]) -> list[Reply]:
        """One :class:`Reply` per chat prompt, in order. Never raises for a failed request."""
        self.load()
        if not prompts:
            return []
        started = time.perf_counter()
        replies = self._generate_async(prompts) if self.cfg.kind == "openai" else self._generate_batched(prompts)
        self.tally.seconds += time.perf_counter() - started
        for r in replies:
            self.tally.requests += 1
            self.tally.input_tokens += r.input_tokens
            self.tally.output_tokens += r.output_tokens
            if r.text is None:
                self.tally.failures += 1
                kind = (r.error or "error").split(":", 1)[0]
                self.tally.errors[kind] = self.tally.errors.get(kind, 0) + 1
        return replies

    # --- backends -------------------------------------------------------------------------
    def _generate_async(self, prompts: list[list[dict]]) -> list[Reply]:
        import asyncio

        llm, kw = self.llm, self.generation_kwargs()

        async def one(sem: asyncio.Semaphore, prompt: list[dict]) -> Reply:
            async with sem:
                self._in_flight += 1
                self.tally.max_in_flight = max(self.tally.max_in_flight, self._in_flight)
                t0 = time.perf_counter()
                try:
                    out = await llm.agenerate(input=prompt, num_generations=1, **kw)
                except Exception as exc:  # after the client's own retries: recorded, quarantined by the stage
                    return Reply(None, f"{type(exc).__name__}: {exc}"[:500], seconds=time.perf_counter() - t0)
                finally:
                    self._in_flight -= 1
            return _reply(out, time.perf_counter() - t0)

        async def run_all() -> list[Reply]:
            sem = asyncio.Semaphore(self.cfg.concurrency)
            return await asyncio.gather(*(one(sem, p) for p in prompts))

        # distilabel's loop: the AsyncOpenAI client's connection pool belongs to the loop that first used it
        return llm.event_loop.run_until_complete(run_all())

    def _generate_batched(self, prompts: list[list[dict]]) -> list[Reply]:
        out: list[Reply] = []
        step = self.cfg.concurrency
        for i in range(0, len(prompts), step):
            batch = prompts[i:i + step]
            self.tally.max_in_flight = max(self.tally.max_in_flight, len(batch))
            t0 = time.perf_counter()
            try:
                results = self.llm.generate(inputs=batch, num_generations=1, **self.generation_kwargs())
            except Exception as exc:  # one failed batch: each of its prompts is quarantined, the run goes on
                out += [Reply(None, f"{type(exc).__name__}: {exc}"[:500]) for _ in batch]
                continue
            dt = (time.perf_counter() - t0) / len(batch)
            out += [_reply(r, dt) for r in results]
        return out


def _reply(out: Any, seconds: float) -> Reply:
    gens = (out or {}).get("generations") or [None]
    stats = (out or {}).get("statistics") or {}
    text = gens[0]
    return Reply(text, None if text is not None else "EmptyOutput: the teacher returned no text",
                 _count(stats, "input_tokens"), _count(stats, "output_tokens"), seconds)
