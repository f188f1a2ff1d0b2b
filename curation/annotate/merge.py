"""Merge submitted review answers into rows: drop rejected, apply corrections, mark origin, report agreement."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

from curation.annotate.agreement import agreement_report
from schemas.arrow import DECISIONS, decisions

ANSWERS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("queue", pa.string(), nullable=False),
    pa.field("user", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("value", pa.string()),  # JSON
])


def answers_table(rows: list[dict[str, Any]]) -> pa.Table:
    rows = sorted(rows, key=lambda r: (r["id"], r["queue"], r["user"], r["question"]))
    return pa.Table.from_pylist(rows, schema=ANSWERS)


def _votes(answers: pa.Table) -> dict[str, dict[str, dict[str, Any]]]:
    """id -> question -> user -> value (a user answering in two queues: the last queue by name wins)."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for a in answers.to_pylist():
        out[a["id"]][a["question"]][a["user"]] = json.loads(a["value"]) if a["value"] is not None else None
    return out


def merge(table: pa.Table, answers: pa.Table, *, text_column: str, stage: str = "annotate_merge",
          conflict: str = "majority") -> tuple[pa.Table, pa.Table, Counter]:
    """Return (kept rows with corrections applied, DECISIONS, counters). Rows without answers pass unchanged."""
    votes = _votes(answers)
    counters: Counter = Counter()
    keep_mask, dec_parts = [], []
    rows = table.to_pylist()
    has_origin = "origin" in table.column_names
    for row in rows:
        v = votes.get(row["id"])
        if v is None:
            keep_mask.append(True)
            continue
        counters["reviewed"] += 1
        decision = Counter(x for x in v.get("decision", {}).values() if x is not None)
        verdict = "keep"
        if decision:
            drop, keep = decision.get("drop", 0), sum(n for k, n in decision.items() if k != "drop")
            if drop and (conflict == "drop" or drop > keep):
                verdict = "drop"
        detail = {"votes": dict(sorted(decision.items())), "annotators": sorted({u for q in v.values() for u in q})}
        if verdict == "drop":
            keep_mask.append(False)
            counters["dropped:annotator_rejected"] += 1
            dec_parts.append(decisions([row["id"]], stage=stage, action="drop", reason="annotator_rejected",
                                       score=drop / max(1, drop + keep), detail=[detail]))
            continue
        keep_mask.append(True)
        corrections = Counter(c.strip() for c in v.get("correction", {}).values() if isinstance(c, str) and c.strip())
        ratings = [r for r in v.get("rating", {}).values() if isinstance(r, (int, float))]
        score = sum(ratings) / len(ratings) / 5.0 if ratings else None
        if corrections:
            text = sorted(corrections.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            _apply(row, text_column, text)
            row["origin"] = "annotated"
            counters["modified:annotator_corrected"] += 1
            dec_parts.append(decisions([row["id"]], stage=stage, action="modify", reason="annotator_corrected",
                                       score=score, detail=[detail]))
        else:
            counters["kept:annotator_approved"] += 1
            dec_parts.append(decisions([row["id"]], stage=stage, action="keep", reason="annotator_approved",
                                       score=score, detail=[detail]))
    if not has_origin:
        for row in rows:
            row.setdefault("origin", "source")
    schema = table.schema if has_origin else table.schema.append(pa.field("origin", pa.string()))
    kept = pa.Table.from_pylist([r for r, k in zip(rows, keep_mask) if k], schema=schema)
    dec = pa.concat_tables(dec_parts) if dec_parts else DECISIONS.empty_table()
    return kept, dec, counters


def _apply(row: dict[str, Any], column: str, text: str) -> None:
    value = row[column]
    if isinstance(value, list):  # chat messages: the correction replaces the last assistant turn
        for msg in reversed(value):
            if msg.get("role") == "assistant":
                msg["content"] = text
                return
        value.append({"role": "assistant", "content": text})
    else:
        row[column] = text


def agreement(answers: pa.Table) -> dict[str, Any]:
    """Per queue and question (decision, rating): Krippendorff alpha and pairwise Cohen kappa."""
    units: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for a in answers.to_pylist():
        if a["question"] in ("decision", "rating"):
            units[(a["queue"], a["question"])][a["id"]][a["user"]] = json.loads(a["value"])
    return {f"{q}/{question}": agreement_report(u) for (q, question), u in sorted(units.items())}
