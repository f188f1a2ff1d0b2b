"""Question -> answer generation and judging: the part of ``synth`` that calls a teacher.

:class:`Generator` works on plain chunk dicts (``id, doc_id, text, source, heading``) and is usable on its
own (e.g. by RAFT rows built from retrieved passages): ``generate(chunks)`` gives candidates, ``judge(cands)``
adds each candidate's judge scores. Cheap constructor, expensive :meth:`Generator.load`.

* generation: the extractive generator, or an LLM teacher through distilabel tasks (grounded QA,
  SelfInstruct, EvolInstruct + answers, multi-turn follow-ups). Prompts are PII-scanned before sending when
  ``scan_pii``: a hit blocks that request (quarantine ``pii_in_prompt``, spans but never values). A failed
  request or an unparseable reply is quarantined with the raw output, never a ``None`` row.
* judging: heuristic (word overlap / answer length) or LLM-as-judge (template ``judge_v1``, one call per
  turn, an example's score per criterion is its worst turn's); parse failures are quarantined.

A candidate is a dict: ``chunk, question, answer, kind, id, meta`` (+ ``followups``, ``gen_template``,
and ``judge`` once judged). Nothing here applies a threshold: that is ``synth_filter``'s job.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.ids import derived_id
from synth import extractive
from synth.config import SynthConfig
from synth.tasks import (ANSWER_TEMPLATE, FOLLOWUP_TEMPLATE, GEN_TEMPLATE, JUDGE_TEMPLATE, ParseError, evol_prompt, parse_answer,
                         parse_evolved, parse_instructions, parse_judge, parse_qa)
from synth.teachers import Reply, Teacher, teacher_name

TEMPLATE = "grounded_qa_v1"
HEURISTIC_JUDGE = "heuristic-v1"


@dataclass
class Collector:
    """What one batch of chunks collects besides candidates: quarantined requests/replies and counters."""

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


class Generator:
    """The teacher and judge of one :class:`SynthConfig`."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self._nlp = None  # the spaCy pipeline of sentence_questions, loaded once per process
        self.teacher: Teacher | None = None
        self.judge_teacher: Teacher | None = None

    def judge_kind(self) -> str:
        j = self.config.judge
        if j.kind != "auto":
            return j.kind
        return "heuristic" if self.config.teacher.kind == "extractive" and j.teacher is None else "llm"

    @property
    def teacher_name(self) -> str:
        return teacher_name(self.config.teacher)

    @property
    def judge_name(self) -> str:
        return HEURISTIC_JUDGE if self.judge_kind() == "heuristic" else self.judge_teacher.name  # type: ignore[union-attr]

    def load(self) -> Generator:
        cfg = self.config
        if cfg.teacher.kind != "extractive" and self.teacher is None:
            self.teacher = Teacher(cfg.teacher)
        if self.judge_kind() == "llm" and self.judge_teacher is None:
            self.judge_teacher = Teacher(cfg.judge.teacher) if cfg.judge.teacher is not None else self.teacher
        return self

    def tally_counters(self) -> Counter:
        """Requests, failures, tokens (and cost) of the teacher and a separate judge since the last call; resets them."""
        out: Counter = Counter()
        judge = self.judge_teacher if self.judge_teacher is not self.teacher else None
        for t, prefix in ((self.teacher, "teacher"), (judge, "judge")):
            if t is not None:
                out.update(t.tally.counters(prefix, t.cfg))
                t.tally = type(t.tally)()
        return out

    # --- generation ------------------------------------------------------------------------
    def generate(self, chunks: list[dict], run: Collector, *, work_dir: Path) -> list[dict]:
        """Candidates from chunks, one id per distinct question of a chunk (a repeat is counted, not kept twice)."""
        cands = self._extractive(chunks, run) if self.config.teacher.kind == "extractive" else self._llm(chunks, run, work_dir)
        unique: dict[str, dict] = {}
        for c in cands:  # the same question twice from one chunk (sampling): one row, one judge call, one decision
            if c["id"] in unique:
                run.counters["dropped:same_question"] += 1
            else:
                unique[c["id"]] = c
        return list(unique.values())

    def _extractive(self, chunks: list[dict], run: Collector) -> list[dict]:
        out = []
        per_chunk = self._sentence_questions(chunks)
        for chunk, sentence_qas in zip(chunks, per_chunk):
            try:
                if isinstance(sentence_qas, Exception):  # spaCy failed on this chunk alone (_sentence_questions)
                    raise sentence_qas
                pairs = extractive.generate(chunk["text"], heading=chunk["heading"], source=chunk["source"],
                                            limit=self.config.teacher.max_questions_per_chunk,
                                            title=chunk.get("title"))
            except Exception as exc:  # a chunk the generator cannot handle is quarantined, not lost
                run.quarantine(chunk["id"], f"generator_error:{type(exc).__name__}", source=chunk["source"],
                               chunk=chunk["id"], error=str(exc))
                continue
            asked = {qa.question for qa in pairs}
            pairs += [qa for qa in sentence_qas if qa.question not in asked]
            for qa in pairs:
                out.append({"chunk": chunk, "question": qa.question, "answer": qa.answer, "kind": qa.kind,
                            "id": derived_id(chunk["id"], "example", TEMPLATE, qa.question),
                            "meta": {"kind": qa.kind, "answer_span": [qa.span_start, qa.span_end]}})
        return out

    def _sentence_questions(self, chunks: list[dict]) -> list[list | Exception]:
        """Sentence questions per chunk (synth/sentences.py); empty lists when ``sentence_questions`` is 0. When the
        spaCy pipeline fails on the batch, each chunk is parsed alone, and a chunk it fails on gets the exception
        (quarantined by the caller, with the chunk's other questions) instead of failing the shard."""
        t = self.config.teacher
        if not t.sentence_questions:
            return [[] for _ in chunks]
        from synth import sentences

        if self._nlp is None:
            self._nlp = sentences.load_pipeline(t.spacy_model)
        try:
            return sentences.generate_many(self._nlp, chunks, limit=t.sentence_questions)
        except Exception:  # noqa: BLE001 - narrowed to the chunk below, where it is quarantined with its cause
            out: list[list | Exception] = []
            for chunk in chunks:
                try:
                    out.append(sentences.generate_many(self._nlp, [chunk], limit=t.sentence_questions)[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def _llm(self, chunks: list[dict], run: Collector, work_dir: Path) -> list[dict]:
        from synth.tasks import self_instruct_task, text_task

        cfg, teacher = self.config, self.teacher
        assert teacher is not None
        n = cfg.samples_per_chunk
        ask = dict(run=run, work_dir=work_dir)
        out: list[dict] = []
        if cfg.task == "grounded_qa":
            reqs = [(c, k) for c in chunks for k in range(n)]
            parsed = self._ask(teacher, lambda llm: text_task(llm, GEN_TEMPLATE, ["passage", "source", "heading"]),
                               [{"passage": c["text"], "source": c["source"], "heading": c["heading"]} for c, _ in reqs],
                               ids=[derived_id(c["id"], "synth-request", GEN_TEMPLATE, k) for c, k in reqs],
                               chunks=[c for c, _ in reqs], extra=[{"template": GEN_TEMPLATE, "sample": k} for _, k in reqs],
                               parse=parse_qa, what="teacher", **ask)
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
                                   parse=parse_qa, what="teacher", **ask)
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
                           parse=lambda t: parse_instructions(t, limit=n), what="teacher", **ask)
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
                                parse=parse_evolved, what="teacher", **ask)
            items = [(items[i][0], ev, evo[i][0]) for i, ev in sorted(evolved.items())]
        answers = self._ask(teacher, lambda llm: text_task(llm, ANSWER_TEMPLATE, ["passage", "source", "heading", "instruction"]),
                            [{"passage": c["text"], "source": c["source"], "heading": c["heading"], "instruction": ins}
                             for c, ins, _ in items],
                            ids=[derived_id(c["id"], "synth-request", ANSWER_TEMPLATE, ins) for c, ins, _ in items],
                            chunks=[c for c, _, _ in items],
                            extra=[{"template": ANSWER_TEMPLATE, "instruction": ins} for _, ins, _ in items],
                            parse=parse_answer, what="teacher", **ask)
        for i, a in sorted(answers.items()):
            c, ins, mutation = items[i]
            meta = {"mutation": mutation} if mutation else {}
            out.append({"chunk": c, "question": ins, "answer": a, "kind": template, "gen_template": f"{template}+{ANSWER_TEMPLATE}",
                        "id": derived_id(c["id"], "example", template, ins), "meta": meta})
        return out

    # --- judging ---------------------------------------------------------------------------
    def judge(self, cands: list[dict], run: Collector, *, work_dir: Path) -> list[dict]:
        """Sets ``cand["judge"]`` ({criterion: 0-1}); returns the candidates that got a verdict for every turn."""
        if self.judge_kind() == "heuristic":
            for c in cands:
                c["judge"] = extractive.judge(c["question"], c["answer"], c["chunk"]["text"])
            return cands
        from synth.tasks import text_task

        judge = self.judge_teacher
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
                           parse=parse_judge, what="judge", run=run, work_dir=work_dir)
        per: dict[int, list[dict]] = {}
        for i, (k, _, _) in enumerate(turns):
            per.setdefault(k, []).append(scores.get(i))
        for k, got in per.items():
            if all(s is not None for s in got):  # a turn without a verdict is quarantined; so is its example
                cands[k]["judge"] = {crit: min(s[crit] for s in got) for crit in got[0]}
        return [c for c in cands if "judge" in c]

    # --- teacher calls -----------------------------------------------------------------------
    def _ask(self, teacher: Teacher, factory, rows: list[dict], *, ids: list[str], chunks: list[dict], extra: list[dict],
             parse, what: str, run: Collector, work_dir: Path) -> dict[int, Any]:
        """Prompt, PII-scan, send, parse: index -> parsed reply; everything else is quarantined with its reason."""
        srcs = [c["source"] for c in chunks]
        extra = [{"chunk": c["id"], **e} for c, e in zip(chunks, extra)]
        replies = self._complete(teacher, factory, rows, ids, srcs, run, what=what, work_dir=work_dir, extra=extra)
        ok = {}
        for i, rep in replies.items():
            if rep.text is None:
                run.quarantine(ids[i], f"{what}_error", source=srcs[i], error=rep.error, **extra[i])
                continue
            try:
                ok[i] = parse(rep.text)
            except ParseError as exc:
                run.quarantine(ids[i], f"{what}_parse_error:{exc.reason}", source=srcs[i], raw=rep.text,
                               error=str(exc), **extra[i])
        return ok

    def _pii_blocked(self, prompts: list[list[dict]], ids: list[str], sources: list[str | None], run: Collector,
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
                  run: Collector, *, what: str, work_dir: Path, extra: list[dict]) -> dict[int, Reply]:
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
                                     cache_root=work_dir / "distilabel", name=name, batch_size=teacher.cfg.concurrency)
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


def _unloaded(teacher: Teacher):
    """A fresh, unloaded distilabel LLM of the teacher's config (for the pipeline engine's subprocesses)."""
    from synth.teachers import build_llm

    return build_llm(teacher.cfg)
