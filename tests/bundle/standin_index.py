"""TEMPORARY stand-in for curation.index (h-index's reader API) until it lands on main. Remove then."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Hit:
    chunk_id: str
    source_id: str
    span: tuple[int, int]
    score: float
    text: str
    title: str | None = None


def _words(t):
    return set(re.findall(r"[a-z0-9]+", t.lower()))


class Index:
    def __init__(self, chunks):
        self.chunks = chunks

    def __len__(self):
        return len(self.chunks)

    def search(self, query, k):
        q = _words(query)
        scored = sorted(((len(q & _words(c["text"])), i) for i, c in enumerate(self.chunks)), key=lambda x: (-x[0], x[1]))
        return [Hit(c["id"], c["source"], (c["span_start"], c["span_end"]), float(s), c["text"])
                for s, i in scored[:k] for c in [self.chunks[i]]]

    def search_many(self, queries, k):
        return [self.search(q, k) for q in queries]


def build(chunks, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chunks.json").write_text(json.dumps(chunks))
    return folder


def open_index(path):
    return Index(json.loads((Path(path) / "chunks.json").read_text()))
