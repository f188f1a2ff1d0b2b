"""Stable ids: a document id is derived from its source URI and content hash."""

from __future__ import annotations

import hashlib


def content_hash(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def doc_id(source: str, chash: str) -> str:
    """16 hex chars (64 bits) of sha256(source URI, content hash): same corpus, same ids."""
    return hashlib.sha256(f"{source}\x00{chash}".encode()).hexdigest()[:16]


def derived_id(parent: str, kind: str, *parts: object) -> str:
    """Id of a row derived from ``parent`` (a chunk, an example): stable across runs."""
    key = "\x00".join([parent, kind, *map(str, parts)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]
