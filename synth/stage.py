"""CHUNKS -> EXAMPLES: teacher generation, judging, post-filters, decontamination, consistency.

Every generated row gets a DECISIONS row (keep, drop with the failing check, or quarantine) and
carries ``source_ids = [chunk id, document id]`` so ``slmforge trace`` can walk back to the text.

Order of work for one shard:

1. generate candidates: the extractive generator, or an LLM teacher through distilabel tasks
   (grounded QA, SelfInstruct, EvolInstruct + answers). Prompts are PII-scanned before sending when
   ``scan_pii``: a hit blocks that request (quarantine ``pii_in_prompt``, spans but never values).
   A failed request or an unparseable reply is quarantined with the raw output, never a ``None`` row.
2. judge: heuristic (word overlap / answer length) or LLM-as-judge (template ``judge_v1``); judge
   parse failures are quarantined with the raw judge output.
3. filters, first failure decides: answer length, judge thresholds, ``curation.quality`` rules on
   the answer, decontamination against the eval step, PII re-scan of the output, near-duplicates
   against existing rows (``existing_steps``) and within the shard.
4. consistency: near-duplicate questions with conflicting answers are flagged (kept).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import CHUNKS, EXAMPLES, columns, decisions, quarantine
from synth.config import SynthConfig
from schemas.errors import ConfigError
from schemas.ids import derived_id
from schemas.stage import ShardResult, Stage, StageContext
from synth import extractive
from synth.tasks import (ANSWER_TEMPLATE, FOLLOWUP_TEMPLATE, GEN_TEMPLATE, JUDGE_TEMPLATE, ParseError, evol_prompt, parse_answer,
                         parse_evolved, parse_instructions, parse_judge, parse_qa, render)
from synth.teachers import Reply, Teacher, teacher_name

TEMPLATE = "grounded_qa_v1"
RAFT_TEMPLATE = "grounded_qa_raft_v1"

__all__ = ["SynthStage", "render", "ngrams", "eval_ngrams"]


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


def existing_answers(folder: Path) -> list[str]:
    """Assistant turns of the EXAMPLES rows (or ``text``) in a step's Parquet parts."""
    out: list[str] = []
    for f in sorted(folder.glob("part-*.parquet")):
        t = pq.read_table(f)
        if "messages" in t.column_names:
            for msgs in t.column("messages").to_pylist():
                out += [m["content"] for m in msgs or [] if m.get("role") == "assistant" and m.get("content")]
        elif "text" in t.column_names:
            out += [x for x in t.column("text").to_pylist() if x]
    return out


def _jaccard(a: str, b: str, n: int = 3) -> float:
    x, y = ngrams(a, n) or {tuple(extractive.words(a))}, ngrams(b, n) or {tuple(extractive.words(b))}
    return len(x & y) / len(x | y) if x | y else 1.0


@dataclass
class _Run:
    """What one shard collects: candidates, quarantined requests/replies, counters."""

    step: str
    counters: Counter = field(default_factory=Counter)
    q_ids: list = field(default_factory=list)
    q_reasons: list = field(default_factory=list)
    q_sources: list = field(default_factory=list)
    q_payloads: list = field(default_factory=list)

    def quarantine(self, rid: str, reason: str, *, source: str | None, **payload: Any) -> None:
        self.q_ids.append(rid)
        self.q_reasons.append(reason)
        self.q_sources.append(source)
        self.q_payloads.append(json.dumps(payload, sort_keys=True, default=str))
        self.counters[f"quarantined:{reason.split(':', 1)[0]}"] += 1


class SynthStage(Stage[SynthConfig]):
    kind = "map"
    version = "2"
    requires = columns(CHUNKS)
    output = EXAMPLES

    def __init__(self, config: SynthConfig) -> None:
        super().__init__(config)
        self._teacher: Teacher | None = None
        self._judge: Teacher | None = None

    # --- checks --------------------------------------------------------------------------
    def _judge_kind(self) -> str:
        j = self.config.judge
        if j.kind != "auto":
            return j.kind
        return "heuristic" if self.config.teacher.kind == "extractive" and j.teacher is None else "llm"

    def check(self, inputs) -> None:
        cfg = self.config
        if cfg.task != "grounded_qa" and cfg.teacher.kind == "extractive":
            raise ConfigError(f"synth: task {cfg.task!r} needs an LLM teacher", received="teacher kind extractive",
                              expected="teacher kind openai or transformers",
                              fix="set 'teacher: {kind: openai, model: ..., base_url: ...}' or 'task: grounded_qa'")
        if cfg.turns > 1 and (cfg.teacher.kind == "extractive" or cfg.task != "grounded_qa"):
            raise ConfigError("synth: multi-turn examples (turns > 1) need an LLM teacher and task grounded_qa",
                              received=f"turns={cfg.turns}, teacher={cfg.teacher.kind}, task={cfg.task}",
                              expected="teacher kind openai/transformers with task grounded_qa", fix="set 'turns: 1'")
        if self._judge_kind() == "llm" and cfg.teacher.kind == "extractive" and cfg.judge.teacher is None:
            raise ConfigError("synth: an LLM judge needs a model", received="judge kind llm with the extractive teacher",
                              expected="judge.teacher set to an openai/transformers teacher",
                              fix="set 'judge: {kind: llm, teacher: {kind: openai, model: ...}}' or 'judge: {kind: heuristic}'")
        if cfg.judge.teacher is not None and cfg.judge.teacher.kind == "extractive":
            raise ConfigError("synth: judge.teacher must be an LLM", received="extractive", expected="openai or transformers",
                              fix="drop judge.teacher to judge with the generation teacher")
        for key, steps in (("eval_step", [cfg.eval_step] if cfg.eval_step else []), ("existing_steps", cfg.existing_steps)):
            missing = [s for s in steps if s not in (cfg.inputs or [])]
            if missing:
                raise ConfigError(
                    f"synth: {key} must also be listed in 'inputs' so the runner hands its folder over",
                    received=str(cfg.inputs), expected=f"inputs containing {missing}",
                    fix=f"add 'inputs: [<chunk step>, {', '.join(missing)}]'",
                )
        if cfg.scan_pii:
            from schemas.errors import require

            require("presidio_analyzer", extra="pii", purpose="synth's PII scan of prompts and outputs (pii_scan)")

    def _teacher_name(self) -> str:
        return teacher_name(self.config.teacher)

    def load(self) -> None:
        cfg = self.config
        if cfg.teacher.kind != "extractive" and self._teacher is None:
            self._teacher = Teacher(cfg.teacher)
        if self._judge_kind() == "llm" and self._judge is None:
            self._judge = Teacher(cfg.judge.teacher) if cfg.judge.teacher is not None else self._teacher

    # --- teacher calls -----------------------------------------------------------------------
    def _pii_blocked(self, prompts: list[list[dict]], ids: list[str], sources: list[str | None], run: _Run,
                     what: str, extra: list[dict]) -> set[int]:
        """Indices of prompts with PII/secrets: never sent; quarantined with entity types and offsets."""
        if not self.config.scan_pii or not prompts:
            return set()
        from curation.pii import find_pii
        from curation.pii.config import PiiConfig

        texts = ["\n".join(m["content"] for m in p) for p in prompts]
        hits = find_pii(texts, config=PiiConfig(mode=self.config.pii_mode))
        blocked = set()
        for i, h in enumerate(hits):
            if h:
                blocked.add(i)
                run.quarantine(ids[i], "pii_in_prompt", source=sources[i], request=what, **extra[i],
                               entities=[{k: s.get(k) for k in ("entity_type", "start", "end", "score")} for s in h])
                for s in h:
                    run.counters[f"pii_in_prompt:{s['entity_type']}"] += 1
        return blocked

    def _complete(self, teacher: Teacher, factory, rows: list[dict], ids: list[str], sources: list[str | None],
                  run: _Run, *, what: str, ctx: StageContext, extra: list[dict]) -> dict[int, Reply]:
        """Send the task's prompt for each row (PII-scanned first); index -> Reply for those sent."""
        from synth.tasks import prompt_side

        engine = teacher.cfg.engine
        if engine == "direct":
            teacher.load()
        task = factory(teacher.llm if engine == "direct" else _unloaded(teacher))
        with prompt_side(task):
            prompts = [task.format_input(r) for r in rows]
        blocked = self._pii_blocked(prompts, ids, sources, run, what, extra)
        send = [i for i in range(len(rows)) if i not in blocked]
        if engine == "direct":
            replies = teacher.generate([prompts[i] for i in send])
            return dict(zip(send, replies))
        from synth.pipelines import run_task_pipeline

        name = task.name
        out_rows = run_task_pipeline(lambda: factory(_unloaded(teacher)), [{**rows[i], "_key": i} for i in send],
                                     cache_root=ctx.work_dir / "distilabel", name=name, batch_size=teacher.cfg.concurrency)
        got: dict[int, Reply] = {}
        for r in out_rows:
            meta = r.get("distilabel_metadata") or {}
            stats = meta.get(f"statistics_{name}") or {}
            text = meta.get(f"raw_output_{name}")
            got[int(r["_key"])] = Reply(text, None if text is not None else "TeacherError: no output (see pipeline log)",
                                        int(stats.get("input_tokens") or 0), int(stats.get("output_tokens") or 0))
        for i in send:
            got.setdefault(i, Reply(None, "TeacherError: the pipeline returned no row"))
        teacher.tally.requests += len(got)
        teacher.tally.failures += sum(r.text is None for r in got.values())
        teacher.tally.input_tokens += sum(r.input_tokens for r in got.values())
        teacher.tally.output_tokens += sum(r.output_tokens for r in got.values())
        teacher.tally.max_in_flight = max(teacher.tally.max_in_flight, min(len(send), teacher.cfg.concurrency))
        return got

    def _parsed(self, replies: dict[int, Reply], parse, ids: list[str], sources: list, run: _Run, *, what: str,
                extra: list[dict]) -> dict[int, Any]:
        """Parse each reply; a failed request or unparseable reply is quarantined with the raw output."""
        ok = {}
        for i, rep in replies.items():
            if rep.text is None:
                run.quarantine(ids[i], f"{what}_error", source=sources[i], error=rep.error, **extra[i])
                continue
            try:
                ok[i] = parse(rep.text)
            except ParseError as exc:
                run.quarantine(ids[i], f"{what}_parse_error:{exc.reason}", source=sources[i], raw=rep.text,
                               error=str(exc), **extra[i])
        return ok

    # --- generation ------------------------------------------------------------------------
    def _extractive(self, chunks: list[dict], run: _Run) -> list[dict]:
        cfg, out = self.config, []
        for chunk in chunks:
            try:
                pairs = extractive.generate(chunk["text"], heading=chunk["heading"], source=chunk["source"],
                                            limit=cfg.teacher.max_questions_per_chunk)
            except Exception as exc:  # a chunk the generator cannot handle is quarantined, not lost
                run.quarantine(chunk["id"], f"generator_error:{type(exc).__name__}", source=chunk["source"],
                               chunk=chunk["id"], error=str(exc))
                continue
            for qa in pairs:
                out.append({"chunk": chunk, "question": qa.question, "answer": qa.answer, "kind": qa.kind,
                            "id": derived_id(chunk["id"], "example", TEMPLATE, qa.question),
                            "meta": {"kind": qa.kind, "answer_span": [qa.span_start, qa.span_end]}})
        return out

    def _llm(self, chunks: list[dict], run: _Run, ctx: StageContext) -> list[dict]:
        from synth.tasks import self_instruct_task, text_task

        cfg, teacher = self.config, self._teacher
        assert teacher is not None
        n = cfg.samples_per_chunk
        out: list[dict] = []
        if cfg.task == "grounded_qa":
            reqs = [(c, k) for c in chunks for k in range(n)]
            parsed = self._ask(teacher, lambda llm: text_task(llm, GEN_TEMPLATE, ["passage", "source", "heading"]),
                               [{"passage": c["text"], "source": c["source"], "heading": c["heading"]} for c, _ in reqs],
                               ids=[derived_id(c["id"], "synth-request", GEN_TEMPLATE, k) for c, k in reqs],
                               chunks=[c for c, _ in reqs], extra=[{"template": GEN_TEMPLATE, "sample": k} for _, k in reqs],
                               parse=parse_qa, what="teacher", run=run, ctx=ctx)
            for i, (q, a) in sorted(parsed.items()):
                c = reqs[i][0]
                out.append({"chunk": c, "question": q, "answer": a, "kind": "grounded_qa", "gen_template": GEN_TEMPLATE,
                            "id": derived_id(c["id"], "example", GEN_TEMPLATE, q), "meta": {"sample": reqs[i][1]},
                            "followups": []})
            for t in range(1, cfg.turns):  # multi-turn: one follow-up request per growing conversation per round
                live = [c for c in out if len(c["followups"]) == t - 1]
                parsed = self._ask(teacher, lambda llm: text_task(llm, FOLLOWUP_TEMPLATE, ["passage", "source", "heading", "turns"]),
                                   [{"passage": c["chunk"]["text"], "source": c["chunk"]["source"], "heading": c["chunk"]["heading"],
                                     "turns": [{"question": q, "answer": a} for q, a in [(c["question"], c["answer"]), *c["followups"]]]}
                                    for c in live],
                                   ids=[derived_id(c["id"], "synth-request", FOLLOWUP_TEMPLATE, t) for c in live],
                                   chunks=[c["chunk"] for c in live],
                                   extra=[{"template": FOLLOWUP_TEMPLATE, "turn": t + 1, "example": c["id"]} for c in live],
                                   parse=parse_qa, what="teacher", run=run, ctx=ctx)
                for i, qa in parsed.items():
                    live[i]["followups"].append(qa)
            for c in out:
                if cfg.turns > 1:
                    c["meta"]["turns"] = 1 + len(c["followups"])
                    if c["followups"]:
                        c["gen_template"] = f"{GEN_TEMPLATE}+{FOLLOWUP_TEMPLATE}"
            return out
        # self_instruct / evol_instruct: instructions from each chunk, (evolved,) then answered from the chunk
        parsed = self._ask(teacher, lambda llm: self_instruct_task(llm, num_instructions=n), [{"input": c["text"]} for c in chunks],
                           ids=[derived_id(c["id"], "synth-request", "self_instruct", n) for c in chunks], chunks=chunks,
                           extra=[{"template": "distilabel:self-instruct"} for _ in chunks],
                           parse=lambda t: parse_instructions(t, limit=n), what="teacher", run=run, ctx=ctx)
        items = [(chunks[i], ins, None) for i, lst in sorted(parsed.items()) for ins in lst]
        template = "self_instruct"
        if cfg.task == "evol_instruct":
            template = "evol_instruct"
            evo = [evol_prompt(ins) for _, ins, _ in items]
            evolved = self._ask(teacher, lambda llm: text_task(llm, "raw_prompt_v1", ["prompt"]), [{"prompt": p} for _, p in evo],
                                ids=[derived_id(c["id"], "synth-request", "evol", ins) for c, ins, _ in items],
                                chunks=[c for c, _, _ in items],
                                extra=[{"template": f"distilabel:evol-instruct:{m}", "instruction": ins}
                                       for (_, ins, _), (m, _) in zip(items, evo)],
                                parse=parse_evolved, what="teacher", run=run, ctx=ctx)
            items = [(items[i][0], ev, evo[i][0]) for i, ev in sorted(evolved.items())]
        answers = self._ask(teacher, lambda llm: text_task(llm, ANSWER_TEMPLATE, ["passage", "source", "heading", "instruction"]),
                            [{"passage": c["text"], "source": c["source"], "heading": c["heading"], "instruction": ins}
                             for c, ins, _ in items],
                            ids=[derived_id(c["id"], "synth-request", ANSWER_TEMPLATE, ins) for c, ins, _ in items],
                            chunks=[c for c, _, _ in items],
                            extra=[{"template": ANSWER_TEMPLATE, "instruction": ins} for _, ins, _ in items],
                            parse=parse_answer, what="teacher", run=run, ctx=ctx)
        for i, a in sorted(answers.items()):
            c, ins, mutation = items[i]
            meta = {"mutation": mutation} if mutation else {}
            out.append({"chunk": c, "question": ins, "answer": a, "kind": template, "gen_template": f"{template}+{ANSWER_TEMPLATE}",
                        "id": derived_id(c["id"], "example", template, ins), "meta": meta})
        return out

    # --- judging ---------------------------------------------------------------------------
    def _judge_all(self, cands: list[dict], run: _Run, ctx: StageContext) -> list[dict]:
        if self._judge_kind() == "heuristic":
            for c in cands:
                c["judge"] = extractive.judge(c["question"], c["answer"], c["chunk"]["text"])
            return cands
        from synth.tasks import text_task

        judge = self._judge
        assert judge is not None
        # one judge call per turn; an example's score per criterion is its worst turn's
        turns = [(k, q, a) for k, c in enumerate(cands) for q, a in [(c["question"], c["answer"]), *c.get("followups", [])]]
        nth: Counter = Counter()
        ids = []
        for k, _, _ in turns:
            ids.append(cands[k]["id"] if nth[k] == 0 else derived_id(cands[k]["id"], "judge-turn", nth[k] + 1))
            nth[k] += 1
        scores = self._ask(judge, lambda llm: text_task(llm, JUDGE_TEMPLATE, ["passage", "question", "answer"]),
                           [{"passage": cands[k]["chunk"]["text"], "question": q, "answer": a} for k, q, a in turns],
                           ids=ids, chunks=[cands[k]["chunk"] for k, _, _ in turns],
                           extra=[{"template": JUDGE_TEMPLATE, "question": q, "answer": a} for _, q, a in turns],
                           parse=parse_judge, what="judge", run=run, ctx=ctx)
        per: dict[int, list[dict]] = {}
        for i, (k, _, _) in enumerate(turns):
            per.setdefault(k, []).append(scores.get(i))
        for k, got in per.items():
            if all(s is not None for s in got):  # a turn without a verdict is quarantined; so is its example
                cands[k]["judge"] = {crit: min(s[crit] for s in got) for crit in got[0]}
        return [c for c in cands if "judge" in c]

    def _ask(self, teacher: Teacher, factory, rows: list[dict], *, ids: list[str], chunks: list[dict], extra: list[dict],
             parse, what: str, run: _Run, ctx: StageContext) -> dict[int, Any]:
        """Prompt, PII-scan, send, parse: index -> parsed reply; everything else is quarantined with its reason."""
        srcs = [c["source"] for c in chunks]
        extra = [{"chunk": c["id"], **e} for c, e in zip(chunks, extra)]
        replies = self._complete(teacher, factory, rows, ids, srcs, run, what=what, ctx=ctx, extra=extra)
        return self._parsed(replies, parse, ids, srcs, run, what=what, extra=extra)

    # --- rows ------------------------------------------------------------------------------
    def _user_turn(self, cand: dict, chunks: list[dict]) -> tuple[str, str]:
        cfg, chunk = self.config, cand["chunk"]
        if not cfg.include_context:
            return cand["question"], "closed_book_v1"
        others = [c for c in chunks if c["id"] != chunk["id"]]
        if cfg.distractors and others:
            rnd = random.Random(cand["id"])
            picked = rnd.sample(others, min(cfg.distractors, len(others)))
            passages = [*picked, chunk]
            rnd.shuffle(passages)
            cand["meta"]["oracle_position"] = passages.index(chunk) + 1
            cand["meta"]["distractor_ids"] = [p["id"] for p in picked]
            return render(RAFT_TEMPLATE, passages=passages, question=cand["question"]), RAFT_TEMPLATE
        return render(TEMPLATE, passage=chunk["text"], question=cand["question"], source=chunk["source"],
                      heading=chunk["heading"]), TEMPLATE

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        self.check({})
        self.load()
        cfg = self.config
        run = _Run(ctx.step)
        contam: set = set()
        if cfg.eval_step:
            contam = eval_ngrams(Path(ctx.inputs[cfg.eval_step]), cfg.decontam_ngram)
        chunks = table.select(["id", "doc_id", "text", "source", "heading"]).to_pylist()
        cands = self._extractive(chunks, run) if cfg.teacher.kind == "extractive" else self._llm(chunks, run, ctx)
        unique: dict[str, dict] = {}
        for c in cands:  # the same question twice from one chunk (sampling): one row, one judge call, one decision
            if c["id"] in unique:
                run.counters["dropped:same_question"] += 1
            else:
                unique[c["id"]] = c
        run.counters["candidates"] = len(unique)
        cands = self._judge_all(list(unique.values()), run, ctx)
        teacher = self._teacher_name()
        judge_name = "heuristic-v1" if self._judge_kind() == "heuristic" else self._judge.name  # type: ignore[union-attr]
        rows: list[dict] = []
        for c in cands:
            user, user_template = self._user_turn(c, chunks)
            gen = c.get("gen_template")
            tmpl = f"{user_template}:{c['kind']}" if gen is None else f"{gen}|{user_template}"
            judge_score = min(c["judge"].values())
            rows.append({
                "id": c["id"],
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": c["answer"]},
                             *[m for q, a in c.get("followups", []) for m in ({"role": "user", "content": q},
                                                                             {"role": "assistant", "content": a})]],
                "origin": "synthetic", "source_ids": [c["chunk"]["id"], c["chunk"]["doc_id"]], "teacher": teacher,
                "template": tmpl, "judge_score": judge_score, "split": None,
                "meta": {**c["meta"], "kind": c["kind"], "judge": c["judge"], "judge_by": judge_name, "question": c["question"],
                         "lexical_groundedness": min(extractive.judge(q, a, c["chunk"]["text"])["groundedness"]
                                                     for q, a in [(c["question"], c["answer"]), *c.get("followups", [])])},
            })
        run.counters["generated"] = len(rows)
        reason = self._filter(rows, contam, run, ctx)
        conflicts = self._consistency([r for r in rows if r["id"] not in reason])
        kept = [r for r in rows if r["id"] not in reason]
        for r in rows:
            r["meta"] = json.dumps(r["meta"], sort_keys=True)
        for rid, (why, _) in reason.items():
            run.counters[f"dropped:{why.split(':', 1)[0]}"] += 1
            if why.startswith("quality:"):
                run.counters[f"dropped:{why}"] += 1
        run.counters["kept"] = len(kept)
        run.counters["flagged:conflict"] = len(conflicts)
        for t, prefix in ((self._teacher, "teacher"), (self._judge if self._judge is not self._teacher else None, "judge")):
            if t is not None:
                run.counters.update(t.tally.counters(prefix, t.cfg))
                t.tally = type(t.tally)()  # per-shard figures
        dec_parts = [
            decisions([r["id"] for r in kept], stage=ctx.step, action="keep",
                      reason=["consistency_conflict" if r["id"] in conflicts else "judged_grounded" for r in kept],
                      score=[r["judge_score"] for r in kept], detail=[{"source_ids": r["source_ids"]} for r in kept]),
            decisions([i for i in reason], stage=ctx.step, action="drop",
                      reason=[w for w, _ in reason.values()], score=[s for _, s in reason.values()]),
        ]
        if run.q_ids:
            dec_parts.append(decisions(run.q_ids, stage=ctx.step, action="quarantine", reason=run.q_reasons))
        ctx.progress(table.num_rows)
        out = pa.Table.from_pylist(kept, schema=EXAMPLES)
        return ShardResult(out, pa.concat_tables(dec_parts),
                           quarantine(run.q_ids, stage=ctx.step, reason=run.q_reasons, source=run.q_sources,
                                      payload=run.q_payloads),
                           run.counters)

    def _filter(self, rows: list[dict], contam: set, run: _Run, ctx: StageContext) -> dict[str, tuple[str, float | None]]:
        """id -> (reason, score) of every dropped row; the first failing check decides."""
        cfg = self.config
        reason: dict[str, tuple[str, float | None]] = {}
        qcfg = None
        if cfg.quality:
            from curation.quality import RULES
            from curation.config import FilterConfig

            qcfg = FilterConfig.model_validate({"stage": "filter", **{k: None for k in RULES}, **cfg.quality})
        for r in rows:
            answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
            ans = "\n".join(answers)
            j = r["meta"]["judge"]
            bad_len = [len(a) for a in answers if not cfg.min_answer_chars <= len(a) <= cfg.max_answer_chars]
            if bad_len:
                reason[r["id"]] = ("answer_length", float(bad_len[0]))
            elif r["judge_score"] < cfg.min_judge_score:
                reason[r["id"]] = ("judge_below_threshold", r["judge_score"])
            elif cfg.judge.min_groundedness is not None and j.get("groundedness", 1.0) < cfg.judge.min_groundedness:
                reason[r["id"]] = ("groundedness_below_threshold", j["groundedness"])
            elif cfg.judge.min_helpfulness is not None and j.get("helpfulness", 1.0) < cfg.judge.min_helpfulness:
                reason[r["id"]] = ("helpfulness_below_threshold", j["helpfulness"])
            elif (cfg.judge.min_lexical_groundedness is not None
                  and r["meta"]["lexical_groundedness"] < cfg.judge.min_lexical_groundedness):
                reason[r["id"]] = ("lexical_groundedness_below_threshold", r["meta"]["lexical_groundedness"])
            elif contam and (ngrams(r["meta"]["question"] + "\n" + "\n".join(m["content"] for m in r["messages"][2:]) + "\n" + ans,
                                    cfg.decontam_ngram) & contam):
                reason[r["id"]] = ("contaminated", None)
            elif qcfg is not None:
                from curation.quality import failing_rules, score_text

                failed = next((f for f in (failing_rules(score_text(a), qcfg) for a in answers) if f), None)
                if failed:
                    reason[r["id"]] = (f"quality:{failed[0][0]}", float(failed[0][1]))
        if cfg.scan_pii:
            from curation.pii import find_pii
            from curation.pii.config import PiiConfig

            alive = [r for r in rows if r["id"] not in reason]
            hits = find_pii(["\n".join(m["content"] for m in r["messages"]) for r in alive],
                            config=PiiConfig(mode=cfg.pii_mode))
            for r, h in zip(alive, hits):
                if h:
                    reason[r["id"]] = ("pii", max(float(x.get("score") or 0.0) for x in h))
                    run.counters[f"pii:{h[0]['entity_type']}"] += 1
        alive = [r for r in rows if r["id"] not in reason]
        existing: list[str] = []
        for s in cfg.existing_steps:
            existing += existing_answers(Path(ctx.inputs[s]))
        if cfg.dedup_threshold is not None and len(alive) + len(existing) > 1 and alive:
            from curation.dedup.near import cluster_texts
            from curation.dedup.config import NearDedupConfig

            # keyed on the answer: the same quoted passage under a differently worded question adds nothing
            ex_ids = [f"existing:{i}" for i in range(len(existing))]
            clusters = cluster_texts(ex_ids + [r["id"] for r in alive],
                                     existing + ["\n".join(m["content"] for m in r["messages"][1::2]) for r in alive],
                                     config=NearDedupConfig(threshold=cfg.dedup_threshold))
            ex_clusters = set(clusters[: len(existing)])
            first: dict = {}
            for r, c in zip(alive, clusters[len(existing):]):
                if c in ex_clusters:
                    reason[r["id"]] = ("near_duplicate_existing", None)
                elif c in first:
                    reason[r["id"]] = ("near_duplicate", None)
                    r["meta"]["duplicate_of"] = first[c]
                else:
                    first[c] = r["id"]
        return reason

    def _consistency(self, alive: list[dict]) -> set[str]:
        """Near-duplicate questions with conflicting answers: flagged in meta (kept; the annotate stage routes them)."""
        cfg = self.config
        qsets = [set(extractive.words(r["meta"]["question"])) for r in alive]
        conflicts: set[str] = set()
        for i in range(len(alive)):
            for j in range(i + 1, len(alive)):
                a, b = qsets[i], qsets[j]
                if not a or len(a & b) / len(a | b) < cfg.conflict_question_jaccard:
                    continue
                if _jaccard(alive[i]["messages"][1]["content"], alive[j]["messages"][1]["content"]) < cfg.conflict_answer_jaccard:
                    alive[i]["meta"].setdefault("conflict_with", alive[j]["id"])
                    alive[j]["meta"].setdefault("conflict_with", alive[i]["id"])
                    conflicts |= {alive[i]["id"], alive[j]["id"]}
        return conflicts


def _unloaded(teacher: Teacher):
    """A fresh, unloaded distilabel LLM of the teacher's config (for the pipeline engine's subprocesses)."""
    from synth.teachers import build_llm

    return build_llm(teacher.cfg)
