"""Stage configs of exact dedup and near-duplicate MinHash dedup."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from schemas.config import StageConfig, runtime
from schemas.errors import ConfigError

#: ``ray_components: auto`` uses the driver method up to this many candidate pairs (16 bytes each on the driver)
DRIVER_EDGE_LIMIT = 20_000_000


class ExactDedupConfig(StageConfig):
    """Exact dedup on a hash of the normalised text; one representative per group."""

    stage: Literal["exact_dedup"] = "exact_dedup"
    casefold: bool = Field(True, description="Compare texts case-insensitively.")
    ignore_punctuation: bool = Field(False, description="Ignore punctuation when comparing texts.")
    keep: Literal["first", "longest"] = Field(
        "first", description="Representative of a group: the first in input order, or the longest text."
    )


class NearDedupConfig(StageConfig):
    """MinHash-LSH near-duplicate clustering; one representative per cluster is kept."""


    stage: Literal["near_dedup"] = "near_dedup"
    ngram: int = Field(5, ge=1, le=32, description="Word n-gram size of a shingle (words: lowercased, punctuation -> space).")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity (0-1] of shingle sets at or above which two documents are duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per signature (16-1024).")
    bands: int | None = Field(None, ge=1, description="LSH bands; default: chosen with datasketch's optimal-parameter search for `candidate_threshold`.")
    rows: int | None = Field(None, ge=1, description="Rows per LSH band; give together with `bands` (bands*rows <= num_perm).")
    candidate_threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Jaccard the LSH bands are tuned for (default: threshold - 0.1, for recall); candidates are then verified at `threshold`.",
    )
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (datasketch's generator).")
    representative: Literal["longest", "earliest", "best_quality"] = Field(
        "longest", description="Which member of a cluster is kept: longest text, earliest in input order, or highest `score_column` (ties: earliest)."
    )
    score_column: str | None = Field(None, description="Numeric column used by representative=best_quality (higher is better).")
    batch_size: int = runtime(4096, ge=16, le=1_000_000, description="Documents per Arrow batch (rows).")
    workers: int | None = runtime(None, ge=1, le=256, description="Threads that shingle and MinHash batches in parallel (default: the runner's workers); results do not depend on it.")
    spill_dir: Path | None = runtime(None, description="Folder for the spill files: band hashes (8 bytes per band per document) and raw shingle hashes for exact verification (8 bytes per word); default: the stage work dir or a temp dir.")
    ray_components: Literal["auto", "driver", "large_star", "task"] = runtime(
        "auto", description="With executor: ray, how the connected components of the verified pairs are computed: "
        "'driver' (edges collected and labelled on the driver), 'large_star' (distributed large-star/small-star loop, "
        "for edge lists that do not fit on the driver), 'auto' (driver up to ray_edge_limit candidate pairs), 'task' "
        "(no Ray-native near-dup: the local prepare in one Ray task). Every choice writes the same files.")
    ray_edge_limit: int = runtime(DRIVER_EDGE_LIMIT, ge=0, description="With ray_components: auto, the most candidate "
                                  "pairs (16 bytes each on the driver) for which the driver method is used.")

    @model_validator(mode="after")
    def _check(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("near_dedup: give both 'bands' and 'rows' or neither",
                              received=f"bands={self.bands}, rows={self.rows}", expected="both set or both unset",
                              fix="remove both to derive them from threshold and num_perm")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ConfigError("near_dedup: bands*rows exceeds num_perm", received=f"{self.bands}*{self.rows}",
                              expected=f"<= num_perm ({self.num_perm})", fix="lower bands/rows or raise num_perm")
        if self.representative == "best_quality" and not self.score_column:
            raise ConfigError("near_dedup: representative=best_quality needs score_column", received="score_column=None",
                              expected="a numeric column name, e.g. 'quality_score'", fix="set score_column")
        return self

    def band_params(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows  # type: ignore[return-value]
        from datasketch.lsh import _optimal_param

        t = self.candidate_threshold if self.candidate_threshold is not None else max(0.05, self.threshold - 0.1)
        return _optimal_param(t, self.num_perm, 0.5, 0.5)
