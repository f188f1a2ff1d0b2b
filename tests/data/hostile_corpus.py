"""A hostile-input corpus for ingest: links out of the input folder, link loops, a pipe, a file name that is
not UTF-8, a CSV with an unclosed quote, JSONL with Unicode line separators inside strings, HTML nested
thousands of levels deep, a Parquet file with a corrupt row group, and the usual junk.

``make_hostile_corpus(root)`` writes it under ``root/hostile`` (and a secret next to it, outside the
input folder) and returns what an ingest must account for: source URI -> number of input units (rows
of a structured file, else 1) and the outcome expected for each. Write one to look at with
``python -m tests.data.hostile_corpus OUT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("The depot scanner sends each parcel event to the tracking queue, and the night shift checks that "
         "the backlog drains before the morning trucks leave the yard. ")


def _corrupt_row_group(path: Path, group: int) -> None:
    """Flip bytes in the first page header of one row group (pyarrow then fails on that group only)."""
    col = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start, start + 8):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def make_hostile_corpus(base: Path) -> dict[str, tuple[int, str]]:
    """Write the corpus; return {source uri: (input units, expected outcome: 'keep'|'quarantine'|'mixed')}."""
    root = base / "hostile"
    for d in ("ok", "links", "special", "structured", "html"):
        (root / d).mkdir(parents=True, exist_ok=True)
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("password=hunter2 " + WORDS)
    exp: dict[str, tuple[int, str]] = {}

    def want(rel: str, units: int, outcome: str) -> None:
        exp[f"hostile/{rel}"] = (units, outcome)

    (root / "ok/readme.md").write_text("# Depot scanners\n\n" + WORDS * 3)
    (root / "ok/notes.txt").write_text(WORDS * 2)
    want("ok/readme.md", 1, "keep")
    want("ok/notes.txt", 1, "keep")

    # links: out of the input folder (file and folder), inside it (file and folder), loops, broken
    os.symlink(outside / "secret.txt", root / "links/secret.txt")
    os.symlink(outside, root / "links/outside-dir")
    os.symlink("../ok/readme.md", root / "links/inside.md")
    os.symlink("../ok", root / "links/inside-dir")
    os.symlink(".", root / "links/loop")
    os.symlink("self-loop.txt", root / "links/self-loop.txt")
    os.symlink("does-not-exist.txt", root / "links/broken.txt")
    want("links/secret.txt", 1, "quarantine")
    want("links/outside-dir", 1, "quarantine")
    want("links/inside.md", 1, "keep")
    want("links/inside-dir/readme.md", 1, "keep")
    want("links/inside-dir/notes.txt", 1, "keep")
    want("links/loop", 1, "quarantine")
    want("links/self-loop.txt", 1, "quarantine")
    want("links/broken.txt", 1, "quarantine")

    # a file name that is not UTF-8, a named pipe (reading it would hang), junk
    with open(os.path.join(os.fsencode(root / "special"), b"caf\xe9-menu.txt"), "wb") as fh:
        fh.write(WORDS.encode())
    want("special/caf\\xe9-menu.txt", 1, "quarantine")
    os.mkfifo(root / "special/pipe.txt")
    want("special/pipe.txt", 1, "quarantine")
    (root / "special/empty.txt").write_bytes(b"")
    (root / "special/binary.txt").write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    (root / "special/latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "special/image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    for name in ("empty.txt", "binary.txt", "latin1.txt", "image.png"):
        want(f"special/{name}", 1, "quarantine")

    # CSV: row 2 opens a quote that never closes; rows 1, 3 and 4 must still be read
    (root / "structured/faq.csv").write_text(
        "question,text\n"
        f'"Q1","{WORDS}"\n'
        f'"Q2","{WORDS} and this answer never closes its quote\n'
        f'"Q3","{WORDS}third"\n'
        f'"Q4","{WORDS}fourth"\n')
    want("structured/faq.csv", 4, "mixed")
    # JSONL: U+2028, U+0085 and U+2029 inside strings are legal JSON; a broken line; a lone surrogate; deep nesting
    lines = [json.dumps({"text": WORDS + "line\u2028separator"}, ensure_ascii=False),
             json.dumps({"text": WORDS + "next\u0085line", "tag": "p\u2029q"}, ensure_ascii=False),
             '{"text": "broken',
             '{"text": "lone surrogate \\ud800 here"}',
             "[" * 100_000 + "]" * 100_000,
             json.dumps({"text": WORDS})]
    (root / "structured/events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    want("structured/events.jsonl", len(lines), "mixed")
    # Parquet: 3 row groups of 40 rows, the middle one corrupt
    path = root / "structured/articles.parquet"
    pq.write_table(pa.table({"text": [f"article {i}. {WORDS}" for i in range(120)]}), path, row_group_size=40)
    _corrupt_row_group(path, 1)
    want("structured/articles.parquet", 120, "mixed")

    # HTML: text only inside a nest deeper than libxml2's limits (255 and 2048 levels)
    for depth in (300, 5000):
        (root / f"html/deep-{depth}.html").write_text(
            "<html><head><title>Deep</title></head><body>" + "<div>" * depth
            + f"<p>{WORDS} Nested {depth} levels deep.</p>" + "</div>" * depth + "</body></html>")
        want(f"html/deep-{depth}.html", 1, "keep")
    return exp


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    expected = make_hostile_corpus(out)
    print(json.dumps({k: list(v) for k, v in expected.items()}, indent=1))
