"""Ingest: folders or globs of txt, md, html, pdf, jsonl, csv and parquet files -> DOCUMENTS.

HTML text is extracted with trafilatura (main-content extraction, well kept and the extractor
used by FineWeb/datatrove; falls back to its full-text mode when a page has no "main" block).
PDF text comes from pypdf (pure Python, BSD-licensed, no system libraries; per-page text).

Every file or row that cannot be read (binary, empty, wrongly encoded, oversized, malformed,
unsupported) is quarantined with the reason and the run goes on. Files are grouped into
shards by size; a shard streams its documents in bounded batches.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas.arrow import DOCUMENTS, QUARANTINE, decisions, quarantine
from curation.config import IngestConfig
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
TEXT_FORMATS = {"txt", "md", "html", "jsonl", "csv"}
_GLOB_CHARS = re.compile(r"[*?\[]")


class Unreadable(Exception):
    """A file or row that cannot be turned into a document; the message is the quarantine reason."""


# --- discovering inputs --------------------------------------------------------------------

def discover(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, source URI) for every input file, sorted by URI; the URI is stable across machines.

    A folder ``data/sample`` gives URIs ``sample/<relative path>``; a glob uses its non-glob prefix.
    """
    found: dict[str, Path] = {}
    for spec in paths:
        if _GLOB_CHARS.search(spec):
            head = _GLOB_CHARS.split(spec, 1)[0]
            prefix = Path(head) if head.endswith("/") else Path(head).parent
            root = prefix if str(prefix) not in ("", ".") else Path.cwd()
            files = [Path(p) for p in glob.glob(spec, recursive=True)]
        else:
            p = Path(spec)
            if not p.exists():
                raise ConfigError(
                    f"ingest: input path does not exist: {spec}",
                    received=spec, expected="an existing folder, file or glob pattern",
                    fix="fix the path in 'paths:' (relative paths start at the working directory)",
                )
            root = p if p.is_dir() else p.parent
            files = sorted(x for x in p.rglob("*")) if p.is_dir() else [p]
        base = root.resolve().name or "root"
        for f in files:
            if f.is_dir():
                continue
            rel = f.resolve().relative_to(root.resolve()).as_posix() if f.resolve().is_relative_to(root.resolve()) else f.name
            found.setdefault(f"{base}/{rel}", f)
    return sorted(((f, uri) for uri, f in found.items()), key=lambda x: x[1])


def plan_shards(files: list[tuple[Path, str]], *, shard_bytes: int) -> list[list[tuple[str, str]]]:
    shards: list[list[tuple[str, str]]] = []
    cur: list[tuple[str, str]] = []
    size = 0
    for f, uri in files:
        try:
            n = f.stat().st_size
        except OSError:
            n = 0
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((str(f), uri))
        size += n
    if cur:
        shards.append(cur)
    return shards


def manifest(files: list[tuple[Path, str]]) -> list[tuple[str, int, int]]:
    out = []
    for f, uri in files:
        try:
            st = f.stat()
            out.append((uri, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((uri, -1, -1))
    return out


# --- decoding and extraction -----------------------------------------------------------------

def decode(data: bytes, *, what: str = "file") -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise Unreadable(f"not valid UTF-16 despite its byte-order mark: {exc.reason} at byte {exc.start}")
    if b"\x00" in data[:8192]:
        raise Unreadable(f"binary content (NUL bytes) in a {what} expected to be text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(
            f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} ({exc.reason}); "
            "re-encode the file as UTF-8"
        ) from None


def extract_html(html: str) -> tuple[str, str | None]:
    import trafilatura

    text = trafilatura.extract(
        html, include_comments=False, include_tables=True, favor_recall=True, deduplicate=False, with_metadata=False
    )
    if not text or not text.strip():
        text = trafilatura.html2txt(html)
    title = None
    m = re.search(r"<title[^>]*>(.*?)</title>", html, flags=re.I | re.S)
    if m:
        import html as htmllib

        title = htmllib.unescape(re.sub(r"\s+", " ", m.group(1))).strip() or None
    return (text or "").strip(), title


def extract_pdf(data: bytes) -> tuple[str, dict[str, Any]]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF-"):
        raise Unreadable("not a PDF (missing %PDF- header)")
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("encrypted PDF (needs a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise Unreadable(f"PDF parse error: {type(exc).__name__}: {exc}") from None
    return "\n\n".join(p for p in pages if p), {"pages": len(pages)}


def _md_title(text: str) -> str | None:
    m = re.search(r"^#\s+(.+)$", text, flags=re.M)
    return m.group(1).strip() if m else None


# --- the stage ------------------------------------------------------------------------------

class IngestStage(Stage[IngestConfig]):
    kind = "source"
    version = "1"
    output = DOCUMENTS

    def __init__(self, config: IngestConfig) -> None:
        super().__init__(config)
        self._files: list[tuple[Path, str]] | None = None
        if config.split_pattern:
            try:
                re.compile(config.split_pattern)
            except re.error as exc:
                raise ConfigError(f"ingest: split_pattern is not a valid regex: {exc}",
                                  received=config.split_pattern, fix="escape special characters") from None

    def files(self) -> list[tuple[Path, str]]:
        if self._files is None:
            self._files = discover(self.config.paths)
        return self._files

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"manifest": manifest(self.files())}

    def plan(self, ctx: StageContext) -> list[Any]:
        return plan_shards(self.files(), shard_bytes=self.config.shard_bytes)

    def read(self, spec: list[tuple[str, str]], ctx: StageContext) -> Iterator[ShardResult]:
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
                             detail=[{"source": q["source"]} for q in quarantined])
            qt = quarantine(q_ids, stage=ctx.step, reason=[q["reason"] for q in quarantined],
                            source=[q["source"] for q in quarantined], payload=[q.get("payload") for q in quarantined])
            res = ShardResult(table, pa.concat_tables([keep, qdec]), qt if q_ids else QUARANTINE.empty_table(), counters)
            rows, quarantined, counters = [], [], Counter()
            return res

        for path, uri in spec:
            for item in self._read_file(Path(path), uri):
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

    # one file -> documents or quarantine entries
    def _read_file(self, path: Path, uri: str) -> Iterator[dict[str, Any]]:
        c = self.config
        fmt = EXTENSIONS.get(path.suffix.lower())

        def q(reason: str, *, key: str = "", payload: str | None = None) -> dict[str, Any]:
            return {"quarantine": True, "id": doc_id(f"{uri}#{key}", "quarantine"), "reason": reason,
                    "source": uri, "payload": payload}

        if fmt is None or fmt not in c.formats:
            yield q(f"unsupported format: '{path.suffix or path.name}' (supported: {', '.join(c.formats)})")
            return
        try:
            size = path.stat().st_size
            if size > c.max_file_bytes:
                yield q(f"oversized: {size} bytes > max_file_bytes={c.max_file_bytes}")
                return
            if size == 0:
                yield q("empty: file has 0 bytes")
                return
            if fmt == "parquet":
                yield from self._read_parquet(path, uri, q)
                return
            data = path.read_bytes()
        except OSError as exc:
            yield q(f"unreadable: {type(exc).__name__}: {exc.strerror or exc}")
            return
        try:
            if fmt == "pdf":
                text, meta = extract_pdf(data)
                yield from self._documents(text, uri, fmt, title=None, meta=meta, q=q)
                return
            text = decode(data)
            if fmt == "html":
                body, title = extract_html(text)
                yield from self._documents(body, uri, fmt, title=title, meta=None, q=q)
            elif fmt == "jsonl":
                yield from self._read_jsonl(text, uri, q)
            elif fmt == "csv":
                yield from self._read_csv(text, uri, q)
            else:
                yield from self._split_text(text, uri, fmt, q)
        except Unreadable as exc:
            yield q(str(exc))

    def _documents(self, text, uri, fmt, *, title, meta, q, span=None, key=""):
        if len(text.strip()) < self.config.min_chars:
            kind = "empty: no text" if not text.strip() else f"empty: fewer than min_chars={self.config.min_chars} characters"
            if fmt == "pdf":
                kind = "empty: no extractable text (scanned or image-only PDF?)"
            yield q(kind, key=key)
            return
        chash = content_hash(text)
        start, end = span if span else (None, None)
        yield {
            "id": doc_id(f"{uri}#{'' if start is None else start}", chash),
            "text": text, "source": uri, "format": fmt, "span_start": start, "span_end": end,
            "content_hash": chash, "title": title, "meta": json.dumps(meta, sort_keys=True, default=str) if meta else None,
        }

    def _split_text(self, text, uri, fmt, q):
        title = _md_title(text) if fmt == "md" else None
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
            yield from self._documents(part, uri, fmt, title=_md_title(part) if fmt == "md" else None,
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
                                   q=q, span=span, key=key)

    def _read_jsonl(self, text, uri, q):
        offset = 0
        for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield q(f"malformed jsonl: line {lineno}: {exc.msg} at column {exc.colno}", key=str(start), payload=line)
                continue
            yield from self._record(record, uri, "jsonl", q, span=(start, start + len(line.rstrip("\r\n"))),
                                    key=str(start), raw=line)

    def _read_csv(self, text, uri, q):
        consumed = 0

        def lines():
            nonlocal consumed
            for line in io.StringIO(text, newline=""):
                consumed += len(line)
                yield line

        reader = csv.reader(lines())
        try:
            header = next(reader)
        except StopIteration:
            yield q("empty: csv has no header")
            return
        except csv.Error as exc:
            yield q(f"malformed csv header: {exc}")
            return
        row_no = 1
        while True:
            start = consumed
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield q(f"malformed csv: row {row_no}: {exc}", key=str(start))
                continue
            row_no += 1
            raw = text[start:consumed]
            if not row:
                continue
            if len(row) != len(header):
                yield q(f"malformed csv: row {row_no} has {len(row)} fields, header has {len(header)}",
                        key=str(start), payload=raw)
                continue
            yield from self._record(dict(zip(header, row)), uri, "csv", q,
                                    span=(start, start + len(raw.rstrip("\r\n"))), key=str(start), raw=raw)

    def _read_parquet(self, path, uri, q):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            yield q(f"malformed parquet: {exc}")
            return
        if self.config.text_field not in pf.schema_arrow.names:
            yield q(f"missing field: parquet has no column '{self.config.text_field}' "
                    f"(columns: {', '.join(pf.schema_arrow.names)}); set text_field in the ingest config")
            return
        row = 0
        for batch in pf.iter_batches(batch_size=self.config.batch_rows):
            for record in batch.to_pylist():
                yield from self._record(record, uri, "parquet", q, span=(row, row + 1), key=f"row{row}",
                                        raw=json.dumps(record, default=str))
                row += 1


def ingest_paths(paths: list[str], **config: Any) -> pa.Table:
    """Convenience for notebooks/tests: read ``paths`` into one DOCUMENTS table (no quarantine output)."""
    stage = IngestStage(IngestConfig(paths=paths, **config))
    ctx = StageContext(stage_dir=Path(os.devnull), work_dir=Path(os.devnull), step="ingest")
    tables = [r.table for spec in stage.plan(ctx) for r in stage.read(spec, ctx)]
    return pa.concat_tables(tables) if tables else DOCUMENTS.empty_table()
