"""The review loop closes: the documented recipe runs as written against the real embedded server; answers
given through the argilla SDK are merged on the next run, and only what depends on them re-runs (issue 19)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.errors import SchemaError
from slmforge.runner import plan, run_recipe
from slmforge.stages import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "data/recipes/review.yaml"
DOC = ROOT / "docs/annotate.md"


def _doc_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_recipe_is_the_shipped_one_and_plans():
    assert RECIPE.read_text() in _doc_blocks(), "docs/annotate.md must show data/recipes/review.yaml verbatim"
    steps = {s.name: s for s in plan(load_recipe(RECIPE))}  # plans offline: no server needed to plan
    assert steps["annotate_merge"].inputs == ["near_dedup"]


def test_the_documented_push_config_names_real_columns():
    import yaml

    from curation.annotate.config import AnnotateConfig
    from curation.annotate.stage import AnnotateStage

    block = next(b for b in _doc_blocks() if b.startswith("# review.yaml"))
    stage = AnnotateStage(AnnotateConfig.model_validate(yaml.safe_load(block)))
    near = {s.name: s for s in plan(load_recipe(RECIPE))}["near_dedup"]
    stage.check({"near_dedup": near.out_columns})  # raises on a column no stage produces


def test_unknown_columns_fail_at_planning(tmp_path):
    text = RECIPE.read_text().replace("column: q_line_punct_ratio", "column: q_quality")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(SchemaError, match=r"rules\[0\].column -> 'q_quality'"):
        plan(load_recipe(tmp_path / "r.yaml"))
    text = RECIPE.read_text().replace("metadata_columns: [source, format]", "metadata_columns: [lang, source]")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(SchemaError, match=r"metadata_columns\[0\] -> 'lang'"):
        plan(load_recipe(tmp_path / "r.yaml"))


def test_answers_digest_follows_the_answers_not_their_order():
    from curation.annotate.merge import answers_table
    from curation.annotate.stage import answers_digest

    rows = [{"id": f"r{i}", "queue": "q", "user": u, "question": "decision", "value": '"keep"'}
            for i in range(3) for u in ("ann1", "ann2")]
    base = answers_digest(answers_table(rows))
    assert answers_digest(answers_table(rows[::-1])) == base  # the server's order does not matter
    changed = [dict(rows[0], value='"drop"'), *rows[1:]]
    assert len({base, answers_digest(answers_table(changed)), answers_digest(answers_table(rows[1:])),
                answers_digest(answers_table([]))}) == 4  # changed, withdrawn, none: each a new state


def test_merge_planned_without_a_server_fails_when_it_runs(tmp_path, monkeypatch):
    """Planning works offline; the step whose input cannot be read fails with the fix, nothing is cached."""
    from curation.annotate.config import AnnotateMergeConfig
    from curation.annotate.stage import AnnotateMergeStage
    from schemas.errors import StageError
    from schemas.stage import StageContext

    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("ARGILLA_API_KEY", "x")
    stage = AnnotateMergeStage(AnnotateMergeConfig(queues=["q"]))
    assert stage.fingerprint_extra() == {"answers": "unavailable: StageError"}
    with pytest.raises(StageError, match="cannot reach Argilla at http://127.0.0.1:9"):
        stage.prepare([], StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="annotate_merge"))


def _out(ws: Path, step: str) -> Path:
    (d,) = [p for p in (ws / step).iterdir() if (p / "_SUCCESS").exists() and p.name in _fp(ws, step)]
    return d


def _fp(ws: Path, step: str) -> str:
    return next(s["fingerprint"] for s in json.loads((ws / "_runs/latest.json").read_text())["steps"]
                if s["name"] == step)


def _rows(d: Path) -> list[dict]:
    return [r for p in sorted(d.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def _answer(client, queue: str, record_id: str, user, **values) -> None:
    import argilla as rg

    dataset = client.datasets(name=queue, workspace="argilla")
    record = next(r for r in dataset.records(with_responses=True) if r.id == record_id)
    for question, value in values.items():
        record.responses.add(rg.Response(question, value, user_id=user.id, status="submitted"))
    dataset.records.log([record])


@pytest.mark.argilla
def test_review_loop_recipe_merges_new_answers_on_rerun(embedded, client, tmp_path, monkeypatch):
    import argilla as rg

    emb, info = embedded
    monkeypatch.setenv("ARGILLA_API_URL", emb.url)
    monkeypatch.setenv("ARGILLA_API_KEY", info["api_key"])
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository, as documented
    recipe = load_recipe(RECIPE)
    recipe.workspace = tmp_path / "ws"
    ws = recipe.workspace

    first = {s["step"]: s for s in run_recipe(recipe)}
    pushed = first["annotate"]
    assert pushed["queue:borderline-quality"] == 16 and pushed["queue:repetitive"] >= 1
    assert first["annotate_merge"]["rows_in"] == first["annotate_merge"]["rows_out"] == 140  # nothing answered yet

    users = {}
    for name in ("rev1", "rev2"):
        users[name] = client.users(name) or rg.User(username=name, password="review-pass-123", role="annotator",
                                                    client=client).create()
    queue = sorted(r.id for r in client.datasets(name="borderline-quality", workspace="argilla").records)
    r_drop, r_fix, r_keep, r_later = queue[:4]
    fixed = "Corrected by a reviewer: " + "the billing run starts at 02:00 UTC and finishes before the reports job. " * 2
    fixed = fixed.strip()  # corrections are merged stripped
    _answer(client, "borderline-quality", r_drop, users["rev1"], decision="drop")
    _answer(client, "borderline-quality", r_drop, users["rev2"], decision="drop")
    _answer(client, "borderline-quality", r_fix, users["rev1"], decision="keep", correction=fixed, rating=4)
    _answer(client, "borderline-quality", r_keep, users["rev2"], decision="keep")

    second = {s["step"]: s for s in run_recipe(recipe)}
    cached = {name for name, s in second.items() if s.get("cached")}
    assert cached == {"ingest", "normalize", "score", "filter", "exact_dedup", "near_dedup", "annotate"}
    merged = {r["id"]: r for r in _rows(_out(ws, "annotate_merge"))}
    assert r_drop not in merged and len(merged) == 139
    assert merged[r_fix]["text"] == fixed and merged[r_fix]["origin"] == "annotated"
    assert merged[r_keep]["origin"] == "source"
    decisions = {r["id"]: r for r in pq.read_table(_out(ws, "annotate_merge") / "decisions.parquet").to_pylist()}
    assert (decisions[r_drop]["reason"], decisions[r_fix]["reason"], decisions[r_keep]["reason"]) == (
        "annotator_rejected", "annotator_corrected", "annotator_approved")
    chunks = _rows(_out(ws, "chunk"))
    assert r_drop not in {c["doc_id"] for c in chunks}
    assert any(c["doc_id"] == r_fix and "Corrected by a reviewer" in c["text"] for c in chunks)

    third = run_recipe(recipe)  # nothing new: everything cached
    assert all(s.get("cached") for s in third)

    _answer(client, "borderline-quality", r_later, users["rev1"], decision="drop")
    fourth = {s["step"]: s for s in run_recipe(recipe)}
    assert not fourth["annotate_merge"].get("cached") and not fourth["chunk"].get("cached")
    assert fourth["near_dedup"].get("cached")
    merged = {r["id"] for r in _rows(_out(ws, "annotate_merge"))}
    assert r_later not in merged and r_drop not in merged and len(merged) == 138

    # a queue name that matches nothing: planned as "no answers yet", then an error naming it when the step runs
    from schemas.errors import StageError

    recipe.stages[-2] = recipe.stages[-2].model_copy(update={"queues": ["borderline-quality", "borderline-qualty"]})
    with pytest.raises(StageError, match=r"\['borderline-qualty'\] do not exist"):
        run_recipe(recipe)
