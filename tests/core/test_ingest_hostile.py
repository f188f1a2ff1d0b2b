"""Ingest under hostile input: every file, line, record and row group is kept or quarantined with its
reason, nothing outside the input folders is read, and nothing aborts the run (issue 19)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.config import IngestConfig
from curation.ingest import IngestStage, discover, ingest_paths
from schemas.config import Recipe
from schemas.errors import ConfigError
from slmforge.runner import run_recipe
from tests.data.hostile_corpus import WORDS, make_hostile_corpus


def _run(tmp_path: Path, paths: list[str], **kw) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Run a one-step recipe through the real runner; (documents, decisions, quarantine, stats)."""
    ws = tmp_path / "ws"
    recipe = Recipe(workspace=ws, workers=1, stages=[IngestConfig(paths=paths, shard_bytes=1_000, **kw)])
    stats = run_recipe(recipe)[0]
    out = next((ws / "ingest").iterdir())
    docs = [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return (docs, pq.read_table(out / "decisions.parquet").to_pylist(),
            pq.read_table(out / "quarantine.parquet").to_pylist(), stats)


def test_hostile_corpus_every_input_unit_is_accounted_for(tmp_path):
    expected = make_hostile_corpus(tmp_path)
    docs, dec, quar, stats = _run(tmp_path, [str(tmp_path / "hostile")])
    units: Counter = Counter()
    outcomes: dict[str, set] = {}
    for d in dec:
        src = json.loads(d["detail"])["source"]
        units[src] += json.loads(d["detail"]).get("rows", 1) if d["action"] == "quarantine" else 1
        outcomes.setdefault(src, set()).add(d["action"])
    # every input file has decisions, and kept + quarantined = its rows (or 1 for a whole file)
    assert set(units) == set(expected)
    assert {s: units[s] for s in expected} == {s: n for s, (n, _) in expected.items()}
    assert sum(units.values()) == sum(n for n, _ in expected.values()) == 148
    for src, (_, outcome) in expected.items():
        want = {"keep": {"keep"}, "quarantine": {"quarantine"}, "mixed": {"keep", "quarantine"}}[outcome]
        assert outcomes[src] == want, src
    assert len(docs) == stats["rows_out"] == sum(1 for d in dec if d["action"] == "keep")
    assert len(quar) == stats["quarantined"] == sum(1 for d in dec if d["action"] == "quarantine")
    # nothing from outside the input folder was read
    assert not any("hunter2" in d["text"] for d in docs)
    assert not any(d["source"].startswith("hostile/links/outside-dir/") for d in docs)


def test_symlinks_leaving_the_input_are_quarantined_unless_allowed(tmp_path):
    make_hostile_corpus(tmp_path)
    reasons = {q["source"]: q["reason"] for q in _run(tmp_path, [str(tmp_path / "hostile")])[2]}
    assert reasons["hostile/links/secret.txt"].startswith("symlink leaves the input folders")
    assert str(tmp_path / "outside" / "secret.txt") in reasons["hostile/links/secret.txt"]
    assert "follow_symlinks: true" in reasons["hostile/links/outside-dir"]
    assert reasons["hostile/links/loop"].startswith("symlink loop")
    assert reasons["hostile/links/self-loop.txt"].startswith("symlink loop")
    assert reasons["hostile/links/broken.txt"].startswith("broken symlink")
    assert reasons["hostile/special/pipe.txt"].startswith("not a regular file")
    assert reasons["hostile/special/caf\\xe9-menu.txt"].startswith("file name is not valid UTF-8")
    # with follow_symlinks the owner opts in: the linked file and folder are read
    allowed = ingest_paths([str(tmp_path / "hostile")], follow_symlinks=True)
    sources = set(allowed.column("source").to_pylist())
    assert {"hostile/links/secret.txt", "hostile/links/outside-dir/secret.txt"} <= sources


def test_glob_does_not_follow_links_out_of_the_input(tmp_path):
    make_hostile_corpus(tmp_path)
    entries = {e.uri: e.problem for e in discover([str(tmp_path / "hostile" / "links" / "*.txt")])}
    assert entries["links/secret.txt"].startswith("symlink leaves the input folders")
    assert entries["links/broken.txt"].startswith("broken symlink")
    deep = {e.uri for e in discover([str(tmp_path / "hostile" / "**" / "*.md")])}
    assert {"hostile/ok/readme.md", "hostile/links/inside.md", "hostile/links/inside-dir/readme.md"} <= deep


def test_same_named_input_folders_keep_every_file(tmp_path):
    """a/docs and b/docs used to share the source id 'docs/x.txt': b's files vanished without a row."""
    for side in ("a", "b"):
        (tmp_path / side / "docs").mkdir(parents=True)
        (tmp_path / side / "docs" / "x.txt").write_text(f"{side} side. {WORDS}")
    docs = ingest_paths([str(tmp_path / "a" / "docs"), str(tmp_path / "b" / "docs")])
    assert sorted(docs.column("source").to_pylist()) == ["a/docs/x.txt", "b/docs/x.txt"]
    # one folder alone keeps its plain name (ids of existing corpora are unchanged)
    assert ingest_paths([str(tmp_path / "a" / "docs")]).column("source").to_pylist() == ["docs/x.txt"]
    # a folder listed twice, or a file inside a listed folder, is read once
    assert ingest_paths([str(tmp_path / "a" / "docs"), str(tmp_path / "a" / "docs" / "x.txt")]).num_rows == 1


def test_two_files_with_one_source_id_are_an_error(tmp_path):
    (tmp_path / "x" / "a" / "docs").mkdir(parents=True)
    (tmp_path / "y" / "b" / "docs").mkdir(parents=True)
    (tmp_path / "z" / "a" / "docs").mkdir(parents=True)
    for f in (tmp_path / "x/a/docs/f.txt", tmp_path / "y/b/docs/f.txt", tmp_path / "z/a/docs/f.txt"):
        f.write_text(WORDS)
    # x/a/docs -> 'a/docs', y/b/docs -> 'docs', z/a -> 'a': z/a/docs/f.txt would be 'a/docs/f.txt' too
    with pytest.raises(ConfigError, match="same source id 'a/docs/f.txt'"):
        discover([str(tmp_path / "x/a/docs"), str(tmp_path / "y/b/docs"), str(tmp_path / "z/a")])


def test_csv_unclosed_quote_is_quarantined_and_later_rows_survive(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "faq.csv").write_text(
        'question,text\n"Q1","first answer"\n"Q2","never closed\n"Q3","third answer"\nQ4,"fourth, at the end\n')
    stage = IngestStage(IngestConfig(paths=[str(tmp_path / "c")]))
    from schemas.stage import StageContext

    ctx = StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="ingest")
    res = [r for spec in stage.plan(ctx) for r in stage.read(spec, ctx)]
    texts = [t for r in res for t in r.table.column("text").to_pylist()]
    quar = [q for r in res for q in r.quarantine.to_pylist()]
    assert texts == ["first answer", "third answer"]  # before: one document 'never closed\n"Q3",...'
    assert [q["payload"] for q in quar] == ['"Q2","never closed\n', 'Q4,"fourth, at the end\n']
    assert all(q["reason"].startswith("malformed csv: record at line") for q in quar)


def test_jsonl_splits_on_newlines_only(tmp_path):
    (tmp_path / "j").mkdir()
    recs = [{"text": "one\u2028two"}, {"text": "three\u0085four\u2029five\x1c\x1d\x1e six"}, {"text": "seven\r"}]
    (tmp_path / "j" / "a.jsonl").write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in recs),
                                            encoding="utf-8")
    docs = ingest_paths([str(tmp_path / "j")])
    assert docs.column("text").to_pylist() == [r["text"] for r in recs]
    raw = (tmp_path / "j" / "a.jsonl").read_bytes().decode("utf-8")
    for row in docs.to_pylist():
        assert json.loads(raw[row["span_start"]:row["span_end"]])["text"] == row["text"]


def test_deeply_nested_html_keeps_its_text(tmp_path):
    (tmp_path / "h").mkdir()
    for depth in (10, 300, 3000):
        (tmp_path / "h" / f"d{depth}.html").write_text(
            "<html><body><p>Intro words here.</p>" + "<section>" * depth + f"<p>Deep text {depth}.</p>"
            + "</section>" * depth + "<p>Tail words.</p><script>var x = 1;</script></body></html>")
    docs = {r["source"]: r for r in ingest_paths([str(tmp_path / "h")]).to_pylist()}
    for depth in (10, 300, 3000):
        text = docs[f"h/d{depth}.html"]["text"]
        assert f"Deep text {depth}." in text and "Intro words" in text and "Tail words" in text, depth
        assert "var x" not in text
    assert docs["h/d10.html"]["meta"] is None  # ordinary pages take the unchanged path
    assert "flat text" in json.loads(docs["h/d3000.html"]["meta"])["html_extraction"]


def test_corrupt_parquet_row_group_is_quarantined_and_the_shard_goes_on(tmp_path):
    make_hostile_corpus(tmp_path)
    (tmp_path / "p").mkdir()
    os.replace(tmp_path / "hostile/structured/articles.parquet", tmp_path / "p/articles.parquet")
    (tmp_path / "p" / "after.txt").write_text(WORDS)  # same shard, read after the damaged file
    docs, dec, quar, _ = _run(tmp_path, [str(tmp_path / "p")])
    assert len([d for d in docs if d["format"] == "parquet"]) == 80
    assert any(d["source"] == "p/after.txt" for d in docs)
    (q,) = quar
    assert q["reason"].startswith("malformed parquet: row group 1: rows 40-79")
