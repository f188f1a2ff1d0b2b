"""What runs inside a worker, for every executor: one shard, one prepare, one artifact.

A shard is committed by writing its part file, its decisions, then its marker, each atomically;
a re-run after a crash (even SIGKILL) redoes only shards without a marker, and because every
stage is deterministic per shard, the final files are identical to an uninterrupted run.
The local process pool and the Ray executor both call these functions, so their files are
byte-identical.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas.arrow import DECISIONS, QUARANTINE, validate
from schemas.errors import SlmforgeError, StageError
from schemas.io import read_parquet, write_json, write_parquet, write_parquet_batches
from schemas.stage import ShardResult, Stage, StageContext

_LOADED: dict[str, Stage] = {}


def loaded(stage: Stage, key: str) -> Stage:
    """One loaded copy of a stage per process (expensive state built once per worker)."""
    if key not in _LOADED:
        stage.load()
        _LOADED[key] = stage
    return _LOADED[key]


def loaded_copy(key: str) -> Stage | None:
    """The copy :func:`loaded` holds for ``key`` in this process, if any."""
    return _LOADED.get(key)


def shard_paths(d: Path, i: int) -> dict[str, Path]:
    return {
        "part": d / f"part-{i:05d}.parquet",
        "decisions": d / "_shards" / f"decisions-{i:05d}.parquet",
        "quarantine": d / "_shards" / f"quarantine-{i:05d}.parquet",
        "marker": d / "_shards" / f"{i:05d}.json",
    }


def ctx_copy(ctx: StageContext, **kw: Any) -> StageContext:
    return replace(ctx, **kw)


def run_shard(stage: Stage, key: str, kind: str, i: int, item: Any, ctx: StageContext) -> dict[str, Any]:
    """Process one shard and commit it: part file, decisions, quarantine, then the marker.

    An error that is not already one of ours is re-raised as a :class:`StageError` naming the
    step, the shard and its input (every executor runs this function and carries the error to
    the driver)."""
    try:
        return _run_shard_unchecked(stage, key, kind, i, item, ctx)
    except SlmforgeError:
        raise
    except Exception as exc:
        where = Path(item).name if isinstance(item, (str, os.PathLike)) else repr(item)[:200]
        raise StageError(f"step '{ctx.step}' failed on shard {i} ({where}): {type(exc).__name__}: {exc}",
                         fix="shards that finished are kept: remove the cause and run again, only this shard "
                             "and the ones not yet done are redone") from exc


def _run_shard_unchecked(stage: Stage, key: str, kind: str, i: int, item: Any, ctx: StageContext) -> dict[str, Any]:
    stage = loaded(stage, key)
    paths = shard_paths(ctx.stage_dir, i)
    ctx.shard = i
    dec_parts, q_parts, counters = [], [], Counter()
    if kind == "source":
        schema = stage.output if stage.output is not None else None

        def tables() -> Iterable[pa.Table]:
            for res in stage.read(item, ctx):
                dec_parts.append(res.decisions)
                q_parts.append(res.quarantine)
                counters.update(res.counters)
                yield res.table

        rows_out = write_parquet_batches(tables(), paths["part"], schema=schema)
        rows_in = rows_out
    else:
        table = read_parquet(item)
        rows_in = table.num_rows
        if stage.requires:
            validate(table, stage.requires, where=f"step '{ctx.step}' shard {i} ({Path(item).name})")
        res: ShardResult = stage.process(table, ctx)
        write_parquet(res.table, paths["part"])
        rows_out = res.table.num_rows
        dec_parts.append(res.decisions)
        q_parts.append(res.quarantine)
        counters.update(res.counters)
    dec = pa.concat_tables([d.cast(DECISIONS) for d in dec_parts]) if dec_parts else DECISIONS.empty_table()
    qt = pa.concat_tables([q.cast(QUARANTINE) for q in q_parts]) if q_parts else QUARANTINE.empty_table()
    write_parquet(dec, paths["decisions"])
    write_parquet(qt, paths["quarantine"])
    info = {"shard": i, "rows_in": rows_in, "rows_out": rows_out, "counters": dict(counters)}
    write_json(info, paths["marker"])
    return info


def run_prepare(stage: Stage, key: str, items: list[Path], ctx: StageContext) -> None:
    """A global stage's cross-shard state, computed in this process."""
    loaded(stage, key).prepare(list(items), ctx)


def run_artifact(stage: Stage, key: str, ctx: StageContext) -> dict[str, Any]:
    """An artifact stage: ``run`` into ``<stage dir>/_out``, then its entries renamed into the stage
    folder (a killed run leaves no half-written file there)."""
    d = ctx.stage_dir
    out = d / "_out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    stats = loaded(stage, key).run(ctx_copy(ctx, out_dir=out)) or {}
    for entry in sorted(out.iterdir()):
        target = d / entry.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(entry, target)
    out.rmdir()
    if not (d / "decisions.parquet").exists():
        write_parquet(DECISIONS.empty_table(), d / "decisions.parquet")
    if not (d / "quarantine.parquet").exists():
        write_parquet(QUARANTINE.empty_table(), d / "quarantine.parquet")
    return dict(stats)


__all__ = ["loaded", "loaded_copy", "shard_paths", "ctx_copy", "run_shard", "run_prepare", "run_artifact"]
