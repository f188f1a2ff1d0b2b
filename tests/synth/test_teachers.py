"""LLM teachers end to end with tiny local models: distilabel TransformersLLM (direct and as a real
distilabel Pipeline) and distilabel OpenAILLM against a real ``transformers serve`` on 127.0.0.1.

What each test exercises, honestly:
* the random tiny model writes garbage -> every reply is quarantined with its raw output (no crash, no None rows);
* the briefly trained tiny model has memorised replies to our rendered prompts for the first chunks -> the
  happy path (parse, LLM judge, thresholds, EXAMPLES rows) runs on real generations; the other chunks still
  get garbage and are quarantined. This proves plumbing and parsing, not teacher quality.
"""

from __future__ import annotations

import json

import pytest

from schemas.arrow import EXAMPLES, validate
from synth.config import SynthConfig, SynthFilterConfig
from schemas.stage import StageContext
from synth.stage import SynthStage
from synth.tasks import ParseError, parse_answer, parse_instructions, parse_judge, parse_qa
from tests.synth.conftest import MEMORISED_CHUNKS
from tests.synth.test_synth import synth_then_filter


def _ctx(tmp_path, step="synth", **kw):
    return StageContext(stage_dir=tmp_path / step, work_dir=tmp_path / f"{step}.work", step=step, **kw)


def _check_accounting(res, n_requests: int):
    """Every request ends as exactly one of: a kept/dropped example (decision) or a quarantine row."""
    dec = res.decisions.to_pylist()
    q = res.quarantine.to_pylist()
    assert {d["id"] for d in dec if d["action"] == "quarantine"} == {r["id"] for r in q}
    for r in q:
        payload = json.loads(r["payload"])
        assert r["reason"] and payload["chunk"]
    validate(res.table, EXAMPLES, where="test")
    for row in res.table.to_pylist():
        assert all(row[k] is not None for k in ("id", "messages", "origin", "source_ids", "teacher", "template", "judge_score"))
    return dec, q


def test_parsers_are_lenient_about_format_strict_about_content():
    assert parse_qa("question: What is X?\n\nANSWER:  X is the thing.\n") == ("What is X?", "X is the thing.")
    assert parse_qa("**Question:** How do I restart it?\n**Answer:** Use the remote actions menu.") == (
        "How do I restart it?", "Use the remote actions menu.")
    for bad, reason in ((None, "empty_output"), ("  ", "empty_output"), ("just words here", "no_question_answer"),
                        ("Question: a\nAnswer: b", "too_short"), ("Question: what is \ufffd\ufffd?\nAnswer: it is so", "unreadable")):
        with pytest.raises(ParseError) as e:
            parse_qa(bad)
        assert e.value.reason == reason
    assert parse_judge("Groundedness: 5\nHelpfulness: 3/5") == {"groundedness": 1.0, "helpfulness": 0.5}
    assert parse_judge("groundedness = 1, helpfulness: **4**") == {"groundedness": 0.0, "helpfulness": 0.75}
    with pytest.raises(ParseError):
        parse_judge("Groundedness: 9\nHelpfulness: 4")
    assert parse_instructions("1. Explain how to restart the locker.\n- List the symptoms of LCK-503\nok", limit=5) == [
        "Explain how to restart the locker.", "List the symptoms of LCK-503"]
    with pytest.raises(ParseError, match="not_in_passage"):
        parse_answer("NOT IN PASSAGE")


def test_transformers_teacher_direct_happy_path_and_garbage(teachers, tmp_path):
    """Trained teacher via distilabel TransformersLLM: memorised chunks become judged examples, the rest quarantine."""
    chunks = teachers["chunks"]
    cfg = SynthConfig(teacher={"kind": "transformers", "model": str(teachers["trained"]), "temperature": 0,
                               "max_new_tokens": 96, "concurrency": 8})
    res = synth_then_filter(chunks, tmp_path, cfg, SynthFilterConfig(min_answer_chars=10, min_groundedness=0.75))
    dec, q = _check_accounting(res, chunks.num_rows)
    rows = res.table.to_pylist()
    memorised = {c["id"]: c for c in chunks.to_pylist()[:MEMORISED_CHUNKS]}
    assert len(rows) == MEMORISED_CHUNKS
    for r in rows:
        chunk = memorised[r["source_ids"][0]]
        assert r["origin"] == "synthetic" and r["teacher"] == f"transformers:{teachers['trained']}"
        assert r["template"] == "grounded_qa_gen_v1|closed_book_v1"
        assert r["messages"][1]["content"] in chunk["text"]  # the memorised answer quotes its chunk
        meta = json.loads(r["meta"])
        assert meta["judge"] == {"groundedness": 1.0, "helpfulness": 0.75} and meta["judge_by"].startswith("transformers:")
        assert r["judge_score"] == 0.75
    # the chunks the teacher never saw: what it writes there is quarantined with the raw text (unparseable
    # generation or judge verdict) or dropped by a filter (e.g. a memorised answer repeated: near_duplicate)
    gen_failures = sum(r["reason"].startswith("teacher_parse_error:") for r in q)
    assert res.counters["candidates"] == chunks.num_rows - gen_failures
    assert res.counters["teacher:requests"] == chunks.num_rows + res.counters["candidates"]  # generation + judge
    assert all(r["reason"].startswith(("teacher_parse_error:", "judge_parse_error:")) for r in q)
    assert all("raw" in json.loads(r["payload"]) for r in q)
    unseen = {c["id"] for c in chunks.to_pylist()[MEMORISED_CHUNKS:]}
    accounted = {json.loads(r["payload"])["chunk"] for r in q}
    dropped = [d for d in dec if d["action"] == "drop"]
    assert len(accounted & unseen) + len(dropped) >= len(unseen)
    assert res.counters["teacher:output_tokens"] > 0 and res.counters["teacher:max_in_flight"] == chunks.num_rows


@pytest.mark.slow  # ~15 s idle, ~55 s on a busy 2-core machine: spawned step processes re-import torch
def test_transformers_teacher_as_distilabel_pipeline_quarantines_garbage(teachers, tmp_path):
    """A real distilabel Pipeline (LoadDataFromDicts >> TextGeneration, use_cache=False) with the random tiny model."""
    chunks = teachers["chunks"].slice(0, 2)
    cfg = SynthConfig(teacher={"kind": "transformers", "model": str(teachers["random"]), "max_new_tokens": 12,
                               "engine": "pipeline"}, samples_per_chunk=2)
    res = synth_then_filter(chunks, tmp_path, cfg)
    dec, q = _check_accounting(res, 4)
    assert res.table.num_rows == 0
    assert len(q) == 4 and all(r["reason"].startswith("teacher_parse_error:") for r in q)
    assert all(json.loads(r["payload"])["raw"] for r in q)  # the garbage itself, for inspection
    assert res.counters["teacher:requests"] == 4 and res.counters["teacher:output_tokens"] > 0
    # no stale cache: the run folder is removed after use
    assert not any((tmp_path / "synth.work" / "distilabel").glob("*/*"))


def test_openai_teacher_against_transformers_serve(served_teacher, teachers, tmp_path):
    """distilabel OpenAILLM -> transformers serve: >= 8 requests in flight, tokens tallied, judge parsed, PII blocked."""
    pytest.importorskip("presidio_analyzer")
    import pyarrow as pa

    url, model = served_teacher
    chunks = teachers["chunks"]
    # one extra chunk carrying an e-mail address: its prompt must never be sent
    leaky = chunks.slice(0, 1).to_pylist()[0]
    leaky.update(id="leaky", text="Escalations go to jonas.weber@example.com, who restarts the locker controller.")
    table = pa.concat_tables([chunks, pa.Table.from_pylist([leaky], schema=chunks.schema)])
    cfg = SynthConfig(teacher={"kind": "openai", "model": model, "base_url": url, "temperature": 0, "max_new_tokens": 96,
                               "concurrency": 8, "retries": 1, "timeout": 60, "cost_per_input_token": 1e-6,
                               "cost_per_output_token": 2e-6},
                      samples_per_chunk=2, pii_mode="patterns")
    assert cfg.scan_pii  # on by default for remote teachers
    res = synth_then_filter(table, tmp_path, cfg, SynthFilterConfig(min_answer_chars=10, min_lexical_groundedness=0.9,
                                                                    pii_mode="patterns"))
    dec, q = _check_accounting(res, 0)
    c = res.counters
    n_sent = 2 * chunks.num_rows  # the leaky chunk's two prompts were blocked
    assert c["teacher:requests"] == n_sent + c["candidates"]  # generation, then one judge call per distinct candidate
    assert c["teacher:max_in_flight"] >= 8
    assert c["teacher:input_tokens"] > 0 and c["teacher:output_tokens"] > 0 and c["teacher:cost"] > 0
    blocked = [r for r in q if r["reason"] == "pii_in_prompt"]
    assert len(blocked) == 2 and c["pii_in_prompt:EMAIL_ADDRESS"] == 2
    assert all("jonas" not in r["payload"] for r in blocked)  # spans and types, never the value
    rows = res.table.to_pylist()
    # greedy: the two samples of a memorised chunk agree -> one row each; on unseen chunks the tiny teacher
    # may parrot a memorised answer, which the LLM judge passes and the lexical groundedness gate drops
    memorised = {c["id"]: c for c in chunks.to_pylist()[:MEMORISED_CHUNKS]}
    assert {r["source_ids"][0] for r in rows} == set(memorised)
    assert all(r["messages"][1]["content"] in memorised[r["source_ids"][0]]["text"] for r in rows)
    assert c["dropped:same_question"] >= MEMORISED_CHUNKS
    assert {r["teacher"] for r in rows} == {f"openai:{model}"} and all(r["judge_score"] == 0.75 for r in rows)


def test_unreachable_endpoint_quarantines_instead_of_crashing(tmp_path, teachers):
    from tests.synth.conftest import free_port

    cfg = SynthConfig(teacher={"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                               "retries": 0, "timeout": 5}, pii_scan=False)
    res = SynthStage(cfg).process(teachers["chunks"].slice(0, 2), _ctx(tmp_path))
    q = res.quarantine.to_pylist()
    assert res.table.num_rows == 0 and len(q) == 2
    assert all(r["reason"] == "teacher_error" and "Connection" in json.loads(r["payload"])["error"] for r in q)
    assert res.counters["teacher:failures"] == 2


def test_self_instruct_and_evol_instruct_run_end_to_end(teachers, tmp_path):
    """SelfInstruct -> EvolInstruct mutation -> answer -> judge on the tiny teacher. Its replies to these unseen
    prompts are parroted runbook lines, so this proves the chain and its accounting, not instruction quality."""
    chunks = teachers["chunks"].slice(0, 2)
    for task in ("self_instruct", "evol_instruct"):
        cfg = SynthConfig(task=task, samples_per_chunk=2, teacher={"kind": "transformers", "model": str(teachers["trained"]),
                                                                   "temperature": 0, "max_new_tokens": 48})
        res = synth_then_filter(chunks, tmp_path, cfg, SynthFilterConfig(min_answer_chars=1, min_judge_score=0.0,
                                                                         dedup_threshold=None, quality=None), step=task)
        dec, q = _check_accounting(res, 0)
        c = res.counters
        assert c["teacher:requests"] >= 2 + 2  # instructions per chunk, then at least one answer per parsed instruction
        kinds = {json.loads(r["meta"])["kind"] for r in res.table.to_pylist()}
        assert kinds <= {task}
        for r in res.table.to_pylist():
            assert r["template"] == f"{task}+answer_v1|closed_book_v1"
            if task == "evol_instruct":
                assert json.loads(r["meta"])["mutation"]
        templates = {json.loads(x["payload"])["template"] for x in q}
        assert templates <= {"distilabel:self-instruct", "answer_v1", "judge_v1"} | {
            t for t in templates if t.startswith("distilabel:evol-instruct:")}
        assert len(res.table) + len(q) + sum(d["action"] == "drop" for d in dec) >= 1


def test_multi_turn_follow_ups(teachers, tmp_path):
    """turns=2: one follow-up request per first-turn QA (template followup_qa_v1), one judge call per turn.
    The tiny teacher never saw follow-up prompts: whatever it writes is parsed or quarantined, never a crash."""
    chunks = teachers["chunks"]
    cfg = SynthConfig(turns=2, teacher={"kind": "transformers", "model": str(teachers["trained"]), "temperature": 0,
                                        "max_new_tokens": 96})
    res = synth_then_filter(chunks, tmp_path, cfg, SynthFilterConfig(min_answer_chars=1, min_judge_score=0.0,
                                                                     dedup_threshold=None, quality=None))
    dec, q = _check_accounting(res, 0)
    c = res.counters
    followups = [x for x in q if json.loads(x["payload"])["template"] == "followup_qa_v1"]
    assert all(json.loads(x["payload"])["turn"] == 2 and x["reason"].startswith("teacher_") for x in followups)
    rows = res.table.to_pylist()
    for r in rows:
        meta = json.loads(r["meta"])
        assert len(r["messages"]) == 2 * meta["turns"] and meta["turns"] in (1, 2)
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * meta["turns"]
        assert r["template"] == ("grounded_qa_gen_v1+followup_qa_v1" if meta["turns"] == 2 else "grounded_qa_gen_v1") + "|closed_book_v1"
    # generation + one follow-up per distinct first-turn QA + one judge call per turn
    n_first = c["candidates"]
    assert c["teacher:requests"] >= chunks.num_rows + n_first + n_first
    # the memorised follow-up: a two-turn example whose both answers quote the chunk, judged per turn (min)
    two = [r for r in rows if len(r["messages"]) == 4]
    by_id = {x["id"]: x for x in chunks.to_pylist()}
    assert two, "the trained teacher memorised at least one follow-up"
    for r in two:
        assert all(m["content"] in by_id[r["source_ids"][0]]["text"] for m in r["messages"][1::2])
        assert json.loads(r["meta"])["judge"] == {"groundedness": 0.75, "helpfulness": 0.75}
