"""Debian's PostgreSQL 15 HTML manual -> Markdown that keeps the manual's structure.

Why this exists: `ingest` extracts HTML with trafilatura, which drops the DocBook headings
(Synopsis / Description / Parameters ...) and splits each <dl> entry into two bullets, so the
built-in extractive teacher finds almost nothing to ask about (measured on all 1,173 pages of
postgresql-doc-15: 161 examples, most with malformed questions). This converter keeps headings
(`#`), parameter lists (`- **TERM**: text`, the extractive teacher's definition lines), bullet
and numbered lists, and code blocks (fenced), and writes one `.md` file per page.

Corpus rule (no cherry-picking): every page of the SQL command reference, i.e. every file
matching `sql-*.html` (189 pages in postgresql-doc-15 15.x), converted in sorted order.

    python bench/gemma/pg_html_to_md.py [/usr/share/doc/postgresql-doc-15/html] [workspace/corpora/postgres-sql-md]
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from lxml import html as lxml_html

SKIP_CLASSES = {"navheader", "navfooter", "toc"}


def _text(el) -> str:
    return re.sub(r"\s+", " ", el.text_content()).strip()


def _classes(el) -> set[str]:
    return set((el.get("class") or "").split())


def convert(el, out: list[str]) -> None:
    """Append Markdown blocks for ``el``'s children to ``out``."""
    for child in el:
        if not isinstance(child.tag, str):
            continue
        tag = child.tag.lower()
        if _classes(child) & SKIP_CLASSES or tag in {"script", "style", "head"}:
            continue
        if tag in {"h1", "h2", "h3", "h4", "h5"}:
            text = _text(child)
            if text:
                out.append("#" * int(tag[1]) + " " + text)
        elif tag == "p":
            text = _text(child)
            if text:
                out.append(text)
        elif tag == "pre":
            code = (child.text_content() or "").strip("\n")
            if code.strip():
                out.append("```\n" + code + "\n```")
        elif tag == "dl":
            items, term = [], None
            for item in child:
                if not isinstance(item.tag, str):
                    continue
                if item.tag.lower() == "dt":  # several <span class="term"> (e.g. WORK / TRANSACTION) -> "WORK, TRANSACTION"
                    terms = [_text(t) for t in item.findall(".//span[@class='term']")]
                    term = ", ".join(t for t in terms if t) or _text(item)
                elif item.tag.lower() == "dd" and term:
                    body = _text(item)
                    items.append(f"- **{term}**: {body}" if body else f"- {term}")
                    term = None
            if items:
                out.append("\n".join(items))
        elif tag in {"ul", "ol"}:
            lines = [(f"{i}. " if tag == "ol" else "- ") + _text(li)
                     for i, li in enumerate((c for c in child if isinstance(c.tag, str) and c.tag.lower() == "li"), 1)]
            lines = [ln for ln in lines if ln.strip(" -.0123456789")]
            if lines:
                out.append("\n".join(lines))
        elif tag == "table":
            rows = [" | ".join(_text(c) for c in tr if isinstance(c.tag, str)) for tr in child.iter("tr")]
            rows = [r for r in rows if r.strip(" |")]
            if rows:
                out.append("\n".join(rows))
        else:  # div, section, span wrappers: descend
            convert(child, out)


def page_to_markdown(path: Path) -> str:
    doc = lxml_html.fromstring(path.read_bytes())
    body = doc.find("body")
    blocks: list[str] = []
    convert(body if body is not None else doc, blocks)
    return "\n\n".join(blocks).strip() + "\n"


def main(src: str = "/usr/share/doc/postgresql-doc-15/html", dst: str = "workspace/corpora/postgres-sql-md") -> int:
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    pages = sorted(Path(src).glob("sql-*.html"))
    for page in pages:
        target = out / (page.stem + ".md")
        target.write_text(page_to_markdown(page), encoding="utf-8")
        st = page.stat()  # the page's own times: re-converting keeps ingest's fingerprint (size + mtime) stable
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"{len(pages)} pages -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
