"""The post-filters of ``synth_filter``: small named checks over synth's score columns, run in order.

A check is a function ``check(rows, cfg, env) -> list[Verdict]``. It gets the rows still alive (dicts with
the SYNTH_CANDIDATES columns, in input order over ALL shards, so the cross-row checks see every row) and
returns one :class:`Verdict` per row: pass, drop (reason starting with the check's name, and a score), or
flag (kept, with a reason and a note merged into the row's ``meta``). The first drop decides; a dropped row
is not shown to later checks. Adding a post-filter: write one function here and list it in :data:`CHECKS`
(a new threshold is one documented field of :class:`SynthFilterConfig`, in this file too).

Thresholds come from the config, scores from synth's columns (judge, lexical groundedness, lengths);
what depends on other steps or on all rows (held-out n-grams, PII, near-duplicates, consistency) is
computed here, never by the teacher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from pydantic import Field, field_validator

from schemas.config import StageConfig
from synth import extractive

#: curation.quality rules re-applied to each answer by default (FilterConfig threshold names)
DEFAULT_ANSWER_QUALITY: dict[str, float | None] = {"max_dup_5gram_frac": 0.5, "max_top_2gram_frac": 0.5, "min_alpha_words_ratio": 0.3}


class SynthFilterConfig(StageConfig):
    """SYNTH_CANDIDATES -> EXAMPLES: thresholds on synth's score columns, decontamination, PII re-scan, near-dup and
    consistency checks (``synth/checks.py``, in this order; the first failing check drops the row with its reason)."""

    stage: Literal["synth_filter"] = "synth_filter"
    min_answer_chars: int = Field(20, ge=1, description="Answers shorter than this (characters) are dropped ('answer_length').")
    max_answer_chars: int = Field(1200, ge=20, description="Answers longer than this (characters) are dropped ('answer_length').")
    min_judge_score: float = Field(
        0.5, ge=0, le=1, description="Examples whose judge score (0-1, the minimum over criteria) is below are dropped ('judge_below_threshold')."
    )
    min_groundedness: float | None = Field(
        None, ge=0, le=1, description="Examples whose judge groundedness (0-1) is below are dropped; None: only min_judge_score."
    )
    min_helpfulness: float | None = Field(
        None, ge=0, le=1, description="Examples whose judge helpfulness (0-1) is below are dropped; None: only min_judge_score."
    )
    min_lexical_groundedness: float | None = Field(
        None, ge=0, le=1, description="Share (0-1) of answer words that must occur in the source chunk (column "
        "lexical_groundedness, computed for every example whatever the judge: a cheap check an LLM judge cannot talk its "
        "way around); None disables."
    )
    quality: dict[str, float | None] | None = Field(
        default_factory=lambda: dict(DEFAULT_ANSWER_QUALITY),
        description="curation.quality rules (FilterConfig names, e.g. max_dup_5gram_frac) re-applied to each answer; "
        "the first failing rule drops the row with reason 'quality:<rule>'; None disables.",
    )
    eval_step: str | None = Field(
        None, description="Recipe step whose EXAMPLES (or text) rows are held-out eval data; an example sharing a word "
        "n-gram with them is dropped ('contaminated'). List it in 'inputs' too."
    )
    decontam_ngram: int = Field(8, ge=3, le=50, description="Word n-gram length for decontamination against eval rows.")
    pii_scan: bool | None = Field(
        None, description="Re-scan the example's messages with curation.pii (needs the 'pii' extra); a hit drops the row "
        "('pii'). None: on for rows written by an openai teacher (teacher column 'openai:...'), off otherwise."
    )
    pii_mode: Literal["ner", "patterns"] = Field(
        "ner", description="curation.pii mode of the re-scan: 'ner' (spaCy names/places + patterns) or 'patterns' (regex only, faster)."
    )
    dedup_threshold: float | None = Field(
        0.8, gt=0, le=1, description="Jaccard (word 5-gram) at or above which two answers are near-duplicates (the later one, "
        "in input order over all shards, is dropped: 'near_duplicate'); None disables."
    )
    existing_steps: list[str] = Field(
        default_factory=list,
        description="Recipe steps whose EXAMPLES rows already exist (annotated, earlier synth); a generated answer that is a "
        "near-duplicate of one of theirs is dropped ('near_duplicate_existing'). List them in 'inputs' too.",
    )
    conflict_question_jaccard: float = Field(0.8, gt=0, le=1, description="Question word-set Jaccard at or above which two questions count as the same.")
    conflict_answer_jaccard: float = Field(
        0.5, ge=0, le=1, description="Answer 3-gram Jaccard below which answers to the same question conflict (kept, "
        "flagged: decision reason 'consistency_conflict', meta.conflict_with)."
    )

    @field_validator("quality")
    @classmethod
    def _quality_rules(cls, v: dict[str, float | None] | None) -> dict[str, float | None] | None:
        if v is None:
            return v
        from curation.config import FilterConfig

        known = sorted(n for n in FilterConfig.model_fields if n.startswith(("min_", "max_")))
        bad = [k for k in v if k not in known]
        if bad:
            raise ValueError(f"unknown quality rule(s) {bad}; valid: {', '.join(known)}")
        return v



@dataclass(frozen=True)
class Verdict:
    keep: bool = True
    reason: str | None = None  # None: passed this check
    score: float | None = None
    note: dict[str, Any] | None = None  # decision detail; on a kept (flagged) row also merged into its meta


PASS = Verdict()


def drop(reason: str, score: float | None = None, **note: Any) -> Verdict:
    return Verdict(False, reason, None if score is None else float(score), note or None)


@dataclass
class Env:
    """What checks read besides the rows, loaded once per stage run from the step's other inputs."""

    eval_grams: set = field(default_factory=set)  # word n-grams of the held-out eval rows
    existing: list[str] = field(default_factory=list)  # assistant turns of rows that already exist
    work_dir: Path | None = None  # scratch space (near-dup spill files)

    @classmethod
    def load(cls, cfg: SynthFilterConfig, inputs: Mapping[str, Path], *, work_dir: Path | None = None) -> Env:
        grams = eval_ngrams(Path(inputs[cfg.eval_step]), cfg.decontam_ngram) if cfg.eval_step else set()
        existing = [a for s in cfg.existing_steps for a in existing_answers(Path(inputs[s]))]
        return cls(grams, existing, work_dir)


Check = Callable[[list[dict], SynthFilterConfig, Env], list[Verdict]]


# --- text helpers -------------------------------------------------------------------------------
def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = extractive.words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _parts(folder: Path, pattern: str):
    for f in sorted(folder.glob(pattern)):
        if f.name not in ("decisions.parquet", "quarantine.parquet"):
            yield pq.read_table(f)


def eval_ngrams(folder: Path, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of every message/text in the Parquet files of a held-out eval step."""
    grams: set[tuple[str, ...]] = set()
    for t in _parts(folder, "*.parquet"):
        if "messages" in t.column_names:
            for msgs in t.column("messages").to_pylist():
                for m in msgs or []:
                    grams |= ngrams(m.get("content") or "", n)
        elif "text" in t.column_names:
            for x in t.column("text").to_pylist():
                grams |= ngrams(x or "", n)
    return grams


def existing_answers(folder: Path) -> list[str]:
    """Assistant turns of the EXAMPLES rows (or ``text``) in a step's Parquet parts."""
    out: list[str] = []
    for t in _parts(folder, "part-*.parquet"):
        if "messages" in t.column_names:
            for msgs in t.column("messages").to_pylist():
                out += [m["content"] for m in msgs or [] if m.get("role") == "assistant" and m.get("content")]
        elif "text" in t.column_names:
            out += [x for x in t.column("text").to_pylist() if x]
    return out


def answers(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]


def _jaccard(a: str, b: str, n: int = 3) -> float:
    x, y = ngrams(a, n) or {tuple(extractive.words(a))}, ngrams(b, n) or {tuple(extractive.words(b))}
    return len(x & y) / len(x | y) if x | y else 1.0


# --- the checks, in the order they run ------------------------------------------------------------
def answer_length(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """Every assistant turn within [min_answer_chars, max_answer_chars]; score: the offending length."""
    return [drop("answer_length", r["answer_chars_min"]) if r["answer_chars_min"] < cfg.min_answer_chars
            else drop("answer_length", r["answer_chars_max"]) if r["answer_chars_max"] > cfg.max_answer_chars
            else PASS for r in rows]


def _below(rows: list[dict], column: str, threshold: float | None, reason: str) -> list[Verdict]:
    if threshold is None:
        return [PASS] * len(rows)
    return [drop(reason, r[column]) if r[column] is not None and r[column] < threshold else PASS for r in rows]


def judge(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """The judge score (0-1, worst criterion of the worst turn) at least min_judge_score."""
    return _below(rows, "judge_score", cfg.min_judge_score, "judge_below_threshold")


def groundedness(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    return _below(rows, "judge_groundedness", cfg.min_groundedness, "groundedness_below_threshold")


def helpfulness(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    return _below(rows, "judge_helpfulness", cfg.min_helpfulness, "helpfulness_below_threshold")


def lexical_groundedness(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    return _below(rows, "lexical_groundedness", cfg.min_lexical_groundedness, "lexical_groundedness_below_threshold")


def contaminated(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """Any word n-gram (decontam_ngram) shared with the held-out eval rows; score: how many are shared."""
    if not env.eval_grams:
        return [PASS] * len(rows)
    out = []
    for r in rows:
        text = r["question"] + "\n" + "\n".join(m["content"] for m in r["messages"][2:]) + "\n" + "\n".join(answers(r))
        shared = ngrams(text, cfg.decontam_ngram) & env.eval_grams
        out.append(drop("contaminated", len(shared)) if shared else PASS)
    return out


def quality(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """curation.quality rules on each answer; the first failing rule of the first failing answer, with its score."""
    if not cfg.quality:
        return [PASS] * len(rows)
    from curation.config import FilterConfig
    from curation.quality import RULES, failing_rules, score_text

    qcfg = FilterConfig.model_validate({"stage": "filter", **{k: None for k in RULES}, **cfg.quality})
    out = []
    for r in rows:
        failed = next((f for f in (failing_rules(score_text(a), qcfg) for a in answers(r)) if f), None)
        out.append(drop(f"quality:{failed[0][0]}", failed[0][1]) if failed else PASS)
    return out


def pii(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """curation.pii on all messages of the rows to scan; score: the highest entity confidence."""
    scan = [i for i, r in enumerate(rows)
            if (cfg.pii_scan if cfg.pii_scan is not None else (r["teacher"] or "").startswith("openai:"))]
    out = [PASS] * len(rows)
    if not scan:
        return out
    from curation.pii import find_pii
    from curation.pii.config import PiiConfig

    hits = find_pii(["\n".join(m["content"] for m in rows[i]["messages"]) for i in scan], config=PiiConfig(mode=cfg.pii_mode))
    for i, h in zip(scan, hits):
        if h:
            out[i] = drop("pii", max(float(x.get("score") or 0.0) for x in h),
                          entity_types=sorted({x["entity_type"] for x in h}))
    return out


def near_duplicate(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """MinHash near-duplicates of the answers (all turns), across all shards and against ``existing_steps`` rows:
    the first row of a cluster is kept; score: Jaccard to the cluster's earliest member (an existing row if any)."""
    if cfg.dedup_threshold is None or not rows or len(rows) + len(env.existing) < 2:
        return [PASS] * len(rows)
    import pyarrow as pa

    from curation.dedup.config import NearDedupConfig
    from curation.dedup.near import cluster_batches

    # keyed on the answer: the same quoted passage under a differently worded question adds nothing
    ncfg = NearDedupConfig(threshold=cfg.dedup_threshold, representative="earliest")
    n_ex = len(env.existing)
    tbl = pa.table({"id": [f"existing:{i}" for i in range(n_ex)] + [r["id"] for r in rows],
                    "text": pa.array(env.existing + ["\n".join(m["content"] for m in r["messages"][1::2]) for r in rows],
                                     pa.string())})
    clusters, _ = cluster_batches(lambda: tbl.to_batches(max_chunksize=ncfg.batch_size), config=ncfg,
                                  spill_dir=env.work_dir)
    cid, jac = clusters.column("cluster_id").to_pylist(), clusters.column("jaccard").to_pylist()
    ex_clusters = set(cid[:n_ex])
    first: dict[str, str] = {}
    out = []
    for r, c, j in zip(rows, cid[n_ex:], jac[n_ex:]):
        if c in ex_clusters:
            out.append(drop("near_duplicate_existing", j, duplicate_of=c))
        elif c in first:
            out.append(drop("near_duplicate", j, duplicate_of=first[c]))
        else:
            first[c] = r["id"]
            out.append(PASS)
    return out


def consistency(rows: list[dict], cfg: SynthFilterConfig, env: Env) -> list[Verdict]:
    """Near-duplicate questions (word-set Jaccard >= conflict_question_jaccard) whose first answers differ
    (3-gram Jaccard < conflict_answer_jaccard) are KEPT and flagged: meta.conflict_with names the first such
    other row (the annotate stage can route them to a reviewer); score: the answers' Jaccard."""
    qsets = [set(extractive.words(r["question"])) for r in rows]
    found: dict[int, tuple[str, float]] = {}
    for i, j in similar_pairs(qsets, cfg.conflict_question_jaccard):
        sim = _jaccard(rows[i]["messages"][1]["content"], rows[j]["messages"][1]["content"])
        if sim < cfg.conflict_answer_jaccard:
            found.setdefault(i, (rows[j]["id"], sim))
            found.setdefault(j, (rows[i]["id"], sim))
    return [Verdict(True, "consistency_conflict", found[k][1], {"conflict_with": found[k][0]}) if k in found else PASS
            for k in range(len(rows))]


def similar_pairs(sets: list[set], threshold: float) -> list[tuple[int, int]]:
    """All (i, j), i < j, in order, with ``sets[i]`` non-empty and ``|a & b| / |a | b| >= threshold``: exact,
    without comparing every pair (prefix filtering: sets that reach the threshold share a token among the
    rarest ``|s| - ceil(threshold * |s|) + 1`` of each)."""
    from collections import Counter

    freq = Counter(t for s in sets for t in s)
    index: dict[str, list[int]] = {}
    cands: set[tuple[int, int]] = set()
    for i, s in enumerate(sets):
        toks = sorted(s, key=lambda t: (freq[t], t))
        prefix = toks[: len(toks) - math.ceil(threshold * len(toks) - 1e-9) + 1] if toks else []
        for t in prefix:
            for k in index.setdefault(t, []):
                cands.add((k, i))
            index[t].append(i)
    return sorted((i, j) for i, j in cands if sets[i] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold)


#: the post-filters in the order they run (the first drop decides)
CHECKS: list[Check] = [answer_length, judge, groundedness, helpfulness, lexical_groundedness, contaminated, quality, pii,
                       near_duplicate, consistency]


def run_checks(rows: list[dict], cfg: SynthFilterConfig, env: Env, *, checks: list[Check] | None = None,
               ) -> dict[int, tuple[str, Verdict]]:
    """Row index -> (check name, verdict) of every row a check dropped or flagged; the others passed every check."""
    out: dict[int, tuple[str, Verdict]] = {}
    alive = list(range(len(rows)))
    for check in CHECKS if checks is None else checks:
        verdicts = check([rows[k] for k in alive], cfg, env)
        if len(verdicts) != len(alive):
            raise RuntimeError(f"check {check.__name__} returned {len(verdicts)} verdicts for {len(alive)} rows")
        for k, v in zip(alive, verdicts):
            if v.reason is not None and (not v.keep or k not in out):
                out[k] = (check.__name__, v)
        alive = [k for k, v in zip(alive, verdicts) if v.keep]
    return out
