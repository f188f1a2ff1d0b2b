"""The regex recognizer every pattern recognizer of curation.pii is built from (its own module so
that :mod:`curation.pii.recognizers` and :mod:`curation.pii.context` both use it without importing
each other: no import loop)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from presidio_analyzer import EntityRecognizer, RecognizerResult

Validator = Callable[[str, str, int, int], bool]  # (value, text, start, end) -> keep


class RegexRecognizer(EntityRecognizer):
    """One entity, a few (regex, score) patterns, a validator and an optional context boost.

    ``group`` names the part of a match that is the span (patterns without that group use the whole
    match); a named group ``also`` is reported as a second span (a town after a street address)."""

    def __init__(self, entity: str, patterns: Sequence[tuple[str, float]], *, validate: Validator | None = None,
                 group: int | str = 0, context: str | None = None, context_score: float = 0.9,
                 window: int = 40, flags: int = re.MULTILINE, name: str | None = None) -> None:
        self._patterns = [(re.compile(p, flags), s) for p, s in patterns]
        self._validate = validate
        self._group = group
        self._context = re.compile(context, re.IGNORECASE) if context else None
        self._context_score = context_score
        self._window = window
        super().__init__(supported_entities=[entity], name=name or f"slmforge_{entity.lower()}", supported_language="en")

    def load(self) -> None:  # nothing to load
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001 (Presidio signature)
        entity = self.supported_entities[0]
        out: list[RecognizerResult] = []
        for rx, score in self._patterns:
            group = self._group if isinstance(self._group, int) or self._group in rx.groupindex else 0
            for m in rx.finditer(text):
                start, end = m.span(group)
                if start < 0 or end <= start:
                    continue
                value = text[start:end]
                if self._validate is not None and not self._validate(value, text, start, end):
                    continue
                s = score
                if self._context is not None and s < self._context_score:
                    lo = max(0, start - self._window)
                    if self._context.search(text[lo:start]) or self._context.search(text[end:end + 15]):
                        s = self._context_score
                if s > 0:
                    out.append(RecognizerResult(entity, start, end, s))
                    if "also" in rx.groupindex and m.start("also") >= 0:  # a second span of the same match
                        out.append(RecognizerResult(entity, m.start("also"), m.end("also"), s))
        return out
