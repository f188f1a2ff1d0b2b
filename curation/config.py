"""Stage configs of ingest, normalisation and quality scores/filters (exact and near dedup: curation/dedup/config.py)."""

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


class ScoreConfig(StageConfig):
    """Compute heuristic quality scores as columns (q_*). Thresholds live in the 'filter' stage."""

    stage: Literal["score"] = "score"


class FilterConfig(StageConfig):
    """Thresholds over the q_* score columns (Gopher / C4 / FineWeb rules). None disables a rule.

    Defaults follow the literature (Gopher: Rae et al. 2021; FineWeb: Penedo et al. 2024).
    Technical corpora (commands, configs) usually need looser symbol/alpha/punctuation rules.
    """

    stage: Literal["filter"] = "filter"
    min_words: int | None = Field(50, ge=0, description="Minimum words per document (Gopher: 50).")
    max_words: int | None = Field(100_000, ge=1, description="Maximum words per document (Gopher: 100k).")
    min_mean_word_length: float | None = Field(3.0, ge=0, description="Minimum mean word length, chars (Gopher: 3).")
    max_mean_word_length: float | None = Field(10.0, ge=0, description="Maximum mean word length, chars (Gopher: 10).")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Max ratio of '#' and '...' symbols to words, 0-1+ (Gopher: 0.1)."
    )
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1, description="Max share of lines starting with a bullet (Gopher: 0.9).")
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1, description="Max share of lines ending in an ellipsis (Gopher: 0.3).")
    min_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Min share of words with at least one letter (Gopher: 0.8)."
    )
    min_stopwords: int | None = Field(2, ge=0, description="Min count of English stop words (Gopher: 2).")
    max_dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="Max share of duplicated lines (Gopher: 0.3).")
    max_dup_para_frac: float | None = Field(0.3, ge=0, le=1, description="Max share of duplicated paragraphs (Gopher: 0.3).")
    max_dup_line_char_frac: float | None = Field(0.2, ge=0, le=1, description="Max share of characters in duplicated lines (Gopher: 0.2).")
    max_top_2gram_frac: float | None = Field(0.2, ge=0, le=1, description="Max char share of the most frequent word 2-gram (Gopher: 0.2).")
    max_top_3gram_frac: float | None = Field(0.18, ge=0, le=1, description="Same for 3-grams (Gopher: 0.18).")
    max_top_4gram_frac: float | None = Field(0.16, ge=0, le=1, description="Same for 4-grams (Gopher: 0.16).")
    max_dup_5gram_frac: float | None = Field(0.15, ge=0, le=1, description="Max char share of duplicated word 5-grams (Gopher: 0.15).")
    max_dup_10gram_frac: float | None = Field(0.10, ge=0, le=1, description="Same for 10-grams (Gopher: 0.10).")
    min_line_punct_ratio: float | None = Field(
        0.12, ge=0, le=1, description="Min share of lines ending in terminal punctuation (FineWeb: 0.12)."
    )
    max_short_line_ratio: float | None = Field(0.67, ge=0, le=1, description="Max share of lines under 30 chars (FineWeb: 0.67).")
