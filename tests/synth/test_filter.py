"""synth_filter: checks over synth's score columns, global across shards, thresholds that never call the teacher."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.arrow import EXAMPLES, SYNTH_CANDIDATES, validate
from schemas.errors import ConfigError
from slmforge.stages import STAGES, parse_stage
from synth.checks import CHECKS, Env, similar_pairs
from synth.config import SynthConfig, SynthFilterConfig
from synth.filter import SynthFilterStage
from synth.stage import SynthStage
from tests.synth.test_synth import DOC, _chunks, _ctx


def _shards(tmp_path, *tables: pa.Table, synth: SynthConfig | None = None) -> list:
    """synth on each chunk table as its own shard; the part files, as the runner hands them to a global stage."""
    parts = []
    for i, chunks in enumerate(tables):
        res = SynthStage(synth or SynthConfig()).process(chunks, _ctx(tmp_path, f"synth{i}"))
        validate(res.table, SYNTH_CANDIDATES, where="test")
        parts.append(tmp_path / f"part-{i:05d}.parquet")
        pq.write_table(res.table, parts[-1])
    return parts


def _filter(tmp_path, parts, cfg: SynthFilterConfig, step="synth_filter"):
    stage = SynthFilterStage(cfg)
    ctx = _ctx(tmp_path, step)
    stage.prepare(parts, ctx)
    out = []
    for i, p in enumerate(parts):
        ctx.shard = i
        out.append(stage.process(pq.read_table(p), ctx))
    return out


def test_synth_writes_every_candidate_with_score_columns(tmp_path):
    """No threshold in synth: the candidates the filter drops are all in synth's output, scores as columns."""
    chunks = _chunks(tmp_path, DOC)
    res = SynthStage(SynthConfig()).process(chunks, _ctx(tmp_path, "synth"))
    rows = res.table.to_pylist()
    assert len(rows) == res.counters["generated"] == res.counters["candidates"]
    assert {d["action"] for d in res.decisions.to_pylist()} == {"keep"}
    for r in rows:
        meta = json.loads(r["meta"])
        assert r["judge_score"] == min(r["judge_groundedness"], r["judge_helpfulness"])
        assert r["lexical_groundedness"] == meta["lexical_groundedness"] == 1.0  # extractive answers quote the chunk
        assert r["answer_chars_min"] == r["answer_chars_max"] == len(r["messages"][1]["content"])
        assert r["question"] == meta["question"] == r["messages"][0]["content"]
    # a strict threshold drops some of them in the filter, with the check's reason and its score
    part = tmp_path / "part-00000.parquet"
    pq.write_table(res.table, part)
    out = _filter(tmp_path, [part], SynthFilterConfig(min_judge_score=0.9, quality=None, dedup_threshold=None))[0]
    validate(out.table, EXAMPLES, where="test")
    assert out.table.column_names == EXAMPLES.names
    drops = [d for d in out.decisions.to_pylist() if d["action"] == "drop"]
    assert drops and all(d["reason"] == "judge_below_threshold" and d["score"] < 0.9 for d in drops)
    assert len(drops) + out.table.num_rows == len(rows) == out.decisions.num_rows


def test_near_duplicates_and_conflicts_are_found_across_shards(tmp_path):
    """The same runbook in two shards: the second shard's copies are near-duplicates of the first shard's rows
    (a per-shard filter would keep both); two versions of a runbook in two shards: the conflict is flagged."""
    one = _chunks(tmp_path, DOC, sources=["a/locker.md"])
    two = _chunks(tmp_path, DOC, sources=["b/locker.md"])
    parts = _shards(tmp_path, one, two)
    alone = _filter(tmp_path, parts[:1], SynthFilterConfig(min_answer_chars=10), step="alone")[0]
    res = _filter(tmp_path, parts, SynthFilterConfig(min_answer_chars=10))
    assert res[0].table.num_rows == alone.table.num_rows > 0
    assert res[1].table.num_rows == 0
    dups = [d for d in res[1].decisions.to_pylist() if d["action"] == "drop"]
    assert dups and {d["reason"] for d in dups} == {"near_duplicate"} and all(d["score"] == 1.0 for d in dups)
    first_ids = set(res[0].table.column("id").to_pylist())
    assert all(json.loads(d["detail"])["duplicate_of"] in first_ids for d in dups)

    old_steps = DOC[DOC.index("1. Open"):DOC.index("## Why wait")]
    other = DOC.replace(old_steps, "1. Call the Brightwater vendor hotline.\n2. Ask for a technician visit and log the ticket number.\n\n")
    (tmp_path / "v").mkdir()
    parts = _shards(tmp_path / "v", _chunks(tmp_path, DOC, sources=["a/locker.md"]),
                    _chunks(tmp_path, other, sources=["b/locker.md"]))
    res = _filter(tmp_path / "v", parts, SynthFilterConfig(min_answer_chars=10, dedup_threshold=None))
    flagged = [[d for d in r.decisions.to_pylist() if d["reason"] == "consistency_conflict"] for r in res]
    assert [len(f) for f in flagged] == [1, 1] and sum(r.counters["flagged:conflict"] for r in res) == 2
    a, b = flagged[0][0], flagged[1][0]
    assert json.loads(a["detail"])["conflict_with"] == b["id"] and json.loads(b["detail"])["conflict_with"] == a["id"]
    metas = [json.loads(row["meta"]) for r in res for row in r.table.to_pylist()]
    assert sorted(m.get("conflict_with", "") for m in metas if "conflict_with" in m) == sorted([a["id"], b["id"]])


def test_every_drop_names_its_check_and_score(tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    pq.write_table(pa.table({"id": ["e1"], "text": ["Restart the locker controller from the remote actions menu."]}),
                   eval_dir / "part-0.parquet")
    parts = _shards(tmp_path, _chunks(tmp_path, DOC, DOC))
    cfg = SynthFilterConfig(min_answer_chars=80, inputs=["synth", "eval"], eval_step="eval", decontam_ngram=6,
                            quality={"min_alpha_words_ratio": 0.95})
    stage = SynthFilterStage(cfg)
    ctx = _ctx(tmp_path, "synth_filter", inputs={"synth": tmp_path, "eval": eval_dir})
    stage.prepare(parts, ctx)
    res = stage.process(pq.read_table(parts[0]), ctx)
    drops = [d for d in res.decisions.to_pylist() if d["action"] == "drop"]
    reasons = Counter(d["reason"].split(":")[0] for d in drops)
    assert {"answer_length", "contaminated", "quality", "near_duplicate"} <= set(reasons)
    assert all(d["score"] is not None for d in drops)
    names = {c.__name__ for c in CHECKS}
    assert all(any(d["reason"].startswith(n) for n in names) for d in drops)
    assert res.decisions.num_rows == pq.read_table(parts[0]).num_rows  # every row: one decision


def test_similar_pairs_is_exact():
    """Prefix filtering finds exactly the pairs the all-pairs loop finds."""
    rnd = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    sets = [set(rnd.sample(vocab, rnd.randint(0, 8))) for _ in range(300)]
    sets += [set(s) | {"x"} for s in sets[:40]] + [set(s) for s in sets[40:60]]
    for t in (0.5, 0.7, 0.8, 1.0):
        brute = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))
                 if sets[i] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= t]
        assert similar_pairs(sets, t) == brute


def test_moved_thresholds_say_where_they_went():
    with pytest.raises(ConfigError, match="synth_filter") as e:
        parse_stage({"stage": "synth", "min_judge_score": 0.7, "judge": {"min_groundedness": 0.5}}, where="stages[3]")
    assert "min_judge_score" in str(e.value) and "judge.min_groundedness" in str(e.value)
    assert "synth_filter" in STAGES
    cfg = parse_stage({"stage": "synth_filter", "min_judge_score": 0.7, "min_groundedness": 0.5}, where="stages[4]")
    assert isinstance(cfg, SynthFilterConfig)
    # the synth fingerprint holds no threshold: the same teacher/judge, any thresholds -> one synth fingerprint
    assert not set(SynthConfig().fingerprint_dict()) & set(SynthFilterConfig.model_fields) - {"stage", "name", "inputs", "pii_scan", "pii_mode"}
    assert Env().eval_grams == set()


def test_threshold_change_reruns_only_the_filter_and_never_the_teacher(teachers, tmp_path, monkeypatch):
    """A recipe ingest -> chunk -> synth (the trained tiny teacher through distilabel's TransformersLLM, judging
    itself) -> synth_filter, run twice: the second run only raises min_judge_score. Every teacher request and model
    build is counted by pass-through wrappers around the real calls: the second run makes none, reuses ingest,
    chunk and synth, re-runs synth_filter, and drops the rows now under the threshold with the check's reason."""
    from slmforge.runner import plan, run_recipe
    from slmforge.stages import recipe_from_dict
    from synth import teachers as teachers_mod

    calls = Counter()
    real_generate, real_build = teachers_mod.Teacher.generate, teachers_mod.build_llm

    def generate(self, prompts):
        calls["prompts"] += len(prompts)
        return real_generate(self, prompts)

    def build_llm(cfg):
        calls["models"] += 1
        return real_build(cfg)

    monkeypatch.setattr(teachers_mod.Teacher, "generate", generate)
    monkeypatch.setattr(teachers_mod, "build_llm", build_llm)
    corpus = tmp_path / "t"
    corpus.mkdir()
    (corpus / "doc0.md").write_text(DOC)  # source t/doc0.md: the prompts the teacher memorised (conftest)

    def recipe(min_judge_score: float):
        return recipe_from_dict({"workspace": str(tmp_path / "ws"), "workers": 1, "stages": [
            {"stage": "ingest", "paths": [str(corpus)]},
            {"stage": "chunk", "max_chars": 400, "min_chars": 20},
            {"stage": "synth", "teacher": {"kind": "transformers", "model": str(teachers["trained"]), "temperature": 0,
                                           "max_new_tokens": 96}},
            {"stage": "synth_filter", "min_answer_chars": 10, "min_judge_score": min_judge_score},
        ]})

    def kept_and_dropped(r):
        d = plan(r)[-1].dir
        return (pq.read_table(d / "part-00000.parquet").column("id").to_pylist(),
                [x for x in pq.read_table(d / "decisions.parquet").to_pylist() if x["action"] == "drop"])

    first = run_recipe(recipe(0.5))
    assert calls["prompts"] > 0 and calls["models"] >= 1 and first[2]["counters"]["teacher:requests"] == calls["prompts"]
    kept, dropped = kept_and_dropped(recipe(0.5))
    assert kept and not [d for d in dropped if d["reason"] == "judge_below_threshold"]  # memorised verdicts: 5/4 -> 0.75

    before = dict(calls)
    second = run_recipe(recipe(0.8))
    assert dict(calls) == before  # not one teacher request, not one model load
    assert [s.get("cached", False) for s in second] == [True, True, True, False]
    assert plan(recipe(0.8))[2].dir == plan(recipe(0.5))[2].dir  # one synth fingerprint for both thresholds
    kept2, dropped2 = kept_and_dropped(recipe(0.8))
    below = [d for d in dropped2 if d["reason"] == "judge_below_threshold"]
    assert not kept2 and {d["id"] for d in below} == set(kept) and all(d["score"] == 0.75 for d in below)


def test_a_new_check_is_one_function_in_the_list(tmp_path, monkeypatch):
    """What a newcomer writes in synth/checks.py: a function over any synth column, appended to CHECKS; the stage
    runs it after the others, its drops carry its reason and score, and a wrong verdict count is an error."""
    from synth import checks

    def no_lists(rows, cfg, env):
        return [checks.drop("no_lists", 1.0) if r["template"].endswith(":list") else checks.PASS for r in rows]

    monkeypatch.setattr(checks, "CHECKS", [*checks.CHECKS, no_lists])
    parts = _shards(tmp_path, _chunks(tmp_path, DOC))
    res = _filter(tmp_path, parts, SynthFilterConfig(min_answer_chars=10))[0]
    drops = [d for d in res.decisions.to_pylist() if d["reason"] == "no_lists"]
    assert drops and all(d["score"] == 1.0 for d in drops)
    assert not [r for r in res.table.to_pylist() if r["template"].endswith(":list")]
    monkeypatch.setattr(checks, "CHECKS", [lambda rows, cfg, env: []])
    with pytest.raises(RuntimeError, match="returned 0 verdicts"):
        _filter(tmp_path, parts, SynthFilterConfig(), step="broken")
