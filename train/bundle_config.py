"""Config of the ``bundle`` stage (its code: train/bundle.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config import StageConfig
from schemas.prompt_format import PromptFormat


class BundleConfig(StageConfig):
    """Write one self-contained folder a user can copy anywhere and run with ``slmforge ask`` / ``serve``.

    Inputs: ``export`` (required: its GGUF files -- and the base GGUF + LoRA adapter pair when it wrote one --,
    model card and Modelfile), ``index`` (optional: without it the bundle answers closed-book only, and its card
    and bundle.json say so) and ``dataset`` (optional: the training answers size ``max_new_tokens``). The folder
    holds the GGUF files (hard links where the file system allows, else copies), the index,
    ``prompt_format.json``, ``chat_template.jinja``, the model card (README.md) and ``bundle.json`` (every file
    with its sha256 and size, the default GGUF, the llama.cpp settings and generation controls).
    """

    stage: Literal["bundle"] = "bundle"
    default_gguf: str | None = Field(
        None, description="GGUF type answered with when ask/serve get no --gguf, e.g. 'Q4_K_M', or 'pair': the base "
        "GGUF + LoRA adapter the export wrote with base_gguf: true (None: Q8_0 when the export wrote it, else the "
        "first file the export lists).")
    n_ctx: int | None = Field(
        None, ge=128, le=1_048_576,
        description="llama.cpp context size in tokens (prompt with passages + answer). None: the model's training "
        "context length, at most 4096.")
    k: int = Field(4, ge=1, le=64, description="Passages retrieved per question by default (ask -k overrides).")
    max_new_tokens: int | None = Field(
        None, ge=1, le=32_768,
        description="Longest answer in tokens (ask --max-tokens / the request's max_tokens override). None: the "
        "answer_quantile of the training answers' lengths in tokens (end-of-turn included) when a dataset step is "
        "among the inputs, else 256.")
    answer_quantile: float = Field(
        0.99, gt=0.5, le=1.0,
        description="Quantile of the training answers' token lengths that sizes max_new_tokens when it is None "
        "(0.99: one training answer in a hundred is longer).")
    repeat_penalty: float = Field(
        1.0, ge=0.5, le=2.0,
        description="llama.cpp's repetition penalty on the last 64 generated tokens (1.0: none; ask "
        "--repeat-penalty / the request's repeat_penalty override).")
    loop_ngram: int = Field(
        16, ge=0, le=64,
        description="Loop guard: when the last this-many generated tokens already occurred in the same answer, the "
        "answer is cut where the repeat began (finish_reason 'loop'). 0: off; else 2-64 tokens (ask --loop-ngram "
        "/ the request's loop_ngram override). 16: 2 of the 1,426 PostgreSQL training answers repeat a 16-token "
        "span (SQL synopses), 6 a 12-token one, 32 an 8-token one.")
    quote: bool = Field(
        False,
        description="Open-book answers quote the passages: each token is the model's best-ranked one that keeps the answer a span of "
        "a retrieved passage, and the answer is cited as that passage (train/copying.py; ask --quote/--no-quote, the "
        "request's quote field). For a reader trained on extractive answers; closed-book answers are never constrained.")
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat,
        description="The retrieval prompt format (schemas/prompt_format.py): system text, passage template, question "
        "template, citation pattern. Must be the one the model was trained with; its fingerprint goes into the card.")
    link: Literal["hardlink", "copy"] = Field(
        "hardlink", description="How GGUF files enter the bundle: hardlink (no extra disk; falls back to a copy "
        "across file systems) or copy. The bytes are the same either way.",
        json_schema_extra={"runtime": True})

    @field_validator("loop_ngram")
    @classmethod
    def _ngram(cls, v: int) -> int:
        if v == 1:
            raise ValueError("a 1-token loop guard would end an answer at its first repeated word: use 0 (off) or 2-64")
        return v
