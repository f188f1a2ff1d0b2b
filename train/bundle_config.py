"""Config of the ``bundle`` stage (its code: train/bundle.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config import StageConfig
from schemas.prompt_format import PromptFormat


class BundleConfig(StageConfig):
    """Write one self-contained folder a user can copy anywhere and run with ``slmforge ask`` / ``serve``.

    Inputs: ``export`` (required: its GGUF files, model card and Modelfile) and ``index`` (optional: without it
    the bundle answers closed-book only, and its card and bundle.json say so). The folder holds the GGUF files
    (hard links where the file system allows, else copies), the index, ``prompt_format.json``,
    ``chat_template.jinja``, the model card (README.md) and ``bundle.json`` (every file with its sha256 and
    size, the default GGUF, the llama.cpp settings).
    """

    stage: Literal["bundle"] = "bundle"
    default_gguf: str | None = Field(
        None, description="GGUF type answered with when ask/serve get no --gguf, e.g. 'Q4_K_M' (None: Q8_0 when the "
        "export wrote it, else the first file the export lists).")
    n_ctx: int | None = Field(
        None, ge=128, le=1_048_576,
        description="llama.cpp context size in tokens (prompt with passages + answer). None: the model's training "
        "context length, at most 4096.")
    k: int = Field(4, ge=1, le=64, description="Passages retrieved per question by default (ask -k overrides).")
    max_new_tokens: int = Field(256, ge=1, le=32_768, description="Longest answer in tokens (greedy decoding).")
    prompt_format: PromptFormat = Field(
        default_factory=PromptFormat,
        description="The retrieval prompt format (schemas/prompt_format.py): system text, passage template, question "
        "template, citation pattern. Must be the one the model was trained with; its fingerprint goes into the card.")
    link: Literal["hardlink", "copy"] = Field(
        "hardlink", description="How GGUF files enter the bundle: hardlink (no extra disk; falls back to a copy "
        "across file systems) or copy. The bytes are the same either way.",
        json_schema_extra={"runtime": True})
