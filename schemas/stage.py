"""The stage contract: what the recipe runner calls and what a stage returns.

A stage is a small class with a cheap constructor (config only) and an expensive ``load()``
called once per worker, so stages pickle cleanly to worker processes or Ray actors.

Kinds:
* ``source``  — makes rows from outside (ingest): ``plan()`` lists shard specs, ``read(spec)``
  streams :class:`ShardResult` batches for one shard.
* ``map``     — shard in, shard out (normalise, filters, PII): ``process(table, ctx)``.
* ``global``  — needs all rows before deciding (dedup, splits): ``prepare(paths, ctx)`` writes
  its state under ``ctx.work_dir`` (atomically), then ``process(table, ctx)`` maps each shard.
* ``artifact``— consumes tables, produces files (train, export): ``run(ctx)`` writes into
  ``ctx.out_dir`` and returns stats; resumable state (checkpoints) lives in ``ctx.work_dir``.

Every row a stage removes or changes gets a DECISIONS row; rows it cannot handle are returned
as QUARANTINE rows with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from schemas.arrow import DECISIONS, QUARANTINE, columns

C = TypeVar("C")


@dataclass
class ShardResult:
    """What a stage returns for one shard (or one streamed batch of a source shard)."""

    table: pa.Table
    decisions: pa.Table = field(default_factory=DECISIONS.empty_table)
    quarantine: pa.Table = field(default_factory=QUARANTINE.empty_table)
    #: counters merged into stats.json, e.g. {"dropped:too_short": 3, "entities:PERSON": 7}
    counters: Counter = field(default_factory=Counter)


def no_progress(n: int) -> None:
    """Default progress callback (a module-level function, so contexts pickle to workers)."""


@dataclass
class StageContext:
    """Where a stage may write and what it may read, for one shard or the whole stage."""

    stage_dir: Path
    work_dir: Path
    step: str
    shard: int | None = None
    #: step name -> stage folder of every declared input (the first one is the primary input)
    inputs: Mapping[str, Path] = field(default_factory=dict)
    workers: int = 1
    progress: Callable[[int], None] = no_progress
    #: artifact stages write their files here (renamed into the stage folder on success)
    out_dir: Path | None = None

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"slmforge.stage.{self.step}")


class Stage(Generic[C]):
    kind: ClassVar[str] = "map"
    #: bump when the stage's output for the same input and config changes (part of the fingerprint)
    version: ClassVar[str] = "1"
    #: columns the primary input must have
    requires: ClassVar[Mapping[str, pa.DataType]] = {}
    #: the full output schema, when the stage makes a new kind of row (chunks, examples)
    output: ClassVar[pa.Schema | None] = None
    #: columns added to the input's, when the stage passes rows through
    adds: ClassVar[Mapping[str, pa.DataType]] = {}
    #: artifact stages: the input roles they need, checked by plan() before any work
    #: (``examples``: a table with ``messages``; ``base_model``, ``adapter``, ``eval``: what an
    #: artifact step ``provides``)
    needs: ClassVar[tuple[str, ...]] = ()
    #: artifact stages: the role their folder plays for a later artifact stage
    provides: ClassVar[str | None] = None

    def __init__(self, config: C) -> None:
        self.config = config

    # --- declared shape, checked before any work ---------------------------------------
    def output_columns(self, input_columns: Mapping[str, pa.DataType] | None) -> dict[str, pa.DataType]:
        if self.output is not None:
            return columns(self.output)
        return {**(input_columns or {}), **self.adds}

    def check(self, inputs: Mapping[str, Mapping[str, pa.DataType]]) -> None:
        """Extra up-front checks on the declared input columns (raise ConfigError/SchemaError)."""

    def fingerprint_extra(self) -> Mapping[str, Any]:
        """Anything besides config and upstream that decides the output (e.g. input file manifest)."""
        return {}

    def roots(self) -> list[Path]:
        """Source stages: the folders they read (plan() refuses a workspace inside one)."""
        return []

    # --- work ----------------------------------------------------------------------------
    def load(self) -> None:
        """Build expensive state (models, analyzers, indexes). Called once per worker."""

    # source
    def plan(self, ctx: StageContext) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} is not a source stage")

    def read(self, spec: Any, ctx: StageContext) -> Iterator[ShardResult]:
        raise NotImplementedError(f"{type(self).__name__} is not a source stage")

    # global
    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        """Global stages: compute cross-shard state into ``ctx.work_dir`` (atomically)."""

    def prepare_distributed(self, shards: list[Path], ctx: StageContext, *, backend: str,
                            workers: int) -> tuple[dict[str, Any], dict[str, float]] | None:
        """Global stages may compute :meth:`prepare` natively on a distributed ``backend`` (``"ray"``:
        called on the driver with the Ray session up), writing exactly what ``prepare`` writes.
        Return ``(stats, seconds by phase)``, or None to let the executor run ``prepare`` as one task."""
        return None

    # map / global
    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        raise NotImplementedError(f"{type(self).__name__} does not process shards")

    # artifact
    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} is not an artifact stage")

    def summary(self, stats: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Extra (label, value) rows for the end-of-stage summary table."""
        return []
