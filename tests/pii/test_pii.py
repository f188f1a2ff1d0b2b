import re
from pathlib import Path

import pyarrow as pa
import pytest

from curation.pii import find_pii, scrub_texts
from curation.pii.config import PiiConfig
from schemas.errors import ConfigError
from schemas.stage import StageContext

GOLDEN = Path(__file__).parent / "golden"
MARK = re.compile(r"\[\[([A-Z_]+):(.+?)\]\]")


def parse_golden(raw: str) -> tuple[str, list[tuple[int, int, str]]]:
    out, spans, pos = [], [], 0
    length = 0
    for m in MARK.finditer(raw):
        out.append(raw[pos:m.start()])
        length += m.start() - pos
        spans.append((length, length + len(m.group(2)), m.group(1)))
        out.append(m.group(2))
        length += len(m.group(2))
        pos = m.end()
    out.append(raw[pos:])
    return "".join(out), spans


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.txt")))
def test_golden_files_exact(name, ner_config):
    text, gold = parse_golden((GOLDEN / name).read_text())
    found = find_pii([text], config=ner_config)[0]
    got = {(s["start"], s["end"], s["entity_type"]) for s in found}
    assert got == set(gold), f"missing {set(gold) - got}, extra {[(text[a:b], t) for a, b, t in got - set(gold)]}"


def test_clean_technical_text_unchanged(ner_config):
    text, gold = parse_golden((GOLDEN / "clean_tech.txt").read_text())
    assert not gold
    scrubbed, spans = scrub_texts([text], config=ner_config)
    assert scrubbed == [text] and spans == [[]]


def test_pseudonyms_consistent_within_document(ner_config):
    cfg = ner_config.model_copy(update={"anonymize": "pseudonym"})
    text = "Maria Lopez opened the ticket. Later Maria wrote to John Smith; John Smith replied to maria@x-corp.io."
    scrubbed, spans = scrub_texts([text], config=cfg)
    assert scrubbed[0].count("<PERSON_1>") == 2 and scrubbed[0].count("<PERSON_2>") == 2
    assert "Maria" not in scrubbed[0] and "<EMAIL_ADDRESS_1>" in scrubbed[0]


def test_corpus_consistent_pseudonyms_need_key(monkeypatch):
    cfg = PiiConfig(mode="patterns", anonymize="pseudonym", corpus_consistent=True, key_env="SLMFORGE_TEST_PII_KEY")
    monkeypatch.delenv("SLMFORGE_TEST_PII_KEY", raising=False)
    with pytest.raises(ConfigError, match="SLMFORGE_TEST_PII_KEY"):
        scrub_texts(["mail a@b-corp.com"], config=cfg)
    monkeypatch.setenv("SLMFORGE_TEST_PII_KEY", "k1")
    a, _ = scrub_texts(["mail a@b-corp.com now", "from a@b-corp.com"], config=cfg)
    tag = re.search(r"<EMAIL_ADDRESS_[0-9a-f]{8}>", a[0]).group(0)
    assert tag in a[1]
    monkeypatch.setenv("SLMFORGE_TEST_PII_KEY", "k2")
    b, _ = scrub_texts(["mail a@b-corp.com now"], config=cfg)
    assert b[0] != a[0]


def test_modes_and_redaction_patterns_only():
    text = "key AKIAIOSFODNN7EXAMPLE ip 83.121.44.190 v1.2.3.4"
    cfg = PiiConfig(mode="patterns", anonymize="redact")
    scrubbed, spans = scrub_texts([text], config=cfg)
    assert scrubbed == ["key  ip  v1.2.3.4"]
    assert [s["entity_type"] for s in spans[0]] == ["AWS_ACCESS_KEY", "IP_ADDRESS"]
    assert all(set(s) == {"start", "end", "entity_type", "score"} for s in spans[0])


def test_long_text_is_chunked(ner_config):
    cfg = ner_config.model_copy(update={"chunk_chars": 1000})
    filler = "Build step finished without warnings.\n" * 60
    text = filler + "Contact bob.jones@acme-corp.com please.\n" + filler
    spans = find_pii([text], config=cfg)[0]
    assert [(text[s["start"]:s["end"]], s["entity_type"]) for s in spans] == [("bob.jones@acme-corp.com", "EMAIL_ADDRESS")]


def test_rescan_of_scrubbed_corpus_finds_no_high_confidence_pii(ner_config):
    texts = [parse_golden(p.read_text())[0] for p in sorted(GOLDEN.glob("*.txt"))]
    scrubbed, _ = scrub_texts(texts, config=ner_config)
    again = find_pii(scrubbed, config=ner_config.model_copy(update={"score_threshold": 0.8}))
    assert again == [[] for _ in texts]


def test_unknown_entity_is_config_error():
    with pytest.raises(ConfigError, match="NOT_A_TYPE"):
        find_pii(["x"], config=PiiConfig(mode="patterns", entities=["NOT_A_TYPE"]))


def test_stage_decisions_counters_quarantine(tmp_path, ner_config):
    from curation.pii.stage import PiiStage

    stage = PiiStage(ner_config)
    stage.load()
    table = pa.table({"id": ["a", "b", "c"],
                      "text": pa.array(["Call Maria Lopez at (415) 555-0132.", "port 8080 version 2.1.0", None],
                                       type=pa.large_string())})
    ctx = StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="pii")
    res = stage.process(table, ctx)
    assert res.table.column("id").to_pylist() == ["a", "b"]
    assert res.table.column("text").to_pylist() == ["Call <PERSON> at <PHONE_NUMBER>.", "port 8080 version 2.1.0"]
    dec = res.decisions.to_pylist()
    assert [(d["id"], d["action"]) for d in dec] == [("a", "modify"), ("c", "quarantine")]
    assert "Maria" not in dec[0]["detail"] and '"entity_type": "PERSON"' in dec[0]["detail"]
    assert res.quarantine.column("id").to_pylist() == ["c"]
    assert res.counters["entities:PERSON"] == 1 and res.counters["entities:PHONE_NUMBER"] == 1


def test_parallel_workers_match_serial():
    texts = [f"user{i}@corp-mail.com from 10.0.{i}.7 build 1.{i}.0" for i in range(12)]
    cfg = PiiConfig(mode="patterns", batch_size=4)
    assert find_pii(texts, config=cfg.model_copy(update={"workers": 2})) == find_pii(texts, config=cfg)


def test_cli_detect_and_scrub(tmp_path):
    import pyarrow.parquet as pq
    import typer
    from typer.testing import CliRunner

    from slmforge.cli_pii import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps 'pii' as a sub-command
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["d1", "d2"], "text": ["mail ann@corp-mail.com", "port 8080"]}), src)
    r = CliRunner().invoke(app, ["pii", "detect", "--input", str(src), "--output", str(tmp_path / "s.parquet"),
                                 "--mode", "patterns"])
    assert r.exit_code == 0, r.output
    spans = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert spans == [{"id": "d1", "start": 5, "end": 22, "entity_type": "EMAIL_ADDRESS", "score": 0.9}]
    r = CliRunner().invoke(app, ["pii", "scrub", "--input", str(src), "--output", str(tmp_path / "o.parquet"),
                                 "--mode", "patterns", "--anonymize", "pseudonym"])
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "o.parquet").column("text").to_pylist() == ["mail <EMAIL_ADDRESS_1>", "port 8080"]


def test_allow_list_keeps_product_names_but_not_people(ner_config):
    text = "Tracking workers consume the shipment-events Kafka topic. Ask Maria Gonzalez about lag."
    found = {text[s["start"]:s["end"]] for s in find_pii([text], config=ner_config)[0]}
    assert "Maria Gonzalez" in found
    for cfg in (ner_config.model_copy(update={"allow_list": ["Kafka"]}),
                ner_config.model_copy(update={"allow_list": [r"^Kaf"], "allow_list_match": "regex"})):
        kept = {text[s["start"]:s["end"]] for s in find_pii([text], config=cfg)[0]}
        assert "Kafka" not in kept and "Maria Gonzalez" in kept


def test_bad_allow_list_regex_is_config_error():
    with pytest.raises(ValueError, match="allow_list entry"):
        PiiConfig(allow_list=["(unclosed"], allow_list_match="regex")


def test_ner_reads_only_capitalised_lines_and_offsets_map_back(ner_config):
    from curation.pii.ner import _to_text, ner_view

    text = "retries: 3\ntimeout: 30s\nOwner Maria Gonzalez moved to Lisbon.\nport: 8080\nAsk Maria Gonzalez.\n"
    view, segs = ner_view(text)
    assert view == "Owner Maria Gonzalez moved to Lisbon.\nAsk Maria Gonzalez.\n"
    assert [text[t:t + n] for _, t, n in segs] == ["Owner Maria Gonzalez moved to Lisbon.\n", "Ask Maria Gonzalez.\n"]
    pos = view.index("Ask")
    assert text[_to_text(pos, segs)[0]:].startswith("Ask Maria")
    found = {(text[s["start"]:s["end"]], s["entity_type"]) for s in find_pii([text], config=ner_config)[0]}
    assert {("Maria Gonzalez", "PERSON"), ("Lisbon", "LOCATION")} <= found
    assert all(v not in {"3", "30s", "8080"} for v, _ in found)
