"""RAFT rows from the recipe's own index: the sample runbooks -> chunk -> index -> synth (raft) -> synth_filter -> dataset."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat
from slmforge.runner import plan, run_recipe
from slmforge.stages import recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
K, P = 3, 0.7


def raft_recipe(corpus: Path, ws: Path, *, raft: dict | None = None, synth_inputs=("chunk", "index")) -> dict:
    return {"workspace": str(ws), "workers": 1, "stages": [
        {"stage": "ingest", "paths": [str(corpus)], "formats": ["md"]},
        {"stage": "normalize"},
        {"stage": "chunk", "max_chars": 600, "min_chars": 40},
        {"stage": "index", "inputs": ["chunk", "normalize"]},
        {"stage": "synth", "inputs": list(synth_inputs), "teacher": {"kind": "extractive", "max_questions_per_chunk": 6},
         "raft": raft if raft is not None else {"k": K, "oracle_p": P, "seed": 7}},
        {"stage": "synth_filter", "min_judge_score": 0.5, "dedup_threshold": 0.8},
        {"stage": "dataset", "seed": 0, "validation_fraction": 0.1, "test_fraction": 0.2},
    ]}


def rows_of(step_dir: Path) -> list[dict]:
    return [r for p in sorted(step_dir.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raftcorpus")
    shutil.copytree(ROOT / "data/sample/runbooks", root / "runbooks")
    return root


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    ws = tmp_path_factory.mktemp("raftws")
    recipe = recipe_from_dict(raft_recipe(corpus, ws))
    run_recipe(recipe)
    steps = {s.name: s for s in plan(recipe)}
    return recipe, steps, rows_of(steps["dataset"].dir)


def test_raft_rows_hold_k_retrieved_passages_with_the_oracle_at_the_configured_rate(built):
    from curation.index import open_index

    _, steps, rows = built
    assert len(rows) >= 100
    index = open_index(steps["index"].dir)
    fmt = PromptFormat()
    by_id = {c["chunk_id"]: c for c in pq.read_table(index.path / "chunks.parquet").to_pylist()}
    included = 0
    for r in rows:
        meta = json.loads(r["meta"])
        assert r["template"].startswith("raft_index_v1:") and meta["k"] == K
        assert len(meta["passages"]) == K  # the runbooks share enough words: every question retrieves k + 1 chunks
        chunk_id = r["source_ids"][0]
        question = meta["question"]
        retrieved = [h.chunk_id for h in index.search(question, k=K + 1)]
        ids = [p["chunk_id"] for p in meta["passages"]]
        # the passages ARE the index's top-k for the question (the oracle forced in or taken out, nothing else changed)
        others = [c for c in retrieved if c != chunk_id]
        assert [c for c in ids if c != chunk_id] == others[: len([c for c in ids if c != chunk_id])]
        assert meta["oracle_retrieved"] == (chunk_id in retrieved[:K])
        assert meta["oracle_rank"] == (retrieved.index(chunk_id) + 1 if chunk_id in retrieved[:K] else None)
        assert meta["oracle_included"] == (meta["raft_draw"] < P) == (chunk_id in ids)
        if meta["oracle_included"]:
            included += 1
            n = meta["oracle_position"]
            if not meta["oracle_retrieved"]:
                assert n == K  # forced in at the place of the lowest-ranked passage
            source = meta["passages"][n - 1]["source_id"]
            assert meta["citations"] == {str(n): source}
            assert r["messages"][-1]["content"].endswith(f"[{n}]")
            assert fmt.parse_citations(r["messages"][-1]["content"], meta["passages"]) == [source]
        else:
            assert meta["oracle_position"] is None and meta["citations"] == {}
            assert not r["messages"][-1]["content"].rstrip().endswith("]")
        # the prompt is THE prompt format's rendering of these passages (what serving renders)
        assert r["messages"][:-1] == fmt.render_messages(question, [by_id[c] for c in ids])
    # the oracle rate: binomial, 4 standard deviations
    n = len(rows)
    assert abs(included - P * n) <= 4 * math.sqrt(n * P * (1 - P)), (included, n)


def test_raft_rows_are_deterministic_and_the_card_reports_recall(built, corpus, tmp_path):
    recipe, steps, rows = built
    again = recipe_from_dict(raft_recipe(corpus, tmp_path / "ws2"))
    run_recipe(again)
    rows2 = rows_of({s.name: s for s in plan(again)}["dataset"].dir)
    key = lambda rs: sorted((r["id"], r["split"], json.dumps(r["messages"]), r["meta"]) for r in rs)  # noqa: E731
    assert key(rows) == key(rows2)
    counters = json.loads((steps["synth"].dir / "stats.json").read_text())["counters"]
    assert counters["raft:rows"] >= len(rows) and 0 < counters["raft:oracle_retrieved"] <= counters["raft:rows"]
    from slmforge.card import write_dataset_card

    card = write_dataset_card(recipe.workspace).read_text()
    assert "## Retrieval (RAFT rows" in card
    for split in ("train", "test"):
        of = [json.loads(r["meta"]) for r in rows if r["split"] == split]
        recall = sum(m["oracle_retrieved"] for m in of) / len(of)
        assert f"| {split} | {len(of)} | {recall:.3f} |" in card


def test_raft_needs_an_index_input(corpus, tmp_path):
    with pytest.raises(ConfigError, match="index"):
        plan(recipe_from_dict(raft_recipe(corpus, tmp_path / "ws", synth_inputs=("chunk",))))
    with pytest.raises(ConfigError, match="include_context"):
        recipe_from_dict({"workspace": str(tmp_path / "w"), "stages": [
            {"stage": "synth", "include_context": True, "raft": {"k": 2}}]})
    with pytest.raises(ConfigError, match="no input is an index"):  # an index-less second input fails when the step runs
        run_recipe(recipe_from_dict(raft_recipe(corpus, tmp_path / "ws3", synth_inputs=("chunk", "normalize"))),
                   until="synth")


def test_forced_oracle_at_a_random_position_keeps_the_retrieved_order(built, corpus, tmp_path):
    """forced_position: random spreads forced-in oracles over the k positions (with 'last' they all sit at k and a
    model learns to cite [k]); the retrieved passages keep their rank order; 'last' keeps earlier fingerprints."""
    from synth.config import SynthConfig

    _, steps, last_rows = built
    recipe = recipe_from_dict(raft_recipe(corpus, tmp_path / "ws", raft={"k": K, "oracle_p": P, "seed": 7,
                                                                         "forced_position": "random"}))
    run_recipe(recipe, until="synth")
    new_steps = {s.name: s for s in plan(recipe)}
    rows = rows_of(new_steps["synth"].dir)
    by_id = {r["id"]: json.loads(r["meta"]) for r in last_rows}
    forced = [json.loads(r["meta"]) for r in rows
              if json.loads(r["meta"])["oracle_included"] and not json.loads(r["meta"])["oracle_retrieved"]]
    assert len(forced) >= 10
    assert {m["oracle_position"] for m in forced} == set(range(1, K + 1))  # every position used
    for r in rows:
        meta = json.loads(r["meta"])
        assert len(meta["passages"]) == K
        if meta["oracle_included"]:
            assert r["messages"][-1]["content"].endswith(f"[{meta['oracle_position']}]")
        old = by_id.get(r["id"])
        if old is not None and not (meta["oracle_included"] and not meta["oracle_retrieved"]):
            assert meta["passages"] == old["passages"]  # only forced rows change
        elif old is not None:
            others = [p["chunk_id"] for p in meta["passages"] if p["chunk_id"] != r["source_ids"][0]]
            assert others == [p["chunk_id"] for p in old["passages"] if p["chunk_id"] != r["source_ids"][0]]
    # the default ('last') is the behaviour before the option: same fingerprint as a config without it
    synth = {"stage": "synth", "inputs": ["chunk", "index"], "raft": {"k": K}}
    assert SynthConfig(**synth).fingerprint_dict() == SynthConfig(**{**synth, "raft": {"k": K, "forced_position": "last"}}).fingerprint_dict()
    assert "forced_position" not in SynthConfig(**synth).fingerprint_dict()["raft"]
    assert new_steps["synth"].fingerprint != steps["synth"].fingerprint


def test_raft_questions_name_the_page_by_its_title_in_several_phrasings(built):
    """With an index, the extractive teacher asks about the page's title (its first heading), not the file stem."""
    from curation.index import open_index

    _, steps, rows = built
    titles = {c["chunk_id"]: c["title"]
              for c in pq.read_table(open_index(steps["index"].dir).path / "chunks.parquet").to_pylist()}
    questions = [(json.loads(r["meta"])["question"], titles[r["source_ids"][0]]) for r in rows]
    titled = [(q, t) for q, t in questions if t]
    assert len(titled) == len(questions) > 0
    assert all(" document" not in q for q, _ in titled)
    named = [(q, t) for (q, t), r in zip(questions, rows) if not r["template"].endswith(":section")]
    assert named and all(t in q for q, t in named)  # a section whose heading is a question is asked as written
    definitions = [json.loads(r["meta"])["question"] for r in rows if r["template"].endswith(":definition")]
    frames = {q.split(" ", 2)[:2].__str__() for q in definitions}
    assert len(frames) >= 3, frames  # several phrasings, not one sentence frame
