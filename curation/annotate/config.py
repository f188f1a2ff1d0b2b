"""Stage configs of the annotate area (see its issue). Each class registers itself by its `stage` literal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.config import StageConfig, Strict, runtime
from schemas.errors import ConfigError


class RouteRule(Strict):
    """One routing rule: which rows go to which review queue (an Argilla dataset)."""

    queue: str = Field(description="Argilla dataset name of the queue, e.g. 'borderline-quality'.", min_length=1)
    select: Literal["between", "below", "above", "equals", "cluster_sample", "conflict", "flagged"] = Field(
        description=(
            "between: low <= column <= high (borderline quality scores q_*); below: column < threshold "
            "(e.g. PII confidence); above: column > threshold; equals: column == value (e.g. origin == synthetic); "
            "cluster_sample: the first `per_cluster` rows (by id) of each cluster in `column` (near-dup clusters); "
            "conflict: rows whose `column` (an answer) differs from another row with the same `group_column`; "
            "flagged: rows whose `column` is set (not null, not empty, not false), e.g. `meta.conflict_with` "
            "written by synth's consistency check."
        )
    )
    column: str = Field(description="Column the rule reads; `meta.<key>` reads that key of the JSON `meta` column "
                        "(examples and documents carry one), e.g. `meta.conflict_with`.")
    low: float | None = Field(None, description="Lower bound for 'between' (inclusive).")
    high: float | None = Field(None, description="Upper bound for 'between' (inclusive).")
    threshold: float | None = Field(None, description="Threshold for 'below'/'above'.")
    value: str | None = Field(None, description="Value for 'equals' (compared as text).")
    per_cluster: int = Field(1, ge=1, le=1000, description="Rows per cluster for 'cluster_sample'.")
    group_column: str | None = Field(None, description="Grouping column for 'conflict' (e.g. the question).")

    @model_validator(mode="after")
    def _needs(self) -> "RouteRule":
        need = {"between": ("low", "high"), "below": ("threshold",), "above": ("threshold",), "equals": ("value",),
                "conflict": ("group_column",), "cluster_sample": (), "flagged": ()}[self.select]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ConfigError(f"route rule for queue {self.queue!r} with select={self.select!r} needs {missing}; "
                              f"add e.g. `{missing[0]}: ...` to the rule.")
        return self


class AnnotateConfig(StageConfig):
    """Route rows into Argilla review queues and push them (records keyed by our ids: pushing twice never duplicates).

    Uses ARGILLA_API_URL/ARGILLA_API_KEY when set, else the embedded server started by
    `slmforge annotate serve`; with neither it fails fast (it never waits for a human).
    """


    stage: Literal["annotate"] = "annotate"
    rules: list[RouteRule] = Field(description="Routing rules; a row may enter several queues.", min_length=1)
    text_column: str = Field("text", description="Column shown to reviewers and corrected by them.")
    metadata_columns: list[str] = Field(default_factory=list, description="Extra columns pushed as filterable metadata.")
    workspace: str = Field("argilla", description="Argilla workspace holding the queues.")
    labels: list[str] = Field(default_factory=lambda: ["keep", "drop"], description="Options of the 'decision' question.")
    max_per_queue: int = Field(5000, ge=1, le=1_000_000, description="Cap on records per queue per run (rows by id).")
    api_url: str | None = runtime(None, description="Argilla URL (default: ARGILLA_API_URL, else the embedded server).")


class AnnotateMergeConfig(StageConfig):
    """Merge submitted review answers back into the rows (drop rejected, apply corrections, origin=annotated)."""


    stage: Literal["annotate_merge"] = "annotate_merge"
    queues: list[str] = Field(description="Queues (Argilla datasets) whose responses are merged.", min_length=1)
    text_column: str = Field("text", description="Column a 'correction' answer replaces.")
    workspace: str = Field("argilla", description="Argilla workspace holding the queues.")
    conflict: Literal["majority", "drop"] = Field(
        "majority", description="When annotators disagree on keep/drop: majority vote (ties keep), or drop.")
    api_url: str | None = runtime(None, description="Argilla URL (default: ARGILLA_API_URL, else the embedded server).")
