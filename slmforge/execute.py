"""Executing planned steps: the ONE step lifecycle, and the interface executors implement.

:func:`execute` is the whole life of a step for every executor: reuse a finished step (``_SUCCESS``),
check its inputs finished, clear leftovers of a killed run, make the work folder, dispatch on the
stage kind (source: list shard specs; global: prepare once, marked by ``_work/_PREPARED``; map;
artifact), skip shards whose marker exists (resume), then finalize (decisions, quarantine,
stats.json) and write ``_SUCCESS`` last.

An :class:`Executor` only supplies the three ways work reaches CPUs: map pending shards, compute a
global stage's prepare, run an artifact. :class:`slmforge.local_executor.LocalExecutor` (a process
pool) and :class:`slmforge.ray_executor.RayExecutor` are the two implementations; both run the
functions of :mod:`slmforge.shards` in their workers, so their files are byte-identical.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from schemas.arrow import DECISIONS, QUARANTINE
from schemas.errors import StageError
from schemas.io import read_parquet, write_json, write_parquet
from schemas.stage import StageContext
from slmforge.plan import Step, input_shards
from slmforge.shards import loaded, shard_paths

SUCCESS = "_SUCCESS"


# --- reporting (the CLI implements this with rich; library code never prints) -------------

class Reporter(Protocol):
    def stage_start(self, step: Step, *, cached: bool, total: int | None) -> None: ...
    def advance(self, step: Step, n: int) -> None: ...
    def stage_end(self, step: Step, stats: Mapping[str, Any]) -> None: ...


class NullReporter:
    def stage_start(self, step, *, cached, total):  # noqa: D102
        pass

    def advance(self, step, n):  # noqa: D102
        pass

    def stage_end(self, step, stats):  # noqa: D102
        pass


# --- the executor interface -------------------------------------------------------------------

class Executor:
    """Where the work of a step runs. Subclasses implement :meth:`map_shards`, :meth:`prepare` and
    :meth:`run_artifact` (and :meth:`start`/:meth:`stop` when they hold resources across steps)."""

    def __init__(self, *, workers: int) -> None:
        self.workers = workers
        #: step name -> seconds by phase (prepare, map, finalize, artifact, and a prepare's own phases)
        self.timings: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        """Acquire what the steps need (a cluster session); called once before the steps."""

    def stop(self) -> None:
        """Release it; called once after the steps, also after an error."""

    def map_shards(self, step: Step, pending: list[tuple[int, Any]], ctx: StageContext, *,
                   advance: Callable[[int], None]) -> Iterator[dict]:
        """Run and commit every ``(shard index, item)`` with :func:`slmforge.shards.run_shard`;
        yield each shard's info as it finishes (any order); report rows through ``advance``."""
        raise NotImplementedError

    def prepare(self, step: Step, items: list[Path], ctx: StageContext) -> dict[str, float]:
        """A global stage's cross-shard state (written under ``ctx.work_dir``); returns extra timings."""
        raise NotImplementedError

    def run_artifact(self, step: Step, ctx: StageContext, *, advance: Callable[[int], None]) -> dict:
        """An artifact stage via :func:`slmforge.shards.run_artifact`; returns its stats."""
        raise NotImplementedError

    def run(self, steps: Sequence[Step], by_name: Mapping[str, Step], *, reporter: Reporter | None = None) -> list[dict]:
        """:func:`execute` every step in order, between :meth:`start` and :meth:`stop`."""
        reporter = reporter or NullReporter()
        self.start()
        try:
            return [execute(s, by_name, executor=self, reporter=reporter) for s in steps]
        finally:
            self.stop()


# --- the step lifecycle -----------------------------------------------------------------------

def execute(step: Step, by_name: Mapping[str, Step], *, executor: Executor, reporter: Reporter | None = None) -> dict:
    """Run one planned step on ``executor`` (or reuse its output when ``_SUCCESS`` exists)."""
    reporter = reporter or NullReporter()
    d = step.dir
    if (d / SUCCESS).exists():
        stats = json.loads((d / "stats.json").read_text())
        reporter.stage_start(step, cached=True, total=None)
        reporter.stage_end(step, {**stats, "cached": True})
        return {**stats, "cached": True}
    for name in step.inputs:
        if not (by_name[name].dir / SUCCESS).exists():
            raise StageError(f"step '{step.name}' needs '{name}', which has not finished",
                             fix="run the recipe from the start: slmforge run RECIPE")
    d.mkdir(parents=True, exist_ok=True)
    (d / "_shards").mkdir(exist_ok=True)
    for leftover in [*d.glob(".*.tmp"), *(d / "_shards").glob(".*.tmp")]:  # from a killed run
        leftover.unlink(missing_ok=True)
    work = d / "_work"
    work.mkdir(exist_ok=True)
    inputs = step.input_dirs if step.input_dirs is not None else {n: by_name[n].dir for n in step.inputs}
    ctx = StageContext(stage_dir=d, work_dir=work, step=step.name, inputs=inputs, workers=executor.workers)
    timing: dict[str, float] = {}
    started = time.perf_counter()
    kind = step.kind
    key = f"{step.name}:{step.fingerprint}"

    def advance(n: int) -> None:
        reporter.advance(step, n)

    if kind == "artifact":
        reporter.stage_start(step, cached=False, total=None)
        t0 = time.perf_counter()
        stats = executor.run_artifact(step, ctx, advance=advance)
        timing["artifact"] = time.perf_counter() - t0
    else:
        if kind == "source":
            items: list[Any] = loaded(step.stage, key).plan(ctx)
            reporter.stage_start(step, cached=False, total=None)
        else:
            items = input_shards(step, by_name)
            reporter.stage_start(step, cached=False, total=sum(num_rows(p) for p in items))
            if kind == "global" and not (work / "_PREPARED").exists():
                t0 = time.perf_counter()
                timing.update(executor.prepare(step, items, ctx))
                write_json({"shards": len(items)}, work / "_PREPARED")
                timing["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        infos = _map(step, items, ctx, executor=executor, advance=advance)
        timing["map"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = finalize_tables(step, infos)
        timing["finalize"] = time.perf_counter() - t0
    stats["seconds"] = round(time.perf_counter() - started, 3)
    stats.update({"step": step.name, "stage": step.config.stage, "fingerprint": step.fingerprint, "kind": kind})
    write_json(stats, d / "stats.json")
    (d / SUCCESS).write_text("")
    executor.timings[step.name] = {k: round(v, 3) for k, v in timing.items()}
    reporter.stage_end(step, stats)
    return stats


def _map(step: Step, items: Sequence[Any], ctx: StageContext, *, executor: Executor,
         advance: Callable[[int], None]) -> list[dict]:
    """Shards with a marker are done (resume); the executor runs the others."""
    infos: dict[int, dict] = {}
    pending = []
    for i, item in enumerate(items):
        marker = shard_paths(step.dir, i)["marker"]
        if marker.exists():
            infos[i] = json.loads(marker.read_text())
            advance(infos[i]["rows_in"])
        else:
            pending.append((i, item))
    if pending:
        for info in executor.map_shards(step, pending, ctx, advance=advance):
            infos[info["shard"]] = info
    missing = [i for i in range(len(items)) if i not in infos]
    if missing:
        raise StageError(f"step '{step.name}': the executor returned no result for shards {missing[:10]}",
                         fix="re-run: finished shards are kept and only these are redone")
    return [infos[i] for i in sorted(infos)]


def num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise StageError(f"cannot read the Parquet file {path}", received=f"{type(exc).__name__}: {exc}",
                         fix="it is the output of an earlier step and was damaged or changed outside slmforge: "
                             "delete that step's folder and run again to rebuild it") from exc


def finalize_tables(step: Step, infos: list[dict]) -> dict:
    d = step.dir
    n = len(infos)
    dec = [read_parquet(shard_paths(d, i)["decisions"]) for i in range(n)]
    qt = [read_parquet(shard_paths(d, i)["quarantine"]) for i in range(n)]
    dec_t = pa.concat_tables(dec) if dec else DECISIONS.empty_table()
    q_t = pa.concat_tables(qt) if qt else QUARANTINE.empty_table()
    write_parquet(dec_t, d / "decisions.parquet")
    write_parquet(q_t, d / "quarantine.parquet")
    counters: Counter = Counter()
    for info in infos:
        counters.update(info["counters"])
    actions = Counter(dec_t.column("action").to_pylist())
    dropped = Counter(r for a, r in zip(dec_t.column("action").to_pylist(), dec_t.column("reason").to_pylist())
                      if a == "drop")
    return {
        "shards": n,
        "rows_in": sum(i["rows_in"] for i in infos),
        "rows_out": sum(i["rows_out"] for i in infos),
        "modified": actions.get("modify", 0),
        "dropped": dict(sorted(dropped.items())),
        "quarantined": actions.get("quarantine", 0),
        "counters": dict(sorted(counters.items())),
    }


__all__ = ["Executor", "Reporter", "NullReporter", "SUCCESS", "execute", "finalize_tables", "num_rows"]
