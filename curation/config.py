"""Stage configs of ingest and normalisation (score/filter: curation/quality.py; exact and near dedup:
curation/dedup/config.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config import StageConfig, runtime

FORMATS = ("txt", "md", "html", "pdf", "jsonl", "csv", "parquet")


class IngestConfig(StageConfig):
    """Folders or globs of raw files -> DOCUMENTS rows with stable ids."""

    stage: Literal["ingest"] = "ingest"
    paths: list[str] = Field(
        description="Folders (read recursively) or glob patterns of input files, relative to the working directory."
    )
    formats: list[Literal["txt", "md", "html", "pdf", "jsonl", "csv", "parquet"]] = Field(
        list(FORMATS), description="File formats to read; other files are quarantined as 'unsupported format'."
    )
    text_field: str = Field("text", description="Column/key holding the text in jsonl, csv and parquet inputs.")
    title_field: str | None = Field(None, description="Optional column/key holding a title in structured inputs.")
    split_pattern: str | None = Field(
        None,
        description="Regex that splits txt/md files into several documents (e.g. '\\n-{3,}\\n'); "
        "each keeps its character span in the file. None: one document per file.",
    )
    follow_symlinks: bool = Field(
        False,
        description="Read files and folders that symbolic links point to outside the input paths. False (default): "
        "such a link is quarantined with its target; links that stay inside the input paths are always read "
        "(under the path where they were found).",
    )
    max_file_bytes: int = Field(50_000_000, ge=1, description="Files larger than this (bytes) are quarantined.")
    min_chars: int = Field(1, ge=1, description="Documents with fewer non-space characters are quarantined as empty.")
    shard_bytes: int = Field(
        32_000_000, ge=1_000, description="Target input bytes per output shard (files are never split across shards)."
    )
    batch_rows: int = runtime(2_000, ge=1, description="Rows per streamed batch inside a shard (memory bound).")


class NormalizeConfig(StageConfig):
    """Unicode + whitespace normalisation of the text column."""

    stage: Literal["normalize"] = "normalize"
    unicode_form: Literal["NFC", "NFKC", "none"] = Field("NFKC", description="Unicode normal form applied to text.")
    strip_control: bool = Field(True, description="Remove control/format characters (zero-width, BOM, C0/C1).")
    collapse_spaces: bool = Field(True, description="Collapse runs of spaces/tabs inside lines; strip line ends.")
    max_blank_lines: int = Field(1, ge=0, le=10, description="Longest run of blank lines kept.")


# the score and filter stages' configs live beside their rules in curation/quality.py (one file per rule);
# re-exported here for code that imports them from the config module
from curation.quality import FilterConfig, ScoreConfig  # noqa: E402,F401
