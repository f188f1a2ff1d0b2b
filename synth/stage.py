"""CHUNKS -> SYNTH_CANDIDATES: generate with a teacher, judge, and write EVERY judged example with its scores.

The ``synth`` stage applies no threshold: each judged example is a row with its judge scores, lexical
groundedness and answer lengths as columns (``schemas.arrow.SYNTH_CANDIDATES``), and the ``synth_filter``
stage after it decides what is kept (``synth/filter.py``, checks in ``synth/checks.py``). So the
fingerprint of this stage holds only what changes generation and judging (teacher, task, prompts, judge),
and retuning a threshold never calls the teacher again.

Every candidate gets a ``keep`` decision (reason ``judged``, score = judge score); every failed request,
unparseable reply or blocked prompt a ``quarantine`` one. Rows carry ``source_ids = [chunk id, document
id]`` so ``slmforge trace`` can walk back to the text. Generation and judging live in
:class:`synth.generate.Generator`, usable without this stage.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa

from schemas.arrow import CHUNKS, SYNTH_CANDIDATES, columns, decisions, quarantine
from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat
from schemas.stage import ShardResult, Stage, StageContext
from synth import extractive
from synth.config import SynthConfig
from synth.generate import TEMPLATE, Collector, Generator
from synth.raft import RAFT_INDEX_TEMPLATE, RaftRetriever, find_index
from synth.tasks import render

#: include_context + distractors rows: the source passage among passages of its shard, in the prompt format serving uses
RAFT_TEMPLATE = "raft_shard_v1"

__all__ = ["SynthStage", "RAFT_TEMPLATE", "candidate_row", "user_turn"]


def candidate_row(cand: dict, *, user: str | list[dict], user_template: str, teacher: str, judge_by: str,
                  answer: str | None = None) -> dict:
    """One SYNTH_CANDIDATES row from a judged candidate and its rendered user turn (a text, or the prompt's messages:
    system + user); ``answer`` replaces the first assistant turn's text (RAFT: the answer with its citation)."""
    gen = cand.get("gen_template")
    turns = [(cand["question"], cand["answer"]), *cand.get("followups", [])]
    answers = [a for _, a in turns]
    lexical = min(extractive.judge(q, a, cand["chunk"]["text"])["groundedness"] for q, a in turns)
    judge = cand["judge"]
    meta = {**cand["meta"], "kind": cand["kind"], "judge": judge, "judge_by": judge_by, "question": cand["question"],
            "lexical_groundedness": lexical}
    return {
        "id": cand["id"],
        "messages": [*([{"role": "user", "content": user}] if isinstance(user, str) else user),
                     {"role": "assistant", "content": cand["answer"] if answer is None else answer},
                     *[m for q, a in cand.get("followups", []) for m in ({"role": "user", "content": q},
                                                                         {"role": "assistant", "content": a})]],
        "origin": "synthetic", "source_ids": [cand["chunk"]["id"], cand["chunk"]["doc_id"]], "teacher": teacher,
        "template": f"{user_template}:{cand['kind']}" if gen is None else f"{gen}|{user_template}",
        "judge_score": min(judge.values()), "split": None, "meta": json.dumps(meta, sort_keys=True),
        "question": cand["question"], "judge_groundedness": judge.get("groundedness"),
        "judge_helpfulness": judge.get("helpfulness"), "lexical_groundedness": lexical,
        "answer_chars_min": min(len(a) for a in answers), "answer_chars_max": max(len(a) for a in answers),
    }


def user_turn(cand: dict, chunks: list[dict], *, include_context: bool, distractors: int,
              raft: RaftRetriever | None = None, prompt_format: PromptFormat | None = None) -> tuple[str | list[dict], str, dict]:
    """The user turn of a training example: (text or prompt messages, template name, meta additions). THE one place
    that decides what the student sees besides the question: nothing (closed book), the source passage (open book),
    the passage among ``distractors`` other passages of ``chunks`` in a seeded order, or (``raft``) the passages the
    recipe's index retrieves for the question. Both passage lists are rendered with a :class:`PromptFormat`
    (``prompt_format`` or ``raft.prompt_format``: the function serving and open-book eval use), and their answer,
    citing the source passage as ``[n]``, is in meta ``raft_answer``."""
    chunk = cand["chunk"]
    if raft is not None:
        messages, answer, meta = raft.turn(cand)
        return messages, RAFT_INDEX_TEMPLATE, {**meta, "raft_answer": answer}
    if not include_context:
        return cand["question"], "closed_book_v1", {}
    others = [c for c in chunks if c["id"] != chunk["id"]]
    if distractors and others:
        fmt = prompt_format or PromptFormat()
        rnd = random.Random(cand["id"])
        picked = rnd.sample(others, min(distractors, len(others)))
        order = [*picked, chunk]
        rnd.shuffle(order)
        passages = [{"chunk_id": c["id"], "source_id": c["source"], "text": c["text"], "title": c["heading"]} for c in order]
        position = order.index(chunk) + 1
        meta = {"oracle_position": position, "distractor_ids": [p["id"] for p in picked],
                "passages": [{"n": n, "chunk_id": p["chunk_id"], "source_id": p["source_id"]}
                             for n, p in enumerate(passages, start=1)],
                "citations": {str(position): chunk["source"]}, "prompt_format": fmt.fingerprint(),
                "raft_answer": f"{cand['answer']} [{position}]"}
        return fmt.render_messages(cand["question"], passages), RAFT_TEMPLATE, meta
    return render(TEMPLATE, passage=chunk["text"], question=cand["question"], source=chunk["source"],
                  heading=chunk["heading"]), TEMPLATE, {}


class SynthStage(Stage[SynthConfig]):
    kind = "map"
    version = "3"  # 3: every judged candidate with score columns; thresholds moved to synth_filter
    requires = columns(CHUNKS)
    output = SYNTH_CANDIDATES

    def __init__(self, config: SynthConfig) -> None:
        super().__init__(config)
        self.generator = Generator(config)

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
        if self.generator.judge_kind() == "llm" and cfg.teacher.kind == "extractive" and cfg.judge.teacher is None:
            raise ConfigError("synth: an LLM judge needs a model", received="judge kind llm with the extractive teacher",
                              expected="judge.teacher set to an openai/transformers teacher",
                              fix="set 'judge: {kind: llm, teacher: {kind: openai, model: ...}}' or 'judge: {kind: heuristic}'")
        if cfg.judge.teacher is not None and cfg.judge.teacher.kind == "extractive":
            raise ConfigError("synth: judge.teacher must be an LLM", received="extractive", expected="openai or transformers",
                              fix="drop judge.teacher to judge with the generation teacher")
        if cfg.teacher.sentence_questions:
            from synth.sentences import check_installed

            check_installed(cfg.teacher.spacy_model)
        if cfg.raft is not None and len(cfg.inputs or []) < 2:
            raise ConfigError("synth: 'raft' retrieves passages with the recipe's index step", received=str(cfg.inputs),
                              expected="inputs naming the chunk step, then the index step",
                              fix="add '- stage: index' after chunk and write 'inputs: [chunk, index]' on the synth step")
        if cfg.scan_pii:
            from schemas.errors import require

            require("presidio_analyzer", extra="pii", purpose="synth's PII scan of prompts (pii_scan)")

    def load(self) -> None:
        self.generator.load()

    def _retriever(self, ctx: StageContext) -> RaftRetriever | None:
        """The RAFT retriever over the index input (opened once per worker), or None without ``raft``."""
        if self.config.raft is None:
            return None
        path = find_index(ctx.inputs)
        if getattr(self, "_raft", None) is None or self._raft.index_path != path:
            self._raft = RaftRetriever(self.config.raft, path)
        return self._raft

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        self.check({})
        self.load()
        gen, run = self.generator, Collector()
        chunks = table.select(["id", "doc_id", "text", "source", "heading"]).to_pylist()
        raft = self._retriever(ctx)
        if raft is not None:  # the index knows each page's title: questions name the page as a user would
            for c in chunks:
                c["title"] = raft.title(c["id"])
        cands = gen.generate(chunks, run, work_dir=ctx.work_dir)
        run.counters["candidates"] = len(cands)
        cands = gen.judge(cands, run, work_dir=ctx.work_dir)
        rows = []
        for c in cands:
            user, user_template, extra = user_turn(c, chunks, include_context=self.config.include_context,
                                                   distractors=self.config.distractors, raft=raft,
                                                   prompt_format=self.config.prompt_format)
            answer = extra.pop("raft_answer", None)
            c["meta"].update(extra)
            rows.append(candidate_row(c, user=user, user_template=user_template, teacher=gen.teacher_name,
                                      judge_by=gen.judge_name, answer=answer))
            if raft is not None:
                run.counters["raft:oracle_retrieved"] += extra["oracle_retrieved"]
                run.counters["raft:oracle_included"] += extra["oracle_included"]
                run.counters["raft:rows"] += 1
        run.counters["generated"] = len(rows)
        run.counters.update(gen.tally_counters())  # per-shard figures
        dec = decisions([r["id"] for r in rows], stage=ctx.step, action="keep", reason="judged",
                        score=[r["judge_score"] for r in rows], detail=[{"source_ids": r["source_ids"]} for r in rows])
        if run.q_ids:
            dec = pa.concat_tables([dec, decisions(run.q_ids, stage=ctx.step, action="quarantine", reason=run.q_reasons)])
        ctx.progress(table.num_rows)
        return ShardResult(pa.Table.from_pylist(rows, schema=SYNTH_CANDIDATES), dec,
                           quarantine(run.q_ids, stage=ctx.step, reason=run.q_reasons, source=run.q_sources,
                                      payload=run.q_payloads),
                           run.counters)
