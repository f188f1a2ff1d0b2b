"""Routing rules, merging answers and agreement — pure functions on tiny real tables."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from curation.annotate.agreement import cohen_kappa, krippendorff_alpha_nominal
from curation.annotate.merge import agreement, answers_table, merge
from curation.annotate.routing import route
from curation.annotate.config import AnnotateConfig, RouteRule
from schemas.errors import ConfigError, SchemaError


def rows() -> pa.Table:
    return pa.table({
        "id": ["r1", "r2", "r3", "r4", "r5", "r6"],
        "text": ["alpha", "beta", "gamma", "delta", "eps", "zeta"],
        "q_quality": [0.5, 0.45, 0.9, 0.1, 0.55, 0.6],
        "pii_min_score": [0.99, 0.3, 0.5, None, 0.95, 0.9],
        "cluster": ["c1", "c1", "c2", "c2", "c2", None],
        "origin": ["source", "synthetic", "source", "synthetic", "source", "source"],
        "question": ["q1", "q1", "q2", "q2", "q3", "q3"],
        "answer": ["yes", "no", "x", "x", "a", "b"],
    })


def test_each_rule_selects_expected_rows():
    t = rows()
    def ids(**kw):
        return route(t, [RouteRule(queue="q", **kw)])["q"].column("id").to_pylist()
    assert ids(select="between", column="q_quality", low=0.4, high=0.6) == ["r1", "r2", "r5", "r6"]
    assert ids(select="below", column="pii_min_score", threshold=0.6) == ["r2", "r3"]
    assert ids(select="above", column="q_quality", threshold=0.8) == ["r3"]
    assert ids(select="equals", column="origin", value="synthetic") == ["r2", "r4"]
    assert ids(select="cluster_sample", column="cluster", per_cluster=1) == ["r1", "r3"]
    assert ids(select="conflict", column="answer", group_column="question") == ["r1", "r2", "r5", "r6"]


def test_two_rules_one_queue_hold_each_row_once_and_cap():
    t = rows()
    rules = [RouteRule(queue="q", select="between", column="q_quality", low=0.4, high=0.6),
             RouteRule(queue="q", select="equals", column="origin", value="synthetic")]
    assert route(t, rules)["q"].column("id").to_pylist() == ["r1", "r2", "r4", "r5", "r6"]
    assert route(t, rules, max_per_queue=2)["q"].num_rows == 2


def test_bad_rules_teach():
    with pytest.raises(ConfigError, match="needs"):
        RouteRule(queue="q", select="between", column="q_quality", low=0.1)
    with pytest.raises(SchemaError, match="q_missing"):
        route(rows(), [RouteRule(queue="q", select="above", column="q_missing", threshold=0.1)])
    with pytest.raises(Exception, match="extra"):
        AnnotateConfig(rules=[{"queue": "q", "select": "above", "column": "x", "threshold": 1}], typo=1)


def _ans(rows_):
    return answers_table([{"id": i, "queue": "q", "user": u, "question": qn, "value": json.dumps(v)}
                          for i, u, qn, v in rows_])


def test_merge_drops_rejected_applies_corrections_with_lineage():
    t = rows()
    answers = _ans([("r1", "ann1", "decision", "keep"), ("r1", "ann2", "decision", "keep"),
                    ("r2", "ann1", "decision", "drop"), ("r2", "ann2", "decision", "drop"),
                    ("r3", "ann1", "decision", "keep"), ("r3", "ann1", "correction", "GAMMA fixed"),
                    ("r3", "ann1", "rating", 4),
                    ("r5", "ann1", "decision", "keep"), ("r5", "ann2", "decision", "drop")])
    kept, dec, counters = merge(t, answers, text_column="text")
    assert kept.column("id").to_pylist() == ["r1", "r3", "r4", "r5", "r6"]  # tie on r5 keeps
    by_id = {r["id"]: r for r in kept.to_pylist()}
    assert by_id["r3"]["text"] == "GAMMA fixed" and by_id["r3"]["origin"] == "annotated"
    assert by_id["r1"]["origin"] == "source" and by_id["r4"]["text"] == "delta"
    d = {r["id"]: r for r in dec.to_pylist()}
    assert d["r2"]["action"] == "drop" and d["r2"]["reason"] == "annotator_rejected"
    assert json.loads(d["r2"]["detail"])["annotators"] == ["ann1", "ann2"]
    assert d["r3"]["action"] == "modify" and d["r3"]["score"] == pytest.approx(0.8)
    assert counters["dropped:annotator_rejected"] == 1 and counters["reviewed"] == 4
    kept_strict, _, _ = merge(t, answers, text_column="text", conflict="drop")
    assert "r5" not in kept_strict.column("id").to_pylist()


def test_correction_of_chat_messages_replaces_last_assistant_turn():
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "wrong"}]
    t = pa.table({"id": ["e1"], "messages": [msgs], "origin": ["synthetic"]})
    kept, _, _ = merge(t, _ans([("e1", "a", "decision", "keep"), ("e1", "a", "correction", "right")]),
                       text_column="messages")
    row = kept.to_pylist()[0]
    assert row["messages"][1]["content"] == "right" and row["origin"] == "annotated"


def test_agreement_known_values():
    # Cohen's kappa textbook example: po = 0.7, pe = 0.5 -> 0.4
    a = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert krippendorff_alpha_nominal({"i1": {"a": "x", "b": "x"}, "i2": {"a": "y", "b": "y"}}) == pytest.approx(1.0)
    # Krippendorff (2011) nominal example without missing values is below 1 when one pair disagrees
    alpha = krippendorff_alpha_nominal({"1": {"a": 1, "b": 1}, "2": {"a": 2, "b": 2}, "3": {"a": 1, "b": 2}})
    # coincidences o11=2, o22=2, o12=o21=1; n1=n2=3, n=6 -> alpha = 1 - 2 / (18 / 5)
    assert alpha == pytest.approx(1 - 2 / 3.6)
    rep = agreement(_ans([("r1", "a", "decision", "keep"), ("r1", "b", "decision", "keep"),
                          ("r2", "a", "decision", "drop"), ("r2", "b", "decision", "keep")]))
    assert rep["q/decision"]["pairable"] == 2 and rep["q/decision"]["kappa"]["a|b"] == pytest.approx(0.0)


def test_flagged_rule_reads_a_key_of_the_meta_json():
    """synth's consistency check writes meta.conflict_with; a 'flagged' rule routes exactly those examples."""
    msgs = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]  # noqa: E731
    t = pa.table({
        "id": ["e1", "e2", "e3", "e4"],
        "messages": [msgs("What port?", "5432"), msgs("What port?", "8080"), msgs("Who?", "ops"), msgs("x", "y")],
        "meta": [json.dumps({"conflict_with": "e2", "chunk": "c1"}), json.dumps({"conflict_with": "e1"}),
                 json.dumps({"chunk": "c3"}), None],
    })
    queues = route(t, [RouteRule(queue="synth-conflicts", select="flagged", column="meta.conflict_with")])
    got = queues["synth-conflicts"]
    assert got.column("id").to_pylist() == ["e1", "e2"]
    assert got.column("meta.conflict_with").to_pylist() == ["e2", "e1"]  # shown to reviewers as metadata
    # plain columns work with 'flagged' too; false / empty / null are not flagged
    flags = pa.table({"id": ["a", "b", "c", "d"], "flag": [True, False, None, True]})
    assert route(flags, [RouteRule(queue="q", select="flagged", column="flag")])["q"].column("id").to_pylist() == ["a", "d"]
    # a queue fed by a meta rule and a plain rule holds each row once
    both = route(t, [RouteRule(queue="q", select="flagged", column="meta.conflict_with"),
                     RouteRule(queue="q", select="equals", column="id", value="e3")])
    assert both["q"].column("id").to_pylist() == ["e1", "e2", "e3"]
    with pytest.raises(SchemaError, match="meta.<key>"):
        route(pa.table({"id": ["a"]}), [RouteRule(queue="q", select="flagged", column="meta.conflict_with")])
