"""Heuristic quality scores (Gopher / C4 / FineWeb family) and the threshold filter.

Scores are columns (``q_*``), thresholds are config: the ``score`` stage computes them once and
the ``filter`` stage only compares, so re-thresholding never recomputes a score.

Adding a rule touches this file only: its score in :func:`score_text`, its threshold field in
:class:`FilterConfig` (``None`` disables it) and one line in :data:`RULES` tying the two; then
``python -m slmforge.docgen`` regenerates docs/recipe-reference.md.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import pyarrow as pa
from pydantic import Field

from schemas.arrow import decisions
from schemas.config import StageConfig
from schemas.stage import ShardResult, Stage, StageContext

STOPWORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·", "‣", "⁃")
_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")
_TERMINAL = (".", "!", "?", '"', "'", ":", ";", ")", "”", "’")


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


#: name -> (score column, comparison): ">=" means the score must be at least the threshold.
RULES: dict[str, tuple[str, str]] = {
    "min_words": ("q_n_words", ">="),
    "max_words": ("q_n_words", "<="),
    "min_mean_word_length": ("q_mean_word_length", ">="),
    "max_mean_word_length": ("q_mean_word_length", "<="),
    "max_symbol_word_ratio": ("q_symbol_word_ratio", "<="),
    "max_bullet_lines_ratio": ("q_bullet_lines_ratio", "<="),
    "max_ellipsis_lines_ratio": ("q_ellipsis_lines_ratio", "<="),
    "min_alpha_words_ratio": ("q_alpha_words_ratio", ">="),
    "min_stopwords": ("q_stopwords", ">="),
    "max_dup_line_frac": ("q_dup_line_frac", "<="),
    "max_dup_para_frac": ("q_dup_para_frac", "<="),
    "max_dup_line_char_frac": ("q_dup_line_char_frac", "<="),
    "max_top_2gram_frac": ("q_top_2gram_frac", "<="),
    "max_top_3gram_frac": ("q_top_3gram_frac", "<="),
    "max_top_4gram_frac": ("q_top_4gram_frac", "<="),
    "max_dup_5gram_frac": ("q_dup_5gram_frac", "<="),
    "max_dup_10gram_frac": ("q_dup_10gram_frac", "<="),
    "min_line_punct_ratio": ("q_line_punct_ratio", ">="),
    "max_short_line_ratio": ("q_short_line_ratio", "<="),
}
SCORE_COLUMNS = tuple(dict.fromkeys(col for col, _ in RULES.values()))


def _top_ngram_frac(words: list[str], n: int, total_chars: int) -> float:
    if len(words) < n or not total_chars:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count <= 1:
        return 0.0
    return sum(len(w) for w in gram) * count / total_chars


def _dup_ngram_frac(words: list[str], n: int, total_chars: int) -> float:
    """Share of characters covered by word n-grams that occur more than once (Gopher)."""
    if len(words) < n or not total_chars:
        return 0.0
    seen: dict[tuple[str, ...], int] = {}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
            first = seen[gram]
            for j in range(first, first + n):
                covered[j] = True
        else:
            seen[gram] = i
    return sum(len(w) for w, c in zip(words, covered) if c) / total_chars


def _dup_frac(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those items)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    total_chars = sum(len(x) for x in items) or 1
    for x in items:
        if x in seen:
            dup_n += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup_n / len(items), dup_chars / total_chars


def score_text(text: str) -> dict[str, float]:
    words = _WORD.findall(text)
    n_words = len(words)
    lower = [w.lower() for w in words]
    word_chars = sum(len(w) for w in words)
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    n_lines = len(lines) or 1
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    symbols = text.count("#") + text.count("...") + text.count("…")
    dup_line, dup_line_chars = _dup_frac(lines)
    dup_para, _ = _dup_frac(paras)
    stripped = [w.strip(".,;:!?()[]{}\"'") .lower() for w in words]
    return {
        "q_n_words": float(n_words),
        "q_mean_word_length": word_chars / n_words if n_words else 0.0,
        "q_symbol_word_ratio": symbols / n_words if n_words else 0.0,
        "q_bullet_lines_ratio": sum(ln.startswith(BULLETS) for ln in lines) / n_lines,
        "q_ellipsis_lines_ratio": sum(ln.endswith(("...", "…")) for ln in lines) / n_lines,
        "q_alpha_words_ratio": sum(bool(_ALPHA.search(w)) for w in words) / n_words if n_words else 0.0,
        "q_stopwords": float(sum(w in STOPWORDS for w in stripped)),
        "q_dup_line_frac": dup_line,
        "q_dup_para_frac": dup_para,
        "q_dup_line_char_frac": dup_line_chars,
        "q_top_2gram_frac": _top_ngram_frac(lower, 2, word_chars),
        "q_top_3gram_frac": _top_ngram_frac(lower, 3, word_chars),
        "q_top_4gram_frac": _top_ngram_frac(lower, 4, word_chars),
        "q_dup_5gram_frac": _dup_ngram_frac(lower, 5, word_chars),
        "q_dup_10gram_frac": _dup_ngram_frac(lower, 10, word_chars),
        "q_line_punct_ratio": sum(ln.endswith(_TERMINAL) for ln in lines) / n_lines,
        "q_short_line_ratio": sum(len(ln) < 30 for ln in lines) / n_lines,
    }


def compute_scores(texts: Sequence[str]) -> dict[str, list[float]]:
    """Score columns for ``texts``: {column: [value per text]}."""
    out: dict[str, list[float]] = {c: [] for c in SCORE_COLUMNS}
    for t in texts:
        for k, v in score_text(t).items():
            out[k].append(v)
    return out


def failing_rules(scores: Mapping[str, float], config: FilterConfig) -> list[tuple[str, float]]:
    """The rules a document breaks, in declaration order, with its score for each."""
    failed = []
    for rule, (col, op) in RULES.items():
        thr = getattr(config, rule)
        if thr is None:
            continue
        val = scores[col]
        if (op == ">=" and val < thr) or (op == "<=" and val > thr):
            failed.append((rule, val))
    return failed


def keep_mask(scores: Mapping[str, Sequence[float]], config: FilterConfig) -> tuple[list[bool], list[str | None]]:
    """Apply thresholds to score columns: (keep per row, reason = first failing rule or None)."""
    n = len(next(iter(scores.values()))) if scores else 0
    keep, reasons = [], []
    for i in range(n):
        failed = failing_rules({c: scores[c][i] for c in SCORE_COLUMNS}, config)
        keep.append(not failed)
        reasons.append(failed[0][0] if failed else None)
    return keep, reasons


class ScoreStage(Stage[ScoreConfig]):
    kind = "map"
    version = "1"
    requires = {"id": pa.string(), "text": pa.large_string()}
    adds = {c: pa.float64() for c in SCORE_COLUMNS}

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        scores = compute_scores(table.column("text").to_pylist())
        for col in SCORE_COLUMNS:
            arr = pa.array(scores[col], type=pa.float64())
            if col in table.column_names:
                table = table.set_column(table.schema.get_field_index(col), col, arr)
            else:
                table = table.append_column(col, arr)
        ctx.progress(table.num_rows)
        dec = decisions(table.column("id"), stage=ctx.step, action="keep", reason="scored")
        return ShardResult(table, dec)


class FilterStage(Stage[FilterConfig]):
    kind = "map"
    version = "1"
    requires = {"id": pa.string(), **{c: pa.float64() for c in SCORE_COLUMNS}}

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        cols = {c: table.column(c).to_pylist() for c in SCORE_COLUMNS}
        ids = table.column("id").to_pylist()
        keep, actions, reasons, scores, details = [], [], [], [], []
        counters: Counter = Counter()
        for i in range(table.num_rows):
            failed = failing_rules({c: cols[c][i] for c in SCORE_COLUMNS}, self.config)
            keep.append(not failed)
            if failed:
                rule, val = failed[0]
                actions.append("drop")
                reasons.append(rule)
                scores.append(float(val))
                details.append({r: round(v, 6) for r, v in failed})
                counters[f"dropped:{rule}"] += 1
            else:
                actions.append("keep")
                reasons.append("passed")
                scores.append(None)
                details.append(None)
        ctx.progress(table.num_rows)
        dec = decisions(ids, stage=ctx.step, action=actions, reason=reasons, score=scores, detail=details)
        return ShardResult(table.filter(pa.array(keep, type=pa.bool_())), dec, counters=counters)
