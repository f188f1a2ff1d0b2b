"""Quote mode: greedy generation that may only copy a span of the retrieved passages, then cite it.

A RAFT reader trained on the extractive teacher's rows learnt one kind of answer: a contiguous span of a passage,
followed by ``[n]`` (synth/extractive.py: every answer is a substring of its chunk). A small reader still drifts
off the passage and writes sentences that no passage holds (docs/gemma.md). With ``quote`` on, each generated
token is the model's highest-ranked token that keeps the answer a span of a passage (starting at a word boundary;
whitespace runs compare as one space). The span ends where the model ranks an end of turn or a citation (``[``)
above every token that would continue it, or where none of its ``top`` ranked tokens continues it; the answer is
then cited as ``[n]``, the first passage that holds the span. The model still decides where the answer starts and
how long it is; only what no passage says is ruled out. On the Gemma PostgreSQL recipe it answers fewer questions
right than free decoding (docs/bundle.md, *Quote mode*), so it is off by default.

Pure Python, no heavy imports: :class:`SpanCopier` ranks nothing itself; the decoding loops
(:func:`train.generation.decode`, llama.cpp; ``train.evaluate.generate_answers``, transformers) hand it the
vocabulary ids in the model's order of preference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

_SPACE = re.compile(r"\s+")

#: how many of the model's best-ranked tokens are tried before the span is ended
DEFAULT_TOP = 128


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text)


def _at_word_start(hay: str, i: int) -> bool:
    return i == 0 or not (hay[i - 1].isalnum() or hay[i - 1] == "_")


class SpanCopier:
    """The state of one copied answer. ``passages``: the passage texts in prompt order (number = index + 1);
    ``piece(id)``: a token's text; ``is_end(id)``: True for end-of-generation tokens."""

    def __init__(self, passages: Sequence[str], *, piece: Callable[[int], str], is_end: Callable[[int], bool],
                 top: int = DEFAULT_TOP):
        self.hay = [_norm(p) for p in passages]
        self.piece = piece
        self.is_end = is_end
        self.top = top
        self.text = ""  # the answer so far, whitespace-normalised, without leading space
        self.ended = False

    def holds(self, span: str) -> list[int]:
        """Numbers (1-based) of the passages that hold ``span`` starting at a word boundary."""
        out = []
        for n, hay in enumerate(self.hay, start=1):
            i = hay.find(span)
            while i >= 0:
                if _at_word_start(hay, i):
                    out.append(n)
                    break
                i = hay.find(span, i + 1)
        return out

    def _extended(self, piece: str) -> str | None:
        if not piece:
            return None
        text = _norm(self.text + piece)
        return text.lstrip() if not self.text else text

    def choose(self, ranked: Iterable[int]) -> int | None:
        """The token to emit, from the model's ranking (best first): the first that continues the span, or None when
        the span ends here (the model prefers ending, citing, or nothing in its top ``top`` continues)."""
        for rank, tok in enumerate(ranked):
            if rank >= self.top:
                break
            if self.is_end(tok):
                if self.text.strip():
                    return None
                continue
            piece = self.piece(tok)
            if self.text.strip() and piece.lstrip().startswith("["):
                return None
            text = self._extended(piece)
            if text and text.strip() and text != self.text and self.holds(text):  # a token that adds nothing loops
                return tok
        return None

    def advance(self, tok: int) -> None:
        self.text = self._extended(self.piece(tok)) or self.text

    def citation(self) -> int | None:
        """The passage the answer is cited to: the first that holds the whole span (None for an empty answer)."""
        span = self.text.strip()
        found = self.holds(span) if span else []
        return found[0] if found else None


__all__ = ["DEFAULT_TOP", "SpanCopier"]
