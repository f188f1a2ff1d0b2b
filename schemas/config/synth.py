"""Stage configs of the synth area. Each class registers itself by its `stage` literal."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from schemas.config.base import StageConfig, Strict, runtime


class ChunkConfig(StageConfig):
    """DOCUMENTS -> CHUNKS: passages split at markdown headings / blank lines, with char spans."""

    impl: ClassVar[str] = "synth.chunking:ChunkStage"
    stage: Literal["chunk"] = "chunk"
    max_chars: int = Field(1500, ge=100, le=100_000, description="Longest chunk, characters (paragraphs are packed up to this).")
    min_chars: int = Field(80, ge=1, le=10_000, description="Chunks shorter than this (characters) are dropped with a decision.")


class TeacherConfig(Strict):
    """One shape for every teacher. Only `extractive` (no model) is implemented in this release."""

    kind: Literal["extractive", "openai", "transformers"] = Field(
        "extractive", description="extractive: built-in, no model; openai: OpenAI-compatible endpoint; transformers: local folder."
    )
    model: str | None = Field(None, description="Model name (openai) or local folder (transformers). Unused for extractive.")
    base_url: str | None = Field(None, description="Endpoint URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (never the key itself).")
    concurrency: int = runtime(8, ge=1, le=1024, description="Requests in flight to a remote teacher.")
    retries: int = runtime(3, ge=0, le=20, description="Retries per request on transient errors.")
    timeout: float = runtime(120.0, gt=0, le=3600, description="Seconds per request.")
    cost_per_input_token: float = runtime(0.0, ge=0, description="Currency units per prompt token (for the cost tally).")
    cost_per_output_token: float = runtime(0.0, ge=0, description="Currency units per completion token (for the cost tally).")
    max_questions_per_chunk: int = Field(6, ge=1, le=100, description="Extractive: most examples generated from one chunk.")


class SynthConfig(StageConfig):
    """CHUNKS -> EXAMPLES (chat messages, origin=synthetic) with post-filters and decisions."""

    impl: ClassVar[str] = "synth.stage:SynthStage"
    stage: Literal["synth"] = "synth"
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Which teacher writes the examples.")
    task: Literal["grounded_qa"] = Field("grounded_qa", description="Task template family (grounded_qa: answer quoted from the chunk).")
    include_context: bool = Field(
        False, description="Put the passage in the user turn (RAFT-style open-book) instead of a closed-book question."
    )
    min_answer_chars: int = Field(20, ge=1, description="Answers shorter than this (characters) are dropped.")
    max_answer_chars: int = Field(1200, ge=20, description="Answers longer than this (characters) are dropped.")
    min_judge_score: float = Field(0.5, ge=0, le=1, description="Examples whose judge score (0-1) is below are dropped.")
    dedup_threshold: float | None = Field(
        0.8, gt=0, le=1, description="Jaccard (word 5-gram) at or above which two answers are near-duplicates (the later one is dropped); None disables."
    )
    decontam_ngram: int = Field(8, ge=3, le=50, description="Word n-gram length for decontamination against eval rows.")
    eval_step: str | None = Field(
        None, description="Recipe step whose EXAMPLES (or text) rows are held-out eval data; any shared n-gram drops the example."
    )
    pii_scan: bool = Field(
        False, description="Scan prompts and outputs with curation.pii.find_pii (needs the 'pii' extra); a hit drops the row."
    )
