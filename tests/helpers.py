"""Small real inputs for tests: a mixed-format corpus with junk, and a minimal PDF writer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LOREM = (
    "The tracking service stores every shipment event in the events table and publishes it to the "
    "webhook queue. When the queue grows beyond the alert threshold, the on-call engineer checks the "
    "worker pool, scales it up with the deploy tool and confirms that the backlog drains within an hour. "
)


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF 1.4 with one Helvetica text block per page (pypdf extracts it)."""
    objs: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        lines = [text[j : j + 80] for j in range(0, len(text), 80)] or [""]
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
        for line in lines:
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({esc}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objs.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for k, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{k} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def long_text(topic: str, n: int = 3) -> str:
    return f"{topic}. " + " ".join(LOREM for _ in range(n))


def make_corpus(root: Path) -> dict[str, str]:
    """Write a mixed corpus under root; returns {relative path: what it is}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir()
    (root / "junk").mkdir()
    (root / "docs/runbook.md").write_text("# Scaling workers\n\n" + long_text("Scaling the tracking workers"))
    (root / "docs/copy-of-runbook.md").write_text("# Scaling workers\n\n" + long_text("Scaling the tracking workers"))
    (root / "docs/notes.txt").write_text(long_text("Release notes for version two") + "\n---\n" + long_text("Second note"))
    (root / "docs/policy.html").write_text(
        "<html><head><title>Retention policy</title></head><body><nav>Home | About</nav><article>"
        "<h1>Data retention</h1><p>" + long_text("We keep shipment events for 400 days") + "</p></article>"
        "<footer>Copyright Kestrel</footer></body></html>"
    )
    with open(root / "docs/tickets.jsonl", "w") as fh:
        fh.write(json.dumps({"ticket_id": "KF-1", "text": long_text("Webhook retries"), "status": "open"}) + "\n")
        fh.write('{"ticket_id": "KF-2", "text": broken json\n')
        fh.write(json.dumps({"ticket_id": "KF-3", "body": "no text field here"}) + "\n")
        fh.write(json.dumps({"ticket_id": "KF-4", "text": long_text("Driver login fails")}) + "\n")
    (root / "docs/faq.csv").write_text(
        'question,text\n"How do I rotate keys?","' + long_text("Rotate keys, then redeploy") + '"\n'
        '"Bad row","a","b"\n'
    )
    pq.write_table(pa.table({"text": [long_text("Parquet article one"), long_text("Parquet article two")],
                             "title": ["One", "Two"]}), root / "docs/kb.parquet")
    (root / "docs/guide.pdf").write_bytes(minimal_pdf([long_text("Driver app quick start"), "Page two of the guide."]))
    (root / "junk/empty.txt").write_bytes(b"")
    (root / "junk/blank.md").write_text("   \n\n  \n")
    (root / "junk/latin1.txt").write_bytes("Caf\xe9 cr\xe8me notes".encode("latin-1"))
    (root / "junk/binary.txt").write_bytes(b"abc\x00\x01\x02def")
    (root / "junk/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "junk/corrupt.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (root / "junk/big.txt").write_text("x" * 20000)
    return {}
