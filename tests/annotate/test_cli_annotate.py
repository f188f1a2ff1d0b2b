"""`slmforge annotate push/pull` run the annotate / annotate_merge stages through the runner's one step path
(issue 21): the same rows, decisions, errors and exit codes as a recipe; every row counted. Against the real
embedded Argilla server where a server is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.annotate.test_review_loop import _answer
from tests.core.conftest import cli

EXIT_ERROR = 2
DOCS = [
    "The invoice total is wrong because the billing run started before midnight and missed two orders.",
    "Payment terms are net thirty days from the date of the invoice unless the contract says otherwise.",
    "The backup job copies the database to the second disk every night at two and keeps seven copies.",
    "Reviewers should check that every paragraph names the system it describes and the owner of it.",
    "A short note about the office plants, which need water on Mondays and Thursdays before noon.",
]
PUSH = {"rules": [{"queue": "cli-loop", "select": "above", "column": "q_n_words", "threshold": 0}],
        "metadata_columns": ["source"]}


@pytest.fixture
def argilla_env(embedded, monkeypatch):
    emb, info = embedded
    monkeypatch.setenv("ARGILLA_API_URL", emb.url)
    monkeypatch.setenv("ARGILLA_API_KEY", info["api_key"])
    return emb, info


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def _decisions(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["id"])


def _step(ws: Path, stats: dict) -> Path:
    return ws / stats["step"] / stats["fingerprint"]


@pytest.mark.argilla
def test_push_and_pull_via_cli_give_the_recipes_rows_and_decisions(argilla_env, client, tmp_path):
    import argilla as rg

    from slmforge.runner import run_recipe
    from slmforge.stages import recipe_from_dict

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(DOCS):
        (corpus / f"doc{i}.txt").write_text(text + "\n")
    recipe = recipe_from_dict({"workspace": str(tmp_path / "ws"), "stages": [
        {"stage": "ingest", "paths": [str(corpus)]}, {"stage": "score"}, {"stage": "annotate", **PUSH},
        {"stage": "annotate_merge", "inputs": ["score"], "queues": ["cli-loop"]}]})
    first = {s["step"]: s for s in run_recipe(recipe)}
    assert first["annotate"]["queue:cli-loop"] == len(DOCS)
    score = _step(recipe.workspace, first["score"])

    # push via the CLI: the same queue, records upserted by id (no duplicates), the step folder as in a recipe
    (tmp_path / "push.yaml").write_text(yaml.safe_dump(PUSH))
    proc = cli("annotate", "push", str(score), "-c", str(tmp_path / "push.yaml"), "-o", str(tmp_path / "pushed"))
    assert "cli-loop" in proc.stdout and "records pushed" in proc.stdout
    pushed = json.loads((tmp_path / "pushed/stats.json").read_text())
    recipe_push = json.loads((_step(recipe.workspace, first["annotate"]) / "stats.json").read_text())
    assert {k: pushed[k] for k in ("rows", "routed", "quarantined", "queue:cli-loop", "stage", "kind")} == \
        {k: recipe_push[k] for k in ("rows", "routed", "quarantined", "queue:cli-loop", "stage", "kind")}
    assert json.loads((tmp_path / "pushed/queues.json").read_text()) == {"pushed": {"cli-loop": len(DOCS)}}
    assert pq.read_table(tmp_path / "pushed/quarantine.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "pushed/decisions.parquet").num_rows == 0
    records = sorted(r.id for r in client.datasets(name="cli-loop", workspace="argilla").records)
    assert len(records) == len(DOCS)

    users = [client.users(n) or rg.User(username=n, password="review-pass-123", role="annotator",
                                        client=client).create() for n in ("rev1", "rev2")]
    r_drop, r_fix, r_keep = records[:3]
    _answer(client, "cli-loop", r_drop, users[0], decision="drop")
    _answer(client, "cli-loop", r_drop, users[1], decision="drop")
    _answer(client, "cli-loop", r_fix, users[0], decision="keep", correction="A corrected paragraph.", rating=4)
    _answer(client, "cli-loop", r_keep, users[1], decision="keep")
    merged = {s["step"]: s for s in run_recipe(recipe)}["annotate_merge"]
    assert not merged.get("cached")

    proc = cli("annotate", "pull", str(score), "-q", "cli-loop", "-o", str(tmp_path / "reviewed"))
    assert "merged 6 answers" in proc.stdout and "dropped:annotator_rejected: 1" in proc.stdout
    recipe_dir = _step(recipe.workspace, merged)
    assert _rows(tmp_path / "reviewed") == _rows(recipe_dir)
    assert _decisions(tmp_path / "reviewed/decisions.parquet") == _decisions(recipe_dir / "decisions.parquet")
    assert {r["id"]: r["reason"] for r in _decisions(tmp_path / "reviewed/decisions.parquet")} == {
        r_drop: "annotator_rejected", r_fix: "annotator_corrected", r_keep: "annotator_approved"}
    stats = json.loads((tmp_path / "reviewed/stats.json").read_text())
    assert {k: stats[k] for k in ("rows_in", "rows_out", "dropped", "quarantined", "counters")} == \
        {k: merged[k] for k in ("rows_in", "rows_out", "dropped", "quarantined", "counters")}
    # every input row is kept, dropped with a reason, or quarantined
    assert stats["rows_in"] == len(DOCS) == stats["rows_out"] + sum(stats["dropped"].values()) + stats["quarantined"]
    assert stats["answers"] == 6  # (record, user, question): 2 + 3 + 1
    assert stats["agreement"] == json.loads((tmp_path / "reviewed/agreement.json").read_text())
    assert stats["agreement"] == json.loads((recipe_dir / "_work/agreement.json").read_text())
    assert "cli-loop/decision" in stats["agreement"]

    # a re-pull into the same folder replaces the previous output (no mix of old and new part files)
    (tmp_path / "reviewed/part-00007.parquet").write_bytes((tmp_path / "reviewed/part-00000.parquet").read_bytes())
    cli("annotate", "pull", str(score), "-q", "cli-loop", "-o", str(tmp_path / "reviewed"))
    assert _rows(tmp_path / "reviewed") == _rows(recipe_dir)


@pytest.mark.argilla
def test_push_quarantines_rows_without_an_id_and_counts_every_row(argilla_env, client, tmp_path):
    table = pa.table({"id": ["k1", None, "k2", "k3", None], "text": ["a b c", "no id", "d e", "f", "no id either"],
                      "q": [0.9, 0.9, 0.1, 0.8, 0.2]})
    pq.write_table(table.slice(0, 3), tmp_path / "a.parquet")
    pq.write_table(table.slice(3), tmp_path / "b.parquet")
    rules = '[{queue: cli-noid, select: above, column: q, threshold: 0.5}]'
    proc = cli("annotate", "push", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--set",
               f"rules={rules}", "-o", str(tmp_path / "out"))
    assert "2 rows without an id quarantined" in proc.stdout
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    quarantined = pq.read_table(tmp_path / "out/quarantine.parquet").to_pylist()
    assert [(q["reason"], json.loads(q["payload"])["text"]) for q in quarantined] == [
        ("annotate_no_id", "no id"), ("annotate_no_id", "no id either")]
    assert stats["rows"] == 5 and stats["quarantined"] == 2 and stats["queue:cli-noid"] == 2
    assert sorted(r.id for r in client.datasets(name="cli-noid", workspace="argilla").records) == ["k1", "k3"]
    # the three rows with an id stay in the data (pushed or not routed); nothing is dropped by a push
    assert stats["rows"] - stats["quarantined"] == 3


@pytest.mark.argilla
def test_pull_of_a_queue_that_does_not_exist_is_a_clear_error(argilla_env, tmp_path):
    pq.write_table(pa.table({"id": ["x"], "text": ["y"]}), tmp_path / "rows.parquet")
    proc = cli("annotate", "pull", str(tmp_path / "rows.parquet"), "-q", "no-such-queue", "-o", str(tmp_path / "o"),
               check=False)
    assert proc.returncode == EXIT_ERROR and "['no-such-queue'] do not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not list((tmp_path / "o").glob("part-*.parquet"))


def _fails(*args: str, env: dict | None = None) -> str:
    proc = cli(*args, check=False, env=env)
    assert proc.returncode == EXIT_ERROR, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return " ".join(proc.stderr.split())


def test_bad_config_and_input_give_the_standard_exit_code_before_anything_is_pushed(tmp_path):
    no_server = {"ARGILLA_API_URL": "http://127.0.0.1:9", "ARGILLA_API_KEY": "x"}  # nothing may be contacted
    pq.write_table(pa.table({"id": ["a"], "text": ["t"], "q": [0.5]}), tmp_path / "rows.parquet")
    rows = str(tmp_path / "rows.parquet")
    out = str(tmp_path / "out")
    (tmp_path / "typo.yaml").write_text("rules: [{queue: q, select: above, column: q, threshold: 0.1}]\ntypo: 1\n")
    assert "typo" in _fails("annotate", "push", rows, "-c", str(tmp_path / "typo.yaml"), "-o", out, env=no_server)
    (tmp_path / "col.yaml").write_text("rules: [{queue: q, select: above, column: q_missing, threshold: 0.1}]\n")
    msg = _fails("annotate", "push", rows, "-c", str(tmp_path / "col.yaml"), "-o", out, env=no_server)
    assert "q_missing" in msg and "id, text, q" in msg  # names the column and the columns that exist
    (tmp_path / "merge.yaml").write_text("stage: annotate_merge\nqueues: [q]\n")
    assert "annotate_merge" in _fails("annotate", "push", rows, "-c", str(tmp_path / "merge.yaml"), "-o", out)
    assert "rules" in _fails("annotate", "push", rows, "-o", out)  # no rules at all
    assert "not found" in _fails("annotate", "push", str(tmp_path / "nope.parquet"), "--set",
                                 "rules=[{queue: q, select: above, column: q, threshold: 0.1}]", "-o", out)
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in _fails("annotate", "push", str(tmp_path / "bad.parquet"), "--set",
                                                   "rules=[{queue: q, select: above, column: q, threshold: 0.1}]",
                                                   "-o", out)
    (tmp_path / "empty").mkdir()
    assert "without part-*.parquet" in _fails("annotate", "pull", str(tmp_path / "empty"), "-q", "q", "-o", out)
    assert "queues" in _fails("annotate", "pull", rows, "-o", out)  # no queue named
    assert "'body'" in _fails("annotate", "pull", rows, "-q", "q", "--text-column", "body", "-o", out)
    pq.write_table(pa.table({"doc": ["a"], "text": ["t"]}), tmp_path / "noid.parquet")
    assert "'id'" in _fails("annotate", "pull", str(tmp_path / "noid.parquet"), "-q", "q", "-o", out)
    assert "cannot reach Argilla" in _fails("annotate", "pull", rows, "-q", "q", "-o", out, env=no_server)
    assert not list(Path(out).glob("part-*.parquet")) and not (Path(out) / "stats.json").exists()
