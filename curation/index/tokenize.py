"""Tokenisation for lexical retrieval over technical text.

Lower-cased word tokens, English Snowball stemming (PyStemmer), an optional short stop-word list,
and identifiers kept whole: ``pg_dump``, ``max_connections``, ``pg_catalog.pg_class``,
``--no-owner`` or ``ON_ERROR_STOP`` give the whole identifier (unstemmed) *and* its parts
(stemmed), so a query for ``max_connections`` matches the identifier exactly while a query for
"maximum connections" still meets ``connect``. Keywords made of several words (``ALTER TABLE``)
are matched word by word. The same function tokenises chunks and queries, and its settings are
stored in the index, so a reader always tokenises queries the way the index was built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

#: a word, or an identifier: words joined by '_', '.', '-' or '$' (no spaces)
_TOKEN = re.compile(r"[0-9a-z]+(?:[_.$-]+[0-9a-z]+)*")
_PART = re.compile(r"[0-9a-z]+")

#: Lucene's English stop words (the list bm25s and Elasticsearch use)
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)


@dataclass(frozen=True)
class Tokenizer:
    """Settings travel with the index (``index.json``): ``Tokenizer(**settings)`` rebuilds it."""

    stemmer: str | None = "english"
    stopwords: str | None = "english"

    @cached_property
    def _stem(self):
        if self.stemmer is None:
            return lambda words: words
        try:
            import Stemmer  # PyStemmer (Snowball)
        except ImportError as exc:  # pragma: no cover - a core dependency
            from schemas.errors import ConfigError

            raise ConfigError("stemming needs PyStemmer", received=str(exc),
                              fix="pip install PyStemmer, or set 'stemmer: null' in the index step") from exc
        return Stemmer.Stemmer(self.stemmer).stemWords

    @property
    def _stop(self) -> frozenset[str]:
        return STOPWORDS_EN if self.stopwords == "english" else frozenset()

    def settings(self) -> dict[str, str | None]:
        return {"stemmer": self.stemmer, "stopwords": self.stopwords}

    def __call__(self, text: str) -> list[str]:
        """Tokens of one text, in order (identifiers followed by their parts)."""
        stop = self._stop
        words: list[str] = []
        whole: list[tuple[int, str]] = []  # (position in words, identifier) - kept unstemmed
        for tok in _TOKEN.findall(text.lower()):
            parts = _PART.findall(tok)
            if len(parts) > 1:
                whole.append((len(words), tok.strip("-.")))
            words.extend(p for p in parts if p not in stop)
        stemmed = list(self._stem(words))
        if not whole:
            return stemmed
        out: list[str] = []
        j = 0
        for i, w in enumerate(stemmed):
            while j < len(whole) and whole[j][0] == i:
                out.append(whole[j][1])
                j += 1
            out.append(w)
        out.extend(t for _, t in whole[j:])
        return out

    def many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self(t) for t in texts]
