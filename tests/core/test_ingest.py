from pathlib import Path

import pyarrow as pa
import pytest

from curation.ingest import IngestStage, discover, ingest_paths
from schemas.arrow import DOCUMENTS
from curation.config import IngestConfig
from schemas.stage import StageContext
from tests.helpers import make_corpus


def run_ingest(root: Path, **kw):
    stage = IngestStage(IngestConfig(paths=[str(root)], max_file_bytes=10000, **kw))
    ctx = StageContext(stage_dir=root, work_dir=root, step="ingest")
    results = [r for spec in stage.plan(ctx) for r in stage.read(spec, ctx)]
    docs = pa.concat_tables([r.table for r in results])
    quar = pa.concat_tables([r.quarantine for r in results])
    dec = pa.concat_tables([r.decisions for r in results])
    return docs, quar, dec


def test_every_kind_of_bad_input_is_quarantined_with_its_reason(tmp_path):
    make_corpus(tmp_path / "corpus")
    docs, quar, dec = run_ingest(tmp_path / "corpus")
    reasons = dict(zip(quar.column("source").to_pylist(), quar.column("reason").to_pylist()))
    by_file = {}
    for src, reason in reasons.items():
        by_file.setdefault(src, reason)
    assert by_file["corpus/junk/empty.txt"].startswith("empty")
    assert by_file["corpus/junk/blank.md"].startswith("empty")
    assert "not valid UTF-8" in by_file["corpus/junk/latin1.txt"]
    assert "binary content" in by_file["corpus/junk/binary.txt"]
    assert by_file["corpus/junk/logo.png"].startswith("unsupported format")
    assert "PDF" in by_file["corpus/junk/corrupt.pdf"] or by_file["corpus/junk/corrupt.pdf"].startswith("empty")
    assert by_file["corpus/junk/big.txt"].startswith("oversized")
    # row-level problems inside structured files: the rest of the file still ingests
    jsonl_reasons = [r for s, r in zip(quar.column("source").to_pylist(), quar.column("reason").to_pylist())
                     if s == "corpus/docs/tickets.jsonl"]
    assert any(r.startswith("malformed jsonl: line 2") for r in jsonl_reasons)
    assert any(r.startswith("missing field: 'text'") for r in jsonl_reasons)
    assert any("malformed csv" in r for s, r in reasons.items() if s.endswith("faq.csv")) or any(
        "malformed csv" in r for r in quar.column("reason").to_pylist())
    # the malformed line is kept verbatim in the quarantine payload (nothing lost)
    payloads = [p for p in quar.column("payload").to_pylist() if p]
    assert any("broken json" in p for p in payloads)
    # every quarantined row has a decision
    q_dec = [a for a in dec.column("action").to_pylist() if a == "quarantine"]
    assert len(q_dec) == quar.num_rows
    assert docs.schema.equals(DOCUMENTS)


def test_formats_are_extracted_and_spans_recorded(tmp_path):
    make_corpus(tmp_path / "corpus")
    docs, _, _ = run_ingest(tmp_path / "corpus", split_pattern=r"\n---\n")
    rows = docs.to_pylist()
    fmts = {r["format"] for r in rows}
    assert fmts == {"md", "txt", "html", "jsonl", "csv", "parquet", "pdf"}
    html = next(r for r in rows if r["format"] == "html")
    assert "400 days" in html["text"] and "Copyright" not in html["text"] and html["title"] == "Retention policy"
    pdf = next(r for r in rows if r["format"] == "pdf")
    assert "Driver app quick start" in pdf["text"] and '"pages": 2' in pdf["meta"]
    tickets = [r for r in rows if r["format"] == "jsonl"]
    assert len(tickets) == 2
    raw = (tmp_path / "corpus/docs/tickets.jsonl").read_text()
    for t in tickets:
        import json

        assert json.loads(raw[t["span_start"] : t["span_end"]])["text"] == t["text"]
        assert "ticket_id" in t["meta"]
    notes = [r for r in rows if r["source"].endswith("notes.txt")]
    assert len(notes) == 2
    full = (tmp_path / "corpus/docs/notes.txt").read_text()
    for n in notes:
        assert full[n["span_start"] : n["span_end"]] == n["text"]
    csv_rows = [r for r in rows if r["format"] == "csv"]
    assert len(csv_rows) == 1 and "Rotate keys" in csv_rows[0]["text"]


def test_ids_are_stable_across_reingest_and_location(tmp_path):
    make_corpus(tmp_path / "a" / "corpus")
    make_corpus(tmp_path / "b" / "corpus")
    ids_a = ingest_paths([str(tmp_path / "a" / "corpus")], max_file_bytes=10000).column("id").to_pylist()
    ids_a2 = ingest_paths([str(tmp_path / "a" / "corpus")], max_file_bytes=10000).column("id").to_pylist()
    ids_b = ingest_paths([str(tmp_path / "b" / "corpus")], max_file_bytes=10000).column("id").to_pylist()
    assert ids_a == ids_a2 == ids_b
    assert len(set(ids_a)) == len(ids_a)


def test_glob_inputs_and_missing_path(tmp_path):
    make_corpus(tmp_path / "corpus")
    files = discover([str(tmp_path / "corpus" / "docs" / "*.md")])
    assert [e.uri for e in files] == ["docs/copy-of-runbook.md", "docs/runbook.md"]
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        discover([str(tmp_path / "nope")])


def test_large_jsonl_streams_in_bounded_batches(tmp_path):
    import json

    root = tmp_path / "big"
    root.mkdir()
    with open(root / "many.jsonl", "w") as fh:
        for i in range(2500):
            fh.write(json.dumps({"text": f"document number {i} " * 5}) + "\n")
    stage = IngestStage(IngestConfig(paths=[str(root)], batch_rows=500))
    ctx = StageContext(stage_dir=root, work_dir=root, step="ingest")
    sizes = [r.table.num_rows for spec in stage.plan(ctx) for r in stage.read(spec, ctx)]
    assert max(sizes) <= 500 and sum(sizes) == 2500
