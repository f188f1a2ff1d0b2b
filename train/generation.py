"""Generation controls of a bundle and the greedy decoding loop ``ask``/``serve`` run in llama.cpp.

* ``Generation``: the settings one answer is generated with -- the bundle's (``bundle.json`` -> ``llama``),
  overridden per call (``slmforge ask`` flags, the fields of an OpenAI request in ``serve``).
* ``answer_lengths``: token lengths of the training answers, which size the default ``max_new_tokens`` (a
  quantile of them, so an answer the model was trained to give is never cut, and a loop is).
* ``decode``: greedy tokens from llama.cpp until the end of turn (any end-of-generation token of the vocabulary),
  ``max_tokens``, or the loop guard: when the last ``loop_ngram`` generated tokens already occurred earlier in
  the same answer, the model has started to repeat itself; the answer is cut where the repeat began
  (``finish_reason`` ``"loop"``). While streaming, the last ``loop_ngram - 1`` tokens are held back until they
  are known not to start a repeat, so no text is sent that the final answer drops. With ``quote`` on and passages
  given, each token is the model's best-ranked one that keeps the answer a span of a passage, and the answer is
  cited as ``[n]`` (train/copying.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from schemas.errors import ConfigError
from train.copying import SpanCopier

#: used for bundles written before these settings were recorded (bundle.json without them)
DEFAULT_REPEAT_PENALTY = 1.0
DEFAULT_LOOP_NGRAM = 0


@dataclass(frozen=True)
class Generation:
    """How one answer is generated (greedy). ``loop_ngram`` 0: no loop guard; ``repeat_penalty`` 1.0: none."""

    max_tokens: int
    repeat_penalty: float = DEFAULT_REPEAT_PENALTY
    loop_ngram: int = DEFAULT_LOOP_NGRAM
    #: open-book answers quote a span of a passage and cite it (train/copying.py)
    quote: bool = False

    @classmethod
    def from_manifest(cls, llama: dict[str, Any]) -> Generation:
        return cls(max_tokens=int(llama["max_new_tokens"]),
                   repeat_penalty=float(llama.get("repeat_penalty", DEFAULT_REPEAT_PENALTY)),
                   loop_ngram=int(llama.get("loop_ngram", DEFAULT_LOOP_NGRAM)), quote=bool(llama.get("quote", False)))

    def override(self, *, max_tokens: int | None = None, repeat_penalty: float | None = None,
                 loop_ngram: int | None = None, quote: bool | None = None) -> Generation:
        """These settings with the given ones replaced (None: keep), checked."""
        new = replace(self, **{k: v for k, v in (("max_tokens", max_tokens), ("repeat_penalty", repeat_penalty),
                                                  ("loop_ngram", loop_ngram), ("quote", quote)) if v is not None})
        if new.max_tokens < 1:
            raise ConfigError("max tokens must be at least 1", received=new.max_tokens, fix="pass a positive number")
        if not 0.5 <= new.repeat_penalty <= 2.0:
            raise ConfigError("repeat penalty out of range", received=new.repeat_penalty, expected="0.5-2.0 (1.0: off)",
                              fix="pass e.g. 1.1, or 1.0 for none")
        if new.loop_ngram != 0 and not 2 <= new.loop_ngram <= 64:
            raise ConfigError("loop guard n-gram length out of range", received=new.loop_ngram,
                              expected="0 (off) or 2-64 tokens", fix="pass e.g. 12, or 0 to turn the guard off")
        return new


def answer_lengths(answers: Iterable[str], tokenize) -> list[int]:
    """Tokens the model generates for each answer: its text (trimmed, as the chat template writes it) plus the
    end-of-turn token. ``tokenize(text) -> ids`` without BOS."""
    return [len(tokenize(a.strip())) + 1 for a in answers]


def quantile(values: list[int], q: float) -> int:
    """The ``q`` quantile of ``values`` (nearest rank, rounded up: ceil(q * n)-th smallest)."""
    xs = sorted(values)
    return xs[max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))]


def loop_start(tokens: list[int], n: int, seen: dict[tuple[int, ...], int]) -> int | None:
    """Where a repeat begins when the last ``n`` of ``tokens`` occurred earlier (``seen``: n-gram -> first start,
    updated here as tokens arrive, so each call costs O(n)); None while nothing repeats."""
    if n <= 0 or len(tokens) < n:
        return None
    start = len(tokens) - n
    gram = tuple(tokens[start:])
    if gram in seen:
        return start
    seen[gram] = start
    return None


def _quote_processor(llm: Any, passages: Sequence[str]) -> tuple[SpanCopier, Any]:
    """A :class:`SpanCopier` over ``passages`` and the llama-cpp-python logits processor that makes greedy decoding
    emit its choice (an end of generation where the span ends)."""
    import llama_cpp
    import numpy as np

    vocab = llm._model.vocab
    copier = SpanCopier(passages, piece=lambda t: llm.detokenize([t]).decode("utf-8", errors="ignore"),
                        is_end=lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t)))
    end = int(llama_cpp.llama_vocab_eos(vocab))
    if not llama_cpp.llama_vocab_is_eog(vocab, end):
        end = int(llama_cpp.llama_vocab_eot(vocab))

    def constrain(_input_ids: Any, scores: Any) -> Any:
        top = min(copier.top, scores.shape[-1] - 1)
        best = np.argpartition(-scores, top)[:top]
        best = best[np.argsort(-scores[best], kind="stable")]
        tok = copier.choose(int(t) for t in best)
        out = np.full_like(scores, -np.inf)
        out[end if tok is None else tok] = 0.0
        return out

    return copier, constrain


def decode(llm: Any, ids: list[int], gen: Generation,
           passages: Sequence[str] | None = None) -> Iterator[tuple[str, int | None, str | None]]:
    """Greedy decoding of the prompt ``ids`` in llama.cpp: yields ``(text, None, None)`` for each piece of text that
    is final, then ``("", completion_tokens, finish_reason)`` (``stop``: end of turn, ``length``: ``max_tokens``,
    ``loop``: the loop guard cut a repeat). The cache keeps the longest prefix shared with the previous prompt.
    ``passages`` (their texts, in prompt order): with ``gen.quote`` the answer quotes a span of one and cites it."""
    import llama_cpp

    vocab = llm._model.vocab
    copier, processor = _quote_processor(llm, passages) if gen.quote and passages else (None, None)
    out: list[int] = []
    sent = 0  # bytes of the answer already yielded
    hold = max(0, gen.loop_ngram - 1)
    seen: dict[tuple[int, ...], int] = {}
    pieces: list[bytes] = []  # pieces[i]: the bytes of out[i]
    finish = "length"
    tokens = llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=gen.repeat_penalty, reset=True,
                          logits_processor=llama_cpp.LogitsProcessorList([processor]) if processor else None)
    try:
        for tok in tokens:
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                finish = "stop"
                break
            if copier is not None:
                copier.advance(int(tok))
            out.append(int(tok))
            pieces.append(llm.detokenize([tok]))
            cut = loop_start(out, gen.loop_ngram, seen)
            if cut is not None:
                del out[cut:], pieces[cut:]
                finish = "loop"
                break
            if len(out) >= gen.max_tokens:
                break
            text, used = _complete_utf8(b"".join(pieces[: len(pieces) - hold])[sent:])
            if text:
                sent += used
                yield text, None, None
    finally:
        tokens.close()
    answer = b"".join(pieces)
    rest = answer[sent:].decode("utf-8", errors="ignore")
    cite = copier.citation() if copier is not None else None
    if cite is not None:
        rest += ("" if answer[-1:].isspace() else " ") + f"[{cite}]"
    if rest:
        yield rest, None, None
    yield "", len(out), finish


def _complete_utf8(data: bytes) -> tuple[str, int]:
    """The text of the longest prefix of ``data`` that ends on a whole UTF-8 character (a token may end inside
    one) and how many bytes that is; bytes that are no UTF-8 at all are dropped."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            return data[:cut].decode("utf-8"), cut
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="ignore"), len(data)
