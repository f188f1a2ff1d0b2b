"""DOCUMENTS -> CHUNKS: split at markdown headings, pack paragraphs up to ``max_chars``.

Each chunk keeps its exact character span in the document text (``text == doc[span_start:span_end]``)
and the nearest heading above it, so any example can be traced back to the words it came from.
"""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa

from schemas.arrow import CHUNKS, decisions
from synth.config import ChunkConfig
from schemas.ids import derived_id
from schemas.stage import ShardResult, Stage, StageContext

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_PARA_BREAK = re.compile(r"\n[ \t]*\n")


def _sections(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, heading) of each heading-delimited section; text before the first heading has none."""
    marks = [(m.start(), m.group(2).strip()) for m in _HEADING.finditer(text)]
    out: list[tuple[int, int, str | None]] = []
    if not marks or marks[0][0] > 0:
        out.append((0, marks[0][0] if marks else len(text), None))
    for i, (start, head) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        out.append((start, end, head))
    return out


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of blank-line separated paragraphs inside [start, end), code fences kept whole."""
    spans, pos, in_fence, para_start = [], start, False, start
    seg = text[start:end]
    for m in _PARA_BREAK.finditer(seg):
        br = start + m.start()
        in_fence = text[para_start:br].count("```") % 2 == 1
        if in_fence:
            continue
        spans.append((para_start, br))
        para_start = start + m.end()
    spans.append((para_start, end))
    del pos
    return [(s, e) for s, e in spans if text[s:e].strip()]


def chunk_text(text: str, *, max_chars: int) -> list[tuple[int, int, str | None]]:
    """(span_start, span_end, heading) of chunks; spans are trimmed of surrounding whitespace."""
    chunks: list[tuple[int, int, str | None]] = []
    for s_start, s_end, head in _sections(text):
        cur: tuple[int, int] | None = None
        for p_start, p_end in _paragraphs(text, s_start, s_end):
            if cur is not None and p_end - cur[0] <= max_chars:
                cur = (cur[0], p_end)
                continue
            if cur is not None:
                chunks.append((*cur, head))
            # an over-long single paragraph is cut at line breaks
            while p_end - p_start > max_chars:
                cut = text.rfind("\n", p_start, p_start + max_chars)
                cut = cut if cut > p_start else p_start + max_chars
                chunks.append((p_start, cut, head))
                p_start = cut
            cur = (p_start, p_end)
        if cur is not None:
            chunks.append((*cur, head))
    trimmed = []
    for s, e, h in chunks:
        seg = text[s:e]
        s2 = s + (len(seg) - len(seg.lstrip()))
        e2 = e - (len(seg) - len(seg.rstrip()))
        if e2 > s2:
            trimmed.append((s2, e2, h))
    return trimmed


class ChunkStage(Stage[ChunkConfig]):
    kind = "map"
    version = "1"
    requires = {"id": pa.string(), "text": pa.large_string(), "source": pa.string()}
    output = CHUNKS

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        rows: dict[str, list] = {n: [] for n in CHUNKS.names}
        dropped_ids, counters = [], Counter()
        for doc_id, text, source in zip(
            table.column("id").to_pylist(), table.column("text").to_pylist(), table.column("source").to_pylist()
        ):
            for pos, (s, e, head) in enumerate(chunk_text(text or "", max_chars=self.config.max_chars)):
                cid = derived_id(doc_id, "chunk", s, e)
                if e - s < self.config.min_chars:
                    dropped_ids.append(cid)
                    counters["dropped:too_short"] += 1
                    continue
                for k, v in (("id", cid), ("doc_id", doc_id), ("text", text[s:e]), ("source", source),
                             ("span_start", s), ("span_end", e), ("heading", head), ("position", pos),
                             ("parent_ids", [doc_id])):
                    rows[k].append(v)
                counters["chunks"] += 1
        ctx.progress(table.num_rows)
        out = pa.Table.from_pydict(rows, schema=CHUNKS)
        dec = pa.concat_tables([
            decisions(out.column("id"), stage=ctx.step, action="keep", reason="chunked"),
            decisions(dropped_ids, stage=ctx.step, action="drop", reason="too_short"),
        ])
        return ShardResult(out, dec, counters=counters)
