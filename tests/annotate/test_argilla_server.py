"""Against the real embedded Argilla server (SQLite + our search plugin + Redis + rq worker)."""

from __future__ import annotations

import json

import httpx
import pyarrow as pa
import pytest

from curation.annotate.client import progress
from curation.annotate.merge import agreement
from curation.annotate.stage import AnnotateMergeStage, AnnotateStage
from curation.annotate.config import AnnotateConfig, AnnotateMergeConfig

pytestmark = pytest.mark.argilla


def docs() -> pa.Table:
    return pa.table({
        "id": [f"doc-{i}" for i in range(6)],
        "text": ["The invoice total is wrong", "Lorem ipsum spam spam", "Patient John called", "clean paragraph",
                 "Almost good sentense", "Payment terms are net 30"],
        "q_quality": [0.5, 0.42, 0.55, 0.95, 0.58, 0.49],
        "lang": ["en", "en", "en", "en", "de", "en"],
    })


CONFIG = AnnotateConfig(rules=[{"queue": "borderline", "select": "between", "column": "q_quality", "low": 0.4,
                                "high": 0.6}], metadata_columns=["lang"])


def _records(client, name):
    return list(client.datasets(name=name, workspace="argilla").records(with_responses=True))


def _annotator(client, username):
    import argilla as rg

    user = client.users(username)
    if user is None:
        user = rg.User(username=username, password="annot-pass-123", role="annotator", client=client).create()
        client.workspaces("argilla").add_user(user)
    return user


def _answer(emb, api_key, record_server_id, values):
    r = httpx.post(f"{emb.url}/api/v1/records/{record_server_id}/responses", headers={"X-Argilla-Api-Key": api_key},
                   json={"values": {k: {"value": v} for k, v in values.items()}, "status": "submitted"}, timeout=30)
    assert r.status_code == 201, r.text


def _api_key(emb, username):
    r = httpx.post(f"{emb.url}/api/v1/token", data={"username": username, "password": "annot-pass-123"}, timeout=30)
    assert r.status_code == 201, r.text
    token = r.json()["access_token"]
    me = httpx.get(f"{emb.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    return me["api_key"]


def test_push_answer_pull_merge_and_restart(embedded, client):
    from curation.annotate.embedded import running, start, stop

    emb, info = embedded
    stage = AnnotateStage(CONFIG)
    assert stage.push(docs(), client=client) == {"borderline": 5}
    assert stage.push(docs(), client=client) == {"borderline": 5}  # upsert by our ids
    recs = {r.id: r for r in _records(client, "borderline")}
    assert sorted(recs) == ["doc-0", "doc-1", "doc-2", "doc-4", "doc-5"]
    assert recs["doc-0"].suggestions["decision"].value == "keep"

    keys = {u: _api_key(emb, u) for u in ("ann1", "ann2") if _annotator(client, u)}
    plan = {"doc-0": ({"decision": "keep"}, {"decision": "keep"}),
            "doc-1": ({"decision": "drop"}, {"decision": "drop"}),
            "doc-4": ({"decision": "keep", "correction": "Almost good sentence", "rating": 4}, {"decision": "keep"}),
            "doc-5": ({"decision": "keep"}, {"decision": "drop"})}
    for rid, (a1, a2) in plan.items():
        _answer(emb, keys["ann1"], recs[rid]._server_id, a1)
        _answer(emb, keys["ann2"], recs[rid]._server_id, a2)

    merge_stage = AnnotateMergeStage(AnnotateMergeConfig(queues=["borderline"]))
    answers = merge_stage.pull(client=client)
    result = merge_stage.merge(docs(), answers)
    kept = {r["id"]: r for r in result.table.to_pylist()}
    assert "doc-1" not in kept and kept["doc-4"]["text"] == "Almost good sentence"
    assert kept["doc-4"]["origin"] == "annotated" and kept["doc-2"]["origin"] == "source"
    dec = {r["id"]: r for r in result.decisions.to_pylist()}
    assert dec["doc-1"]["action"] == "drop" and dec["doc-1"]["reason"] == "annotator_rejected"
    rep = agreement(answers)["borderline/decision"]
    assert rep["pairable"] == 4 and rep["kappa"]["ann1|ann2"] == pytest.approx(0.5)

    prog = {p["queue"]: p for p in progress(client, workspace="argilla")}
    assert prog["borderline"]["total"] == 5 and prog["borderline"]["completed"] == 4

    # search through the server: our SQLite plugin answers text queries, metadata filters and sorting
    ds_id = client.datasets(name="borderline", workspace="argilla").id
    body = {"query": {"text": {"q": "invoice total"}},
            "filters": {"and": [{"type": "terms", "scope": {"entity": "metadata", "metadata_property": "lang"},
                                 "values": ["en"]}]}}
    hits = httpx.post(f"{emb.url}/api/v1/me/datasets/{ds_id}/records/search", json=body, timeout=30,
                      headers={"X-Argilla-Api-Key": info["api_key"]})
    assert hits.status_code == 200, hits.text
    assert [i["record"]["external_id"] for i in hits.json()["items"]] == ["doc-0"]
    body = {"filters": {"and": [{"type": "terms", "scope": {"entity": "metadata", "metadata_property": "lang"},
                                 "values": ["en"]}]},
            "sort": [{"scope": {"entity": "record", "property": "inserted_at"}, "order": "desc"}]}
    hits = httpx.post(f"{emb.url}/api/v1/me/datasets/{ds_id}/records/search", json=body, timeout=30,
                      headers={"X-Argilla-Api-Key": info["api_key"]}).json()
    assert hits["total"] == 4 and "doc-4" not in [i["record"]["external_id"] for i in hits["items"]]

    # restart: everything persists (SQLite DB, search index, credentials)
    assert set(stop(emb)) == {"server", "worker", "redis"} and running(emb) == {}
    again = start(emb)
    assert again["api_key"] == info["api_key"] and set(again["started"]) == {"redis", "worker", "server"}
    after = merge_stage.pull(client=client)
    assert after.to_pylist() == answers.to_pylist()
    prog = {p["queue"]: p for p in progress(client, workspace="argilla")}
    assert prog["borderline"]["completed"] == 4
    json.dumps(rep)  # the report is JSON-serialisable


def test_search_plugin_suite_covers_every_method(embedded, tmp_path):
    """Runs tests/annotate/plugin_suite.py inside the server venv (where argilla_server is importable)."""
    import subprocess
    from pathlib import Path

    emb, _ = embedded
    suite = Path(__file__).with_name("plugin_suite.py")
    done = subprocess.run([str(emb.python), str(suite), str(tmp_path / "search.sqlite3")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all SearchEngine methods ok" in done.stdout
