"""The ingest stage: input entries (curation/ingest/discover.py) -> DOCUMENTS rows, QUARANTINE rows and
a DECISIONS row for every document and every quarantined file, line, record or row group.

Files are grouped into shards by size; a shard streams its documents in bounded batches.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.config import IngestConfig
from curation.ingest.discover import Entry, allowed_paths, discover, input_roots, inside, manifest, plan_shards
from curation.ingest.readers import (
    Bad, Unreadable, csv_records, decode, extract_html, extract_pdf, jsonl_records, md_title, parquet_records,
    read_regular,
)
from schemas.arrow import DOCUMENTS, QUARANTINE, decisions, quarantine
from schemas.errors import ConfigError
from schemas.ids import content_hash, doc_id
from schemas.stage import ShardResult, Stage, StageContext

EXTENSIONS = {
    ".txt": "txt", ".text": "txt", ".log": "txt",
    ".md": "md", ".markdown": "md",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}


def _utf8(value: str | None) -> bool:
    try:
        value is None or value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class IngestStage(Stage[IngestConfig]):
    kind = "source"
    version = "2"  # 2: strict CSV, JSONL split on '\n' only, deep HTML, symlink policy, row-group isolation
    output = DOCUMENTS

    def __init__(self, config: IngestConfig) -> None:
        super().__init__(config)
        self._entries: list[Entry] | None = None
        self._allowed_paths: list[str] | None = None
        if config.split_pattern:
            try:
                re.compile(config.split_pattern)
            except re.error as exc:
                raise ConfigError(f"ingest: split_pattern is not a valid regex: {exc}",
                                  received=config.split_pattern, fix="escape special characters") from None

    def entries(self) -> list[Entry]:
        if self._entries is None:
            self._entries = discover(self.config.paths, follow_symlinks=self.config.follow_symlinks)
        return self._entries

    def roots(self) -> list[Path]:
        """The real folders this ingest reads."""
        return input_roots(self.config.paths)

    def _allowed(self) -> list[str]:
        if self._allowed_paths is None:
            self._allowed_paths = allowed_paths(self.config.paths)
        return self._allowed_paths

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"manifest": manifest(self.entries())}

    def plan(self, ctx: StageContext) -> list[Any]:
        return plan_shards(self.entries(), shard_bytes=self.config.shard_bytes)

    def read(self, spec: list[Entry], ctx: StageContext) -> Iterator[ShardResult]:
        rows: list[dict[str, Any]] = []
        quarantined: list[dict[str, Any]] = []
        counters: Counter = Counter()

        def flush() -> ShardResult:
            nonlocal rows, quarantined, counters
            table = pa.Table.from_pylist(rows, schema=DOCUMENTS) if rows else DOCUMENTS.empty_table()
            keep = decisions(
                [r["id"] for r in rows], stage=ctx.step, action="keep", reason="ingested",
                detail=[{"source": r["source"], "span": [r["span_start"], r["span_end"]]} for r in rows],
            )
            q_ids = [q["id"] for q in quarantined]
            qdec = decisions(q_ids, stage=ctx.step, action="quarantine", reason=[q["reason"] for q in quarantined],
                             detail=[{"source": q["source"], "rows": q["rows"]} for q in quarantined])
            qt = quarantine(q_ids, stage=ctx.step, reason=[q["reason"] for q in quarantined],
                            source=[q["source"] for q in quarantined], payload=[q.get("payload") for q in quarantined])
            res = ShardResult(table, pa.concat_tables([keep, qdec]), qt if q_ids else QUARANTINE.empty_table(), counters)
            rows, quarantined, counters = [], [], Counter()
            return res

        for entry in spec:
            for item in self._read_entry(entry):
                if item.get("quarantine"):
                    quarantined.append(item)
                    reason_kind = item["reason"].split(":")[0].split(" (")[0]
                    counters[f"quarantined:{reason_kind}"] += 1
                else:
                    rows.append(item)
                if len(rows) + len(quarantined) >= self.config.batch_rows:
                    ctx.progress(len(rows))
                    yield flush()
            counters["files"] += 1
        ctx.progress(len(rows))
        yield flush()

    # one entry -> documents or quarantine items
    def _read_entry(self, entry: Entry) -> Iterator[dict[str, Any]]:
        c = self.config
        uri = entry.uri

        def q(reason: str, *, key: str = "", payload: str | None = None, rows: int = 1) -> dict[str, Any]:
            return {"quarantine": True, "id": doc_id(f"{uri}#{key}", "quarantine"), "reason": reason,
                    "source": uri, "payload": payload, "rows": rows}

        if entry.problem is not None:
            yield q(entry.problem)
            return
        fmt = EXTENSIONS.get(Path(entry.path).suffix.lower())
        if fmt is None or fmt not in c.formats:
            yield q(f"unsupported format: '{Path(entry.path).suffix or Path(entry.path).name}' "
                    f"(supported: {', '.join(c.formats)})")
            return
        if not c.follow_symlinks and not inside(os.path.realpath(entry.path), self._allowed()):
            yield q("symlink leaves the input folders (changed since discovery); not read")
            return
        try:
            if fmt == "parquet":
                size = os.stat(entry.path).st_size
                if size > c.max_file_bytes:
                    raise Unreadable(f"oversized: {size} bytes > max_file_bytes={c.max_file_bytes}")
                yield from self._structured(parquet_records(entry.path, text_field=c.text_field,
                                                            batch_rows=c.batch_rows), uri, "parquet", q)
                return
            data = read_regular(entry.path, max_bytes=c.max_file_bytes)
            if fmt == "pdf":
                text, meta = extract_pdf(data)
                yield from self._documents(text, uri, fmt, title=None, meta=meta, q=q)
                return
            text = decode(data)
            if fmt == "html":
                body, title, meta = extract_html(text)
                yield from self._documents(body, uri, fmt, title=title, meta=meta, q=q)
            elif fmt == "jsonl":
                yield from self._structured(jsonl_records(text), uri, "jsonl", q, raw=text)
            elif fmt == "csv":
                yield from self._csv(text, uri, q)
            else:
                yield from self._split_text(text, uri, fmt, q)
        except Unreadable as exc:
            yield q(str(exc))
        except OSError as exc:
            yield q(f"unreadable: {type(exc).__name__}: {exc.strerror or exc}")

    def _documents(self, text, uri, fmt, *, title, meta, q, span=None, key="", raw=None):
        if not _utf8(text) or not _utf8(title):
            yield q(f"text is not valid Unicode (a lone surrogate code point, e.g. an escaped \\ud800 in {fmt})",
                    key=key, payload=raw)
            return
        if len(text.strip()) < self.config.min_chars:
            kind = "empty: no text" if not text.strip() else f"empty: fewer than min_chars={self.config.min_chars} characters"
            if fmt == "pdf":
                kind = "empty: no extractable text (scanned or image-only PDF?)"
            yield q(kind, key=key, payload=raw)
            return
        chash = content_hash(text)
        start, end = span if span else (None, None)
        yield {
            "id": doc_id(f"{uri}#{'' if start is None else start}", chash),
            "text": text, "source": uri, "format": fmt, "span_start": start, "span_end": end,
            "content_hash": chash, "title": title, "meta": json.dumps(meta, sort_keys=True, default=str) if meta else None,
        }

    def _split_text(self, text, uri, fmt, q):
        title = md_title(text) if fmt == "md" else None
        if not self.config.split_pattern:
            yield from self._documents(text, uri, fmt, title=title, meta=None, q=q)
            return
        pos = 0
        pieces = []
        for m in re.finditer(self.config.split_pattern, text):
            pieces.append((pos, m.start()))
            pos = m.end()
        pieces.append((pos, len(text)))
        for start, end in pieces:
            part = text[start:end]
            if not part.strip():
                continue
            yield from self._documents(part, uri, fmt, title=md_title(part) if fmt == "md" else None,
                                       meta=None, q=q, span=(start, end), key=str(start))

    def _record(self, record: Any, uri: str, fmt: str, q, *, span, key, raw: str | None):
        c = self.config
        if not isinstance(record, dict):
            yield q(f"malformed {fmt} record: expected an object, got {type(record).__name__}", key=key, payload=raw)
            return
        if c.text_field not in record:
            yield q(f"missing field: '{c.text_field}' not in record (keys: {', '.join(map(str, record))}); "
                    "set text_field in the ingest config", key=key, payload=raw)
            return
        text = record[c.text_field]
        if not isinstance(text, str):
            yield q(f"wrong type: field '{c.text_field}' is {type(text).__name__}, expected a string",
                    key=key, payload=raw)
            return
        title = record.get(c.title_field) if c.title_field else None
        meta = {k: v for k, v in record.items() if k not in (c.text_field, c.title_field)}
        yield from self._documents(text, uri, fmt, title=None if title is None else str(title), meta=meta or None,
                                   q=q, span=span, key=key, raw=raw)

    def _structured(self, items, uri, fmt, q, *, raw: str | None = None):
        """JSONL lines (``raw``: the file's text) or Parquet rows -> documents / quarantine items."""
        for item in items:
            if isinstance(item, Bad):
                yield q(item.reason, key=item.key, payload=item.payload, rows=item.rows)
                continue
            if fmt == "parquet":
                row, record = item
                span, key, line = (row, row + 1), f"row{row}", json.dumps(record, default=str)
            else:
                start, end, record = item
                span, key, line = (start, end), str(start), raw[start:end]
            yield from self._record(record, uri, fmt, q, span=span, key=key, raw=line)

    def _csv(self, text, uri, q):
        records = csv_records(text)
        header = next(records, None)
        if header is None:
            yield q("empty: csv has no header")
            return
        if isinstance(header, Bad):
            yield q(f"malformed csv header (the whole file is not read): {header.reason}", payload=header.payload)
            return
        names = header[2]
        row_no = 1
        for item in records:
            row_no += 1
            if isinstance(item, Bad):
                yield q(item.reason, key=item.key, payload=item.payload)
                continue
            start, end, fields = item
            raw = text[start:end]
            if len(fields) != len(names):
                yield q(f"malformed csv: row {row_no} has {len(fields)} fields, header has {len(names)}",
                        key=str(start), payload=raw)
                continue
            yield from self._record(dict(zip(names, fields)), uri, "csv", q, span=(start, end), key=str(start), raw=raw)


def ingest_paths(paths: list[str], **config: Any) -> pa.Table:
    """Convenience for notebooks/tests: read ``paths`` into one DOCUMENTS table (no quarantine output)."""
    stage = IngestStage(IngestConfig(paths=paths, **config))
    ctx = StageContext(stage_dir=Path(os.devnull), work_dir=Path(os.devnull), step="ingest")
    tables = [r.table for spec in stage.plan(ctx) for r in stage.read(spec, ctx)]
    return pa.concat_tables(tables) if tables else DOCUMENTS.empty_table()
