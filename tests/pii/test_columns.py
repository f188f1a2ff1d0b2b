"""Issue 19: PII in title, meta (nested) and source must not survive the stage; residual scan counted."""

import json

import pyarrow as pa
import pytest

from curation.pii.config import PiiConfig
from schemas.errors import ConfigError
from schemas.stage import StageContext

LEAKS = ["ann.lee@corp-mail.com", "(415) 555-0132", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE", "Maria Lopez",
         "hunter2-Secret!"]


def _docs() -> pa.Table:
    meta = {"author": "Maria Lopez", "contact": {"email": "ann.lee@corp-mail.com", "phones": ["(415) 555-0132"]},
            "password": "hunter2-Secret!", "pages": 3, "lang": "en", "build": "2.14.3"}
    return pa.table({
        "id": ["d1", "d2", "d3"],
        "text": pa.array(["Card 4111 1111 1111 1111 on file.", "port 8080 version 2.1.0", "nothing here"],
                         type=pa.large_string()),
        "source": ["inbox/ann.lee@corp-mail.com/notes.txt", "repo/src/main.go", "inbox/ann.lee@corp-mail.com/notes.txt"],
        "format": ["txt", "txt", "txt"],
        "content_hash": ["h1", "h2", "h3"],
        "title": ["Call (415) 555-0132 re key AKIAIOSFODNN7EXAMPLE", "Release notes 2.1.0", None],
        "meta": [json.dumps(meta), json.dumps({"pages": 2, "build": "2.1.0"}), "not json: ann.lee@corp-mail.com"],
        "tags": pa.array([[{"name": "owner", "value": "Maria Lopez"}], [], None],
                         type=pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))),
    })


def _run(cfg, tmp_path):
    from curation.pii.stage import PiiStage

    stage = PiiStage(cfg)
    stage.load()
    return stage.process(_docs(), StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="pii"))


def test_every_text_column_is_scrubbed_by_default(tmp_path, ner_config):
    res = _run(ner_config, tmp_path)
    out = res.table
    dump = json.dumps(out.to_pylist())
    for value in LEAKS:
        assert value not in dump, f"{value!r} leaked: {dump}"
    rows = out.to_pylist()
    meta = json.loads(rows[0]["meta"])
    assert meta["pages"] == 3 and meta["lang"] == "en" and meta["build"] == "2.14.3"  # non-PII kept, JSON valid
    assert meta["contact"]["email"] == "<EMAIL_ADDRESS>" and meta["password"] == "<PASSWORD>"
    assert rows[1]["meta"] == json.dumps({"pages": 2, "build": "2.1.0"})  # untouched rows: byte for byte
    assert rows[1]["title"] == "Release notes 2.1.0" and rows[1]["source"] == "repo/src/main.go"
    assert rows[2]["meta"] == "not json: <EMAIL_ADDRESS>"
    assert rows[0]["tags"] == [{"name": "owner", "value": "<PERSON>"}]
    # one source -> one scrubbed source (lineage stays grouped); the file name part survives
    assert rows[0]["source"] == rows[2]["source"] and rows[0]["source"].startswith("inbox/<EMAIL_ADDRESS_")
    assert rows[0]["source"].endswith("/notes.txt")
    assert [r["id"] for r in rows] == ["d1", "d2", "d3"] and out.schema == _docs().schema
    dec = {d["id"]: d for d in res.decisions.to_pylist()}
    assert set(dec) == {"d1", "d3"} and all(d["action"] == "modify" for d in dec.values())
    detail = json.loads(dec["d1"]["detail"])
    assert {"title", "meta", "source", "tags"} <= set(detail["columns"])
    assert "Maria" not in dec["d1"]["detail"] and "corp-mail" not in dec["d1"]["detail"]
    assert res.counters["modified:meta"] == 2 and res.counters["modified:title"] == 1


def test_distinct_sources_stay_distinct(ner_config):
    from curation.pii.columns import scrub_table

    t = pa.table({"id": ["a", "b"], "text": ["x", "y"],
                  "source": ["mail/ann.lee@corp-mail.com.txt", "mail/bob.roe@corp-mail.com.txt"]})
    out, _ = scrub_table(t, ner_config)
    a, b = out.column("source").to_pylist()
    assert a != b and "corp-mail" not in a + b


def test_configured_columns_only_and_unknown_column_is_error(tmp_path, ner_config):
    res = _run(ner_config.model_copy(update={"columns": ["text", "title"]}), tmp_path)
    row = res.table.to_pylist()[0]
    assert "AKIAIOSFODNN7EXAMPLE" not in row["title"] and "Maria Lopez" in row["meta"]
    with pytest.raises(ConfigError, match="nope"):
        _run(ner_config.model_copy(update={"columns": ["text", "nope"]}), tmp_path)


RESIDUAL = "Ticket 88 from Maria Lopez: ref 4155550132 was logged."  # bare 10 digits: residual band (0.4)


def _residual_run(cfg, tmp_path):
    from curation.pii.stage import PiiStage

    stage = PiiStage(cfg)
    stage.load()
    table = pa.table({"id": ["r1", "r2"], "text": pa.array([RESIDUAL, "port 8080"], type=pa.large_string()),
                      "title": ["ticket ref 4155550132", "ok"]})
    return stage.process(table, StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="pii"))


def test_residual_replace_and_off(tmp_path, ner_config):
    res = _residual_run(ner_config.model_copy(update={"residual": "replace"}), tmp_path)
    assert res.table.column("text").to_pylist()[0] == "Ticket 88 from <PERSON>: ref <PHONE_NUMBER> was logged."
    assert res.table.column("title").to_pylist() == ["ticket ref <PHONE_NUMBER>", "ok"]
    assert res.counters["residual:replaced"] == 2 and res.counters["entities:PHONE_NUMBER"] == 2
    res = _residual_run(ner_config.model_copy(update={"residual": "off"}), tmp_path)
    assert res.table.column("text").to_pylist()[0] == "Ticket 88 from <PERSON>: ref 4155550132 was logged."
    assert res.counters["residual:replaced"] == 0 and "residual:review_rows" not in res.counters


@pytest.mark.argilla
def test_residual_review_goes_to_a_real_argilla_queue(tmp_path, ner_config, embedded, client, monkeypatch):
    emb, info = embedded
    monkeypatch.setenv("ARGILLA_API_URL", emb.url)
    monkeypatch.setenv("ARGILLA_API_KEY", info["api_key"])
    cfg = ner_config.model_copy(update={"residual": "review", "review_queue": "pii-residual-test"})
    res = _residual_run(cfg, tmp_path)
    # the first pass is applied, the suspect is left for a human and the row is counted and queued
    assert res.table.column("text").to_pylist()[0] == "Ticket 88 from <PERSON>: ref 4155550132 was logged."
    assert res.counters["residual:review_rows"] == 1 and res.counters["residual:review_spans"] == 2
    dec = {d["id"]: d for d in res.decisions.to_pylist()}
    assert dec["r1"]["action"] == "modify" and dec["r1"]["reason"] == "pii:PERSON;residual_review"
    records = list(client.datasets(name="pii-residual-test", workspace="argilla").records)
    assert [r.id for r in records] == ["r1"]
    text = records[0].fields["text"]
    assert "[[PHONE_NUMBER? 4155550132]]" in text and "<PERSON>" in text and "Maria" not in text
    assert "title: ticket ref [[PHONE_NUMBER? 4155550132]]" in text
    assert records[0].metadata["residual_types"] == "PHONE_NUMBER"
    _residual_run(cfg, tmp_path)  # a re-run updates the record (id = row id), it does not duplicate it
    assert len(list(client.datasets(name="pii-residual-test", workspace="argilla").records)) == 1
