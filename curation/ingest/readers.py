"""Readers per format: raw bytes -> text, and structured files -> records, with a precise reason for
whatever cannot be read (raised as :class:`Unreadable` or yielded as a :class:`Bad` item).

HTML text is extracted with trafilatura (main-content extraction, the extractor used by FineWeb and
datatrove; its full-text mode when a page has no "main" block). PDF text comes from pypdf (pure
Python, per-page text). Structured readers never merge or drop rows silently: a JSONL line, CSV
record or Parquet row group that cannot be read is one ``Bad`` item with the raw text where there is one.
"""

from __future__ import annotations

import csv
import html as htmllib
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any


class Unreadable(Exception):
    """A file that cannot be turned into documents; the message is the quarantine reason."""


@dataclass
class Bad:
    """One unreadable part of a structured file (line, record, row group): reason, key and raw payload."""

    reason: str
    key: str
    payload: str | None = None
    rows: int = 1  #: input rows it stands for (a row group that cannot be decoded stands for all of its rows)


def read_regular(path: str, *, max_bytes: int) -> bytes:
    """The bytes of a regular file, opened without blocking (a pipe swapped in after discovery cannot hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise Unreadable(f"unreadable: {type(exc).__name__}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        if st.st_size > max_bytes:
            raise Unreadable(f"oversized: {st.st_size} bytes > max_file_bytes={max_bytes}")
        if st.st_size == 0:
            raise Unreadable("empty: file has 0 bytes")
        return fh.read(max_bytes + 1)


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


# --- HTML -----------------------------------------------------------------------------------------------

_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "section",
          "article", "table", "ul", "ol", "dd", "dt", "hr", "header", "footer", "td", "th"}
_SKIP = {"script", "style", "noscript", "template", "head"}


class _FlatText(HTMLParser):
    """Text of an HTML document at any nesting depth (event-based: no tree, no recursion)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skip += 1
        elif tag in _BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def flat_text(html: str) -> str:
    parser = _FlatText()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.out).split("\n"))
    return "\n".join(line for line in lines if line)


def _too_deep(html: str, *, huge: bool) -> bool:
    """Whether libxml2 (lxml, which trafilatura uses) stops at its nesting limit (255; 2048 with huge_tree)."""
    import lxml.html

    parser = lxml.html.HTMLParser(huge_tree=huge, remove_comments=True)
    try:
        lxml.html.document_fromstring(html, parser=parser)
    except ValueError:  # a str with an encoding declaration
        lxml.html.document_fromstring(html.encode("utf-8"), parser=parser)
    except Exception:  # noqa: BLE001 - trafilatura reports the parse problems that are not about depth
        return False
    return any("RESOURCE_LIMIT" in e.type_name or "Excessive depth" in e.message for e in parser.error_log)


def extract_html(html: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """(text, title, meta): meta says when the nesting was too deep for the main-content extractor."""
    import trafilatura

    kw = dict(include_comments=False, include_tables=True, favor_recall=True, deduplicate=False, with_metadata=False)
    meta = None
    if not _too_deep(html, huge=False):
        text = trafilatura.extract(html, **kw) or ""
        if not text.strip():
            text = trafilatura.html2txt(html) or ""
    else:
        text = ""
        if not _too_deep(html, huge=True):  # 256..2048 levels: parse with lxml's huge_tree, then extract
            import lxml.html

            try:
                tree = lxml.html.document_fromstring(html.encode("utf-8"),
                                                     parser=lxml.html.HTMLParser(huge_tree=True, remove_comments=True))
                text = trafilatura.extract(tree, **kw) or ""
                meta = {"html_extraction": "deep nesting: main content from a huge_tree parse"}
            except RecursionError:
                text = ""
        if not text.strip():
            text = flat_text(html)
            meta = {"html_extraction": "flat text: nesting too deep for the main-content extractor"}
    title = None
    m = re.search(r"<title[^>]*>(.*?)</title>", html, flags=re.I | re.S)
    if m:
        title = htmllib.unescape(re.sub(r"\s+", " ", m.group(1))).strip() or None
    return text.strip(), title, meta


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
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise Unreadable(f"PDF parse error: {type(exc).__name__}: {exc}") from None
    return "\n\n".join(p for p in pages if p), {"pages": len(pages)}


def md_title(text: str) -> str | None:
    m = re.search(r"^#\s+(.+)$", text, flags=re.M)
    return m.group(1).strip() if m else None


# --- structured formats ------------------------------------------------------------------------------------

def jsonl_records(text: str) -> Iterator[tuple[int, int, Any] | Bad]:
    """(start, end, record) per non-blank line. Lines end at '\\n' only: U+2028, U+0085 and other Unicode
    line breaks are legal inside JSON strings and never split a record."""
    offset = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        start, offset = offset, offset + len(line) + 1
        body = line[:-1] if line.endswith("\r") else line
        if not body.strip():
            continue
        try:
            record = json.loads(body)
        except json.JSONDecodeError as exc:
            yield Bad(f"malformed jsonl: line {lineno}: {exc.msg} at column {exc.colno}", str(start), body)
            continue
        except RecursionError:
            yield Bad(f"malformed jsonl: line {lineno}: nested too deeply to parse", str(start), body)
            continue
        yield start, start + len(body), record


def csv_records(text: str) -> Iterator[tuple[int, int, list[str]] | Bad]:
    """(start, end, fields) per CSV record (the first is the header), parsed strictly.

    A record with a quoting error (a quote opened and never closed, text after a closing quote) is
    one ``Bad`` item holding the record's first line; parsing restarts on the next line, so the rows
    after a stray quote are read instead of being swallowed into one field.
    """
    csv.field_size_limit(2**31 - 1)  # a long field is text, not an error (the file size is capped)
    lines = list(io.StringIO(text, newline=""))
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    i = 0
    while i < len(lines):
        pos = i

        def feed():
            nonlocal pos
            while pos < len(lines):
                pos += 1
                yield lines[pos - 1]

        reader = csv.reader(feed(), strict=True)
        while True:
            first = pos
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Bad(f"malformed csv: record at line {first + 1}: {exc} (a quote opened and not closed?)",
                          str(offsets[first]), lines[first])
                i = first + 1
                break
            if fields:
                yield offsets[first], offsets[first] + len(text[offsets[first]:offsets[pos]].rstrip("\r\n")), fields


def parquet_records(path: str, *, text_field: str, batch_rows: int) -> Iterator[tuple[int, dict[str, Any]] | Bad]:
    """(row number, record) per row; a row group (or its rest) that cannot be decoded is one ``Bad`` item."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise Unreadable(f"malformed parquet: {exc}") from None
    if text_field not in pf.schema_arrow.names:
        raise Unreadable(f"missing field: parquet has no column '{text_field}' "
                         f"(columns: {', '.join(pf.schema_arrow.names)}); set text_field in the ingest config")
    row = 0
    for g in range(pf.num_row_groups):
        end = row + pf.metadata.row_group(g).num_rows
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[g]):
                try:
                    records: list = batch.to_pylist()
                except (pa.ArrowException, UnicodeDecodeError, ValueError):  # find the bad rows one by one
                    records = []
                    for k in range(batch.num_rows):
                        try:
                            records.extend(batch.slice(k, 1).to_pylist())
                        except (pa.ArrowException, UnicodeDecodeError, ValueError) as exc:
                            records.append(Bad(f"malformed parquet: row {row + k}: {type(exc).__name__}: {exc}",
                                               f"row{row + k}"))
                for record in records:
                    yield record if isinstance(record, Bad) else (row, record)
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            yield Bad(f"malformed parquet: row group {g}: rows {row}-{end - 1} cannot be decoded "
                      f"({type(exc).__name__}: {exc})", f"rg{g}", rows=end - row)
            row = end
