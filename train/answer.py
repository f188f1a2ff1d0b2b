"""Answer questions from a bundle: retrieve passages from its index, render THE prompt format through the
bundle's chat template, and generate greedily with llama.cpp (``llama_cpp.Llama``) until the end of turn.

Used by ``slmforge ask`` and ``slmforge serve``. The prompt is built the same way training builds it
(``PromptFormat.render_messages`` -> chat template) and tokenized as llama.cpp tokenizes a chat: the BOS the
file asks for exactly once (a template that writes BOS itself has that text dropped when llama.cpp adds it).
Generation: train/generation.py (the bundle's max tokens, repeat penalty and loop guard, overridable per call).
The base GGUF + LoRA adapter pair loads as llama.cpp's model + ``lora_path``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, StageError, require
from train.bundle import Bundle
from train.generation import Generation, decode


@dataclass
class Passage:
    n: int
    chunk_id: str
    source_id: str
    span: tuple[int, int]
    score: float
    text: str
    title: str | None = None


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[str]
    passages: list[Passage]
    closed_book: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    #: passages retrieved but left out because the prompt would not fit the context
    passages_dropped: int = 0
    cited: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_threads() -> int:
    """CPU threads for llama.cpp when none are given: the physical cores this process may run on (llama.cpp's own
    command line does the same). llama-cpp-python's default is half the logical CPUs for generation, i.e. one
    thread on a 2-core machine, where two generate about 30 % more tokens per second (docs/bundle.md)."""
    import os

    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(psutil.cpu_count(logical=False) or usable, usable))


def _passage(n: int, hit: Any) -> Passage:
    span = tuple(int(x) for x in hit.span)
    return Passage(n=n, chunk_id=str(hit.chunk_id), source_id=str(hit.source_id), span=span,  # type: ignore[arg-type]
                   score=float(hit.score), text=str(hit.text), title=getattr(hit, "title", None))


class Reader:
    """A loaded bundle: the llama.cpp model, the index and the prompt format. ``answer`` is thread-safe (one
    generation at a time: a llama.cpp context is not)."""

    def __init__(self, bundle: Bundle, *, gguf: str | None = None, threads: int | None = None,
                 n_ctx: int | None = None, llama_options: dict[str, Any] | None = None):
        self.bundle = bundle
        self.gguf, self.lora = bundle.model(gguf)
        self.threads = threads or default_threads()
        self.n_ctx = n_ctx or int(bundle.manifest["llama"]["n_ctx"])
        self.generation = Generation.from_manifest(bundle.manifest["llama"])
        #: further ``llama_cpp.Llama`` parameters (e.g. n_ubatch, flash_attn), for measurements
        self.llama_options = dict(llama_options or {})
        self.format = bundle.prompt_format
        self.llm = None
        self.index = None
        self._lock = threading.Lock()

    @property
    def has_index(self) -> bool:
        return self.bundle.index is not None

    @property
    def model_name(self) -> str:
        name = self.gguf.name.removesuffix(".gguf")
        return name + (f"+{self.lora.name.removesuffix('.gguf')}" if self.lora else "")

    def load(self) -> Reader:
        llama_cpp = require("llama_cpp", extra="llama", purpose="answering with a bundle")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from train.llama_cpp import bindings

        bindings()  # llama.cpp's log lines go to the slmforge.llama_cpp logger, never straight to stderr

        if self.has_index:
            from curation.index import open_index

            self.index = open_index(self.bundle.index)
            if hasattr(self.index, "__len__") and len(self.index) == 0:
                raise ConfigError(f"the bundle's index {self.bundle.index} is empty", received="0 passages",
                                  fix="rebuild the bundle from a run whose chunk step kept rows, or use --closed-book")
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.gguf), lora_path=str(self.lora) if self.lora else None,
                                       n_ctx=self.n_ctx, n_threads=self.threads, n_threads_batch=self.threads,
                                       verbose=False, **self.llama_options)
        except (ValueError, RuntimeError) as exc:
            what = f"{self.gguf} + adapter {self.lora}" if self.lora else str(self.gguf)
            raise StageError(f"llama.cpp could not load {what}", received=str(exc),
                             fix="check the file is a GGUF model llama.cpp supports (rebuild the bundle)") from None
        tmpl = self.bundle.manifest["chat_template"]
        self.bos_text = tmpl.get("bos_token") or ""
        self.formatter = Jinja2ChatFormatter(self.bundle.chat_template, eos_token=tmpl.get("eos_token") or "",
                                             bos_token=self.bos_text)
        return self

    # --- prompt ---------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template and a generation prompt."""
        text = self.formatter(messages=messages).prompt
        add_bos = bool(self.llm._model.add_bos_token())
        if add_bos and self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def retrieve(self, question: str, k: int) -> list[Passage]:
        if self.index is None:
            raise ConfigError("this bundle has no index: it answers closed-book only",
                              received=str(self.bundle.path), fix="use --closed-book, or rebuild the bundle with an index step")
        return [_passage(n, h) for n, h in enumerate(self.index.search(question, k), start=1)]

    def _fit(self, history: list[dict[str, str]], question: str, passages: list[Passage] | None,
             max_tokens: int) -> tuple[list[int], list[Passage] | None, int]:
        """Prompt ids that leave ``max_tokens`` free in the context: the lowest-ranked passages are left out
        first; a prompt that does not fit even without passages is an error."""
        dropped = 0
        while True:
            messages = history + self.format.render_messages(question, passages)
            ids = self.prompt_ids(messages)
            if len(ids) + max_tokens <= self.n_ctx:
                return ids, passages, dropped
            if not passages:
                raise ConfigError("the question does not fit the model's context", received=f"{len(ids)} prompt tokens "
                                  f"+ {max_tokens} answer tokens", expected=f"<= n_ctx {self.n_ctx}",
                                  fix="ask a shorter question, lower max tokens, or rebuild the bundle with a larger n_ctx")
            passages, dropped = passages[:-1], dropped + 1

    # --- answering -------------------------------------------------------------------------------
    def _prepare(self, question: str, *, k: int | None, closed_book: bool, generation: Generation,
                 history: list[dict[str, str]] | None) -> dict[str, Any]:
        if self.llm is None:
            raise RuntimeError("Reader.load() first")
        if not question.strip():
            raise ConfigError("empty question", received=repr(question), fix="ask a question with some words")
        k = k or (self.bundle.manifest.get("retrieval") or {}).get("k") or 4
        passages = None if closed_book else self.retrieve(question, k)
        ids, passages, dropped = self._fit(list(history or []), question, passages, generation.max_tokens)
        return {"question": question, "ids": ids, "passages": passages, "dropped": dropped, "generation": generation}

    def _answer(self, p: dict[str, Any], text: str, *, completion_tokens: int, finish: str) -> Answer:
        text, plist = text.strip(), p["passages"] or []
        return Answer(question=p["question"], answer=text, citations=self.format.parse_citations(text, plist),
                      passages=plist, closed_book=p["passages"] is None, prompt_tokens=len(p["ids"]),
                      completion_tokens=completion_tokens, finish_reason=finish, passages_dropped=p["dropped"],
                      cited=self.format.cited_numbers(text, len(plist)))

    def answer(self, question: str, *, k: int | None = None, closed_book: bool = False,
               max_tokens: int | None = None, repeat_penalty: float | None = None, loop_ngram: int | None = None,
               quote: bool | None = None, history: list[dict[str, str]] | None = None) -> Answer:
        """Answer ``question`` with citations (the keywords as :meth:`stream`)."""
        for piece in self.stream(question, k=k, closed_book=closed_book, max_tokens=max_tokens,
                                 repeat_penalty=repeat_penalty, loop_ngram=loop_ngram, quote=quote, history=history):
            if isinstance(piece, Answer):
                return piece
        raise AssertionError("stream() ends with an Answer")

    def stream(self, question: str, *, k: int | None = None, closed_book: bool = False,
               max_tokens: int | None = None, repeat_penalty: float | None = None, loop_ngram: int | None = None,
               quote: bool | None = None, history: list[dict[str, str]] | None = None) -> Iterator[str | Answer]:
        """Answer ``question`` (after the earlier turns ``history``, if any): yields the answer's text pieces as they
        become final, then the whole :class:`Answer`. ``max_tokens``/``repeat_penalty``/``loop_ngram`` override
        the bundle's generation controls for this answer (None: the bundle's); so does ``quote`` (quote a span of a
        passage, train/copying.py)."""
        gen = self.generation.override(max_tokens=max_tokens, repeat_penalty=repeat_penalty, loop_ngram=loop_ngram,
                                       quote=quote)
        pieces: list[str] = []
        with self._lock:  # released when the generator ends or is closed (a client that went away)
            p = self._prepare(question, k=k, closed_book=closed_book, generation=gen, history=history)
            texts = [x.text for x in p["passages"]] if p["passages"] else None
            for text, n, finish in decode(self.llm, p["ids"], gen, passages=texts):
                if finish is None:
                    pieces.append(text)
                    yield text
        yield self._answer(p, "".join(pieces), completion_tokens=n, finish=finish)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def open_reader(bundle: str | Path, *, gguf: str | None = None, threads: int | None = None) -> Reader:
    from train.bundle import open_bundle

    return Reader(open_bundle(bundle), gguf=gguf, threads=threads).load()


def read_questions(path: str | Path, *, max_errors: int = 20, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``{id, question}`` of every line of a JSONL question file (fields ``id`` (optional: the line number) and
    ``question``; of the others, e.g. ``reference``/``keywords``, those named in ``fields`` are kept where present,
    the rest ignored). The whole file is checked before any
    question is answered: broken lines (not JSON, no ``question``, a repeated ``id``) raise one error naming
    every such line number, so no answer is written for a file that would come back incomplete."""
    import json

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError("question file not found", received=str(path), fix="pass a JSONL file: one "
                          '{"id": ..., "question": ...} per line') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"question file {path} is not readable UTF-8 text: {exc}") from None
    out, errors, seen = [], [], {}
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {no}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            errors.append(f"line {no}: no non-empty string 'question'")
            continue
        qid = str(row.get("id", f"line-{no}"))
        if qid in seen:
            errors.append(f"line {no}: id {qid!r} repeats line {seen[qid]}")
            continue
        seen[qid] = no
        out.append({"id": qid, "question": row["question"], **{f: row[f] for f in fields if f in row}})
    if errors:
        more = f" (and {len(errors) - max_errors} more)" if len(errors) > max_errors else ""
        raise ConfigError(f"question file {path}: {len(errors)} broken line(s), nothing was answered: "
                          + "; ".join(errors[:max_errors]) + more,
                          expected='one JSON object per line: {"id": "q1", "question": "..."}',
                          fix="fix or remove those lines and run again")
    if not out:
        raise ConfigError(f"question file {path} holds no questions", fix='write one {"id", "question"} per line')
    return out
