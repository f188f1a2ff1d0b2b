"""CHUNKS -> EXAMPLES: teacher generation, judging, post-filters, decontamination, consistency.

Every generated row gets a DECISIONS row (keep, drop with the failing check, or quarantine) and
carries ``source_ids = [chunk id, document id]`` so ``slmforge trace`` can walk back to the text.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import CHUNKS, EXAMPLES, columns, decisions, quarantine
from schemas.config.synth import SynthConfig
from schemas.errors import ConfigError
from schemas.ids import derived_id
from schemas.stage import ShardResult, Stage, StageContext
from synth import extractive

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE = "grounded_qa_v1"


def render(name: str, **values: object) -> str:
    """Fill a versioned template of ``synth/templates`` (``{{ var }}`` and ``{% if var %}`` blocks)."""
    import re

    text = (TEMPLATE_DIR / f"{name}.j2").read_text(encoding="utf-8")
    text = re.sub(r"\{#.*?#\}\n?", "", text, flags=re.S)
    text = re.sub(r"\{% if (\w+) %\}(.*?)\{% endif %\}", lambda m: m.group(2) if values.get(m.group(1)) else "", text, flags=re.S)
    return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values.get(m.group(1), "")), text).strip()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = extractive.words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def eval_ngrams(folder: Path, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of every message/text in the Parquet files of a held-out eval step."""
    grams: set[tuple[str, ...]] = set()
    for f in sorted(folder.glob("*.parquet")):
        if f.name == "decisions.parquet":
            continue
        t = pq.read_table(f)
        if "messages" in t.column_names:
            for msgs in t.column("messages").to_pylist():
                for m in msgs or []:
                    grams |= ngrams(m.get("content") or "", n)
        elif "text" in t.column_names:
            for x in t.column("text").to_pylist():
                grams |= ngrams(x or "", n)
    return grams


def _jaccard(a: str, b: str, n: int = 3) -> float:
    x, y = ngrams(a, n) or {tuple(extractive.words(a))}, ngrams(b, n) or {tuple(extractive.words(b))}
    return len(x & y) / len(x | y) if x | y else 1.0


class SynthStage(Stage[SynthConfig]):
    kind = "map"
    version = "1"
    requires = columns(CHUNKS)
    output = EXAMPLES

    def check(self, inputs) -> None:
        if self.config.teacher.kind != "extractive":
            raise ConfigError(
                f"synth: teacher kind {self.config.teacher.kind!r} is not available in this release",
                received=self.config.teacher.kind, expected="extractive",
                fix="set 'teacher: {kind: extractive}' (OpenAI-compatible and transformers teachers are planned)",
            )
        if self.config.eval_step and self.config.eval_step not in (self.config.inputs or []):
            raise ConfigError(
                "synth: eval_step must also be listed in 'inputs' so the runner hands its folder over",
                received=str(self.config.inputs), expected=f"inputs containing {self.config.eval_step!r}",
                fix=f"add 'inputs: [<chunk step>, {self.config.eval_step}]'",
            )

    def _teacher_name(self) -> str:
        t = self.config.teacher
        return "extractive-v1" if t.kind == "extractive" else f"{t.kind}:{t.model}"

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        self.check({})
        cfg = self.config
        counters: Counter = Counter()
        contam: set = set()
        if cfg.eval_step:
            contam = eval_ngrams(Path(ctx.inputs[cfg.eval_step]), cfg.decontam_ngram)
        rows: list[dict] = []
        dec_parts: list[pa.Table] = []
        q_ids, q_reasons, q_payloads, q_sources = [], [], [], []
        teacher = self._teacher_name()
        for chunk in table.select(["id", "doc_id", "text", "source", "heading"]).to_pylist():
            try:
                pairs = extractive.generate(chunk["text"], heading=chunk["heading"], source=chunk["source"],
                                            limit=cfg.teacher.max_questions_per_chunk)
            except Exception as exc:  # a chunk the generator cannot handle is quarantined, not lost
                q_ids.append(chunk["id"]); q_reasons.append(f"generator_error:{type(exc).__name__}")
                q_payloads.append(json.dumps({"chunk": chunk["id"], "error": str(exc)})); q_sources.append(chunk["source"])
                continue
            for qa in pairs:
                user = render(TEMPLATE, passage=chunk["text"], question=qa.question, source=chunk["source"],
                              heading=chunk["heading"]) if cfg.include_context else qa.question
                scores = extractive.judge(qa.question, qa.answer, chunk["text"])
                judge_score = min(scores.values())
                rows.append({
                    "id": derived_id(chunk["id"], "example", TEMPLATE, qa.question),
                    "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": qa.answer}],
                    "origin": "synthetic", "source_ids": [chunk["id"], chunk["doc_id"]], "teacher": teacher,
                    "template": f"{TEMPLATE}:{qa.kind}" if cfg.include_context else f"closed_book_v1:{qa.kind}",
                    "judge_score": judge_score, "split": None,
                    "meta": {"kind": qa.kind, "answer_span": [qa.span_start, qa.span_end], "judge": scores,
                             "question": qa.question},
                })
        counters["generated"] = len(rows)
        # filters, in order; the first failing check decides
        reason: dict[str, tuple[str, float | None]] = {}
        for r in rows:
            ans = r["messages"][1]["content"]
            if not cfg.min_answer_chars <= len(ans) <= cfg.max_answer_chars:
                reason[r["id"]] = ("answer_length", float(len(ans)))
            elif r["judge_score"] < cfg.min_judge_score:
                reason[r["id"]] = ("judge_below_threshold", r["judge_score"])
            elif contam and (ngrams(r["meta"]["question"] + "\n" + ans, cfg.decontam_ngram) & contam):
                reason[r["id"]] = ("contaminated", None)
        if cfg.pii_scan:
            from curation.pii import find_pii

            alive = [r for r in rows if r["id"] not in reason]
            hits = find_pii([r["messages"][0]["content"] + "\n" + r["messages"][1]["content"] for r in alive])
            for r, h in zip(alive, hits):
                if h:
                    reason[r["id"]] = ("pii", max(float(x.get("score") or 0.0) for x in h))
                    counters[f"pii:{h[0]['entity_type']}"] += 1
        alive = [r for r in rows if r["id"] not in reason]
        if cfg.dedup_threshold is not None and len(alive) > 1:
            from curation.near_dedup import cluster_texts
            from schemas.config.dedup import NearDedupConfig

            # keyed on the answer: the same quoted passage under a differently worded question adds nothing
            texts = [r["messages"][1]["content"] for r in alive]
            clusters = cluster_texts([r["id"] for r in alive], texts,
                                     config=NearDedupConfig(threshold=cfg.dedup_threshold))
            first: dict = {}
            for r, c in zip(alive, clusters):
                if c in first:
                    reason[r["id"]] = ("near_duplicate", None)
                    r["meta"]["duplicate_of"] = first[c]
                else:
                    first[c] = r["id"]
        # consistency: near-duplicate questions (word-set Jaccard >= 0.8) with conflicting answers
        # (answer 3-gram Jaccard < 0.5) are flagged and kept; the annotate stage routes them to review
        alive = [r for r in rows if r["id"] not in reason]
        qsets = [set(extractive.words(r["meta"]["question"])) for r in alive]
        conflicts = []
        for i in range(len(alive)):
            for j in range(i + 1, len(alive)):
                a, b = qsets[i], qsets[j]
                if not a or len(a & b) / len(a | b) < 0.8:
                    continue
                if _jaccard(alive[i]["messages"][1]["content"], alive[j]["messages"][1]["content"]) < 0.5:
                    alive[i]["meta"].setdefault("conflict_with", alive[j]["id"])
                    alive[j]["meta"].setdefault("conflict_with", alive[i]["id"])
                    conflicts += [alive[i]["id"], alive[j]["id"]]
        kept = [r for r in rows if r["id"] not in reason]
        for r in rows:
            r["meta"] = json.dumps(r["meta"], sort_keys=True)
        for rid, (why, _) in reason.items():
            counters[f"dropped:{why}"] += 1
        counters["kept"] = len(kept)
        counters["flagged:conflict"] = len(set(conflicts))
        flagged = set(conflicts)
        dec_parts.append(decisions([r["id"] for r in kept], stage=ctx.step, action="keep",
                                   reason=["consistency_conflict" if r["id"] in flagged else "judged_grounded" for r in kept],
                                   score=[r["judge_score"] for r in kept],
                                   detail=[{"source_ids": r["source_ids"]} for r in kept]))
        dropped = list(reason.items())
        dec_parts.append(decisions([i for i, _ in dropped], stage=ctx.step, action="drop",
                                   reason=[w for _, (w, _s) in dropped], score=[s for _, (_w, s) in dropped]))
        if q_ids:
            dec_parts.append(decisions(q_ids, stage=ctx.step, action="quarantine", reason=q_reasons))
        ctx.progress(table.num_rows)
        out = pa.Table.from_pylist(kept, schema=EXAMPLES)
        return ShardResult(out, pa.concat_tables(dec_parts),
                           quarantine(q_ids, stage=ctx.step, reason=q_reasons, source=q_sources, payload=q_payloads),
                           counters)
