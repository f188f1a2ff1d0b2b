import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.core.conftest import ROOT, cli

HEAVY = ("torch", "spacy", "presidio_analyzer", "transformers", "distilabel", "argilla", "pyarrow", "polars")


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t=time.perf_counter(); sys.argv=['slmforge','--help']\n"
        "import slmforge.cli as c\n"
        "try:\n    c.app()\nexcept SystemExit:\n    pass\n"
        f"heavy=[m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy); print('SECONDS', time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout
    assert "HEAVY []" in out
    for cmd in ("run", "ingest", "filter", "dedup", "trace", "stats"):
        assert cmd in out
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slmforge", "--help"], capture_output=True, cwd=ROOT, check=True)
    assert time.perf_counter() - started < 5  # generous bound; measured ~0.2 s (see README)


@pytest.mark.parametrize("ids", [[10, 11, 12, 13, 14], ["a", "b", "c", "d", "e"]])
def test_dedup_exact_on_any_parquet_with_id_and_text(tmp_path, ids):
    texts = ["Hello world", "hello   WORLD", "something else", "Hello world", "another"]
    pq.write_table(pa.table({"id": ids, "text": texts, "extra": [1, 2, 3, 4, 5]}), tmp_path / "docs.parquet")
    cli("dedup", "--exact", "--input", str(tmp_path / "docs.parquet"), "--output", str(tmp_path / "out.parquet"))
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["id", "cluster_id"]
    assert out.schema.field("cluster_id").type == out.schema.field("id").type
    rows = dict(zip(out.column("id").to_pylist(), out.column("cluster_id").to_pylist()))
    assert rows[ids[0]] == rows[ids[1]] == rows[ids[3]] == ids[0]
    assert rows[ids[2]] == ids[2] and rows[ids[4]] == ids[4]


def test_dedup_exact_names_missing_columns(tmp_path):
    pq.write_table(pa.table({"doc": [1], "body": ["x"]}), tmp_path / "bad.parquet")
    proc = cli("dedup", "--exact", "--input", str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "o.parquet"),
               check=False)
    assert proc.returncode == 2 and "id, text" in proc.stderr


def test_ingest_and_filter_commands(corpus, tmp_path):
    cli("ingest", str(corpus), "--output", str(tmp_path / "docs.parquet"))
    docs = pq.read_table(tmp_path / "docs.parquet")
    quar = pq.read_table(tmp_path / "docs.quarantine.parquet")
    assert docs.num_rows >= 8 and quar.num_rows >= 8
    cli("filter", "--input", str(tmp_path / "docs.parquet"), "--output", str(tmp_path / "kept.parquet"),
        "--set", "min_words=60", "--set", "min_line_punct_ratio=null", "--set", "max_short_line_ratio=null",
        *[x for k in ("max_dup_5gram_frac", "max_dup_10gram_frac", "max_top_2gram_frac", "max_top_3gram_frac",
                      "max_top_4gram_frac", "max_dup_line_frac", "max_dup_para_frac", "max_dup_line_char_frac")
          for x in ("--set", f"{k}=null")])
    kept = pq.read_table(tmp_path / "kept.parquet")
    dec = pq.read_table(tmp_path / "kept.decisions.parquet")
    assert 0 < kept.num_rows < docs.num_rows and "q_n_words" in kept.column_names
    assert dec.num_rows == docs.num_rows
    assert "min_words" in dec.column("reason").to_pylist()
    bad = cli("filter", "--input", str(tmp_path / "docs.parquet"), "--output", str(tmp_path / "k2.parquet"),
              "--set", "min_wordz=3", check=False)
    assert bad.returncode == 2 and "min_wordz" in bad.stderr
