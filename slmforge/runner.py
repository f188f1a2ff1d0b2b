"""The recipe runner: plan and check the whole chain, then run stages with caching and resume.

Layout of a run (DESIGN.md §4)::

    <workspace>/<step>/<fingerprint>/part-00000.parquet ...   output shards (tables)
                                     decisions.parquet          id, stage, action, reason, score, detail
                                     quarantine.parquet         rows the stage could not handle
                                     stats.json                 counts, drops by reason, time
                                     _SUCCESS                   written last
                                     _shards/00000.json         per-shard completion marker (resume)
                                     _work/                     scratch that survives a crash
    <workspace>/_runs/latest.json    the steps of the last run (used by `trace` and `stats`)

A shard is committed by writing its part file, its decisions, then its marker, each atomically;
a re-run after a crash (even SIGKILL) redoes only shards without a marker, and because every
stage is deterministic per shard, the final files are identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from schemas.arrow import DECISIONS, QUARANTINE, columns, validate
from schemas.config import Recipe, StageConfig
from schemas.errors import ConfigError, SchemaError, StageError
from schemas.fingerprint import fingerprint
from schemas.io import read_parquet, write_json, write_parquet, write_parquet_batches
from schemas.stage import ShardResult, Stage, StageContext, no_progress
from slmforge.stages import load_stage

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


# --- planning -------------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    config: StageConfig
    stage: Stage
    inputs: list[str]
    fingerprint: str = ""
    dir: Path = Path()
    out_columns: dict[str, pa.DataType] = field(default_factory=dict)
    #: explicit input shard files (standalone runs); otherwise read from the inputs' folders
    input_files: list[Path] | None = None

    @property
    def kind(self) -> str:
        return self.stage.kind


def plan(recipe: Recipe) -> list[Step]:
    """Resolve names and inputs, instantiate stages (cheap), check every boundary, fingerprint.

    Raises before any work if a name repeats, an input is unknown, or a stage's required
    columns are not produced upstream.
    """
    steps: list[Step] = []
    by_name: dict[str, Step] = {}
    for i, cfg in enumerate(recipe.stages):
        name = cfg.step_name
        where = f"stages[{i}] ({cfg.stage})"
        if name in by_name:
            raise ConfigError(f"{where}: step name '{name}' is used twice",
                              fix=f"give one of them a unique 'name:', e.g. name: {name}_2")
        if cfg.inputs is not None:
            inputs = list(cfg.inputs)
            for inp in inputs:
                if inp not in by_name:
                    raise ConfigError(f"{where}: input '{inp}' is not an earlier step",
                                      received=inp, expected="one of " + ", ".join(by_name) if by_name else "none (first step)",
                                      fix="list only steps that come before this one")
        else:
            inputs = [steps[-1].name] if steps else []
        stage = load_stage(cfg)
        step = Step(name=name, config=cfg, stage=stage, inputs=inputs)
        _check_inputs(step, by_name, where=where)
        step.fingerprint = fingerprint(
            stage=cfg.stage, version=stage.version, config=cfg.fingerprint_dict(),
            upstream=[by_name[n].fingerprint for n in inputs], extra=stage.fingerprint_extra(),
        )
        step.dir = Path(recipe.workspace) / name / step.fingerprint
        steps.append(step)
        by_name[name] = step
    return steps


def _check_inputs(step: Step, by_name: Mapping[str, Step], *, where: str) -> None:
    stage = step.stage
    if stage.kind == "source":
        if step.inputs:
            raise ConfigError(f"{where}: a source stage takes no inputs", received=step.inputs, fix="remove 'inputs:'")
        step.out_columns = stage.output_columns(None)
        stage.check({})
        return
    if not step.inputs:
        raise ConfigError(f"{where}: this stage needs an input but it is the first step",
                          fix="put an 'ingest' step (or another source) before it")
    if stage.input_roles:
        _check_roles(step, by_name, where=where)
    primary = by_name[step.inputs[0]]
    in_cols = primary.out_columns
    if stage.kind in ("map", "global") and primary.kind == "artifact":
        raise ConfigError(f"{where}: reads '{primary.name}', which makes files, not rows",
                          fix="list a table-producing step first in 'inputs:'")
    if stage.requires and primary.kind != "artifact":
        validate(pa.schema(list(in_cols.items())), stage.requires,
                 where=f"step '{step.name}' ({step.config.stage}) reading '{primary.name}'")
    stage.check({n: by_name[n].out_columns for n in step.inputs})
    step.out_columns = stage.output_columns(in_cols) if stage.kind != "artifact" else {}


def _check_roles(step: Step, by_name: Mapping[str, Step], *, where: str) -> None:
    """The stage types of a step's inputs against the roles its stage declares (``Stage.input_roles``)."""
    roles = step.stage.input_roles
    types = {n: by_name[n].config.stage for n in step.inputs}
    wrong = {n: t for n, t in types.items() if t not in roles}
    missing = [r for r, required in roles.items() if required and r not in types.values()]
    if wrong or missing:
        expected = ", ".join(f"{r} ({'required' if req else 'optional'})" for r, req in roles.items())
        raise ConfigError(f"{where}: " + "; ".join(
            [f"input '{n}' is a {t} step" for n, t in wrong.items()] + [f"no {r} step among the inputs" for r in missing]),
            received=types, expected=f"inputs of the types {expected}",
            fix=f"set 'inputs:' of this step to the steps it reads, e.g. inputs: [{', '.join(roles)}]")


# --- execution ------------------------------------------------------------------------------

_LOADED: dict[str, Stage] = {}


def _loaded(stage: Stage, key: str) -> Stage:
    """One loaded copy of a stage per process (expensive state built once per worker)."""
    if key not in _LOADED:
        stage.load()
        _LOADED[key] = stage
    return _LOADED[key]


def _shard_paths(d: Path, i: int) -> dict[str, Path]:
    return {
        "part": d / f"part-{i:05d}.parquet",
        "decisions": d / "_shards" / f"decisions-{i:05d}.parquet",
        "quarantine": d / "_shards" / f"quarantine-{i:05d}.parquet",
        "marker": d / "_shards" / f"{i:05d}.json",
    }


def _run_shard(stage: Stage, key: str, kind: str, i: int, item: Any, ctx: StageContext) -> dict[str, Any]:
    """Process one shard and commit it: part file, decisions, quarantine, then the marker.

    An error that is not already one of ours is re-raised as a :class:`StageError` naming the
    step, the shard and its input (both executors run this function; Ray and the process pool
    carry the error to the driver)."""
    from schemas.errors import SlmforgeError

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
    stage = _loaded(stage, key)
    paths = _shard_paths(ctx.stage_dir, i)
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


def _pool_context():
    import multiprocessing as mp

    return mp.get_context("spawn")  # no fork: pyarrow/polars thread pools do not survive a fork


def _run_shards(step: Step, items: Sequence[Any], ctx: StageContext, *, workers: int, reporter: Reporter) -> list[dict]:
    key = f"{step.name}:{step.fingerprint}"
    infos: dict[int, dict] = {}
    pending = []
    for i, item in enumerate(items):
        marker = _shard_paths(step.dir, i)["marker"]
        if marker.exists():
            infos[i] = json.loads(marker.read_text())
            reporter.advance(step, infos[i]["rows_in"])
        else:
            pending.append((i, item))
    if workers <= 1 or len(pending) <= 1:
        for i, item in pending:
            shard_ctx = _ctx_copy(ctx, progress=lambda n: reporter.advance(step, n))
            infos[i] = _run_shard(step.stage, key, step.kind, i, item, shard_ctx)
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=_pool_context()) as pool:
            futures = {pool.submit(_run_shard, step.stage, key, step.kind, i, item, _ctx_copy(ctx, progress=no_progress)): i
                       for i, item in pending}
            for fut in as_completed(futures):
                info = fut.result()
                infos[info["shard"]] = info
                reporter.advance(step, info["rows_in"])
    return [infos[i] for i in sorted(infos)]


def _ctx_copy(ctx: StageContext, **kw: Any) -> StageContext:
    from dataclasses import replace

    return replace(ctx, **kw)


def input_shards(step: Step, by_name: Mapping[str, Step]) -> list[Path]:
    if step.input_files is not None:
        return list(step.input_files)
    primary = by_name[step.inputs[0]]
    return sorted(primary.dir.glob("part-*.parquet"))


def execute(step: Step, by_name: Mapping[str, Step], *, workers: int = 1, reporter: Reporter | None = None) -> dict:
    """Run one planned step (or reuse its output when ``_SUCCESS`` exists)."""
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
    ctx = StageContext(stage_dir=d, work_dir=work, step=step.name,
                       inputs={n: by_name[n].dir for n in step.inputs}, workers=workers)
    started = time.perf_counter()
    stage = step.stage
    kind = stage.kind
    if kind == "artifact":
        stats = _execute_artifact(step, ctx, reporter)
    else:
        if kind == "source":
            _loaded(stage, f"{step.name}:{step.fingerprint}")
            items = stage.plan(ctx)
            reporter.stage_start(step, cached=False, total=None)
        else:
            items = input_shards(step, by_name)
            total = sum(_num_rows(p) for p in items)
            reporter.stage_start(step, cached=False, total=total)
            if kind == "global" and not (work / "_PREPARED").exists():
                loaded = _loaded(stage, f"{step.name}:{step.fingerprint}")
                loaded.prepare(items, _ctx_copy(ctx, progress=no_progress))
                write_json({"shards": len(items)}, work / "_PREPARED")
        infos = _run_shards(step, items, ctx, workers=workers, reporter=reporter)
        stats = _finalize_tables(step, infos)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    stats.update({"step": step.name, "stage": step.config.stage, "fingerprint": step.fingerprint, "kind": kind})
    write_json(stats, d / "stats.json")
    (d / SUCCESS).write_text("")
    reporter.stage_end(step, stats)
    return stats


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise StageError(f"cannot read the Parquet file {path}", received=f"{type(exc).__name__}: {exc}",
                         fix="it is the output of an earlier step and was damaged or changed outside slmforge: "
                             "delete that step's folder and run again to rebuild it") from exc


def _finalize_tables(step: Step, infos: list[dict]) -> dict:
    d = step.dir
    n = len(infos)
    dec = [read_parquet(_shard_paths(d, i)["decisions"]) for i in range(n)]
    qt = [read_parquet(_shard_paths(d, i)["quarantine"]) for i in range(n)]
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


def _execute_artifact(step: Step, ctx: StageContext, reporter: Reporter) -> dict:
    d = step.dir
    out = d / "_out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    reporter.stage_start(step, cached=False, total=None)
    loaded = _loaded(step.stage, f"{step.name}:{step.fingerprint}")
    stats = loaded.run(_ctx_copy(ctx, out_dir=out, progress=lambda n: reporter.advance(step, n))) or {}
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


# --- whole recipes and single steps -------------------------------------------------------------

def write_manifest(recipe: Recipe, steps: Sequence[Step]) -> Path:
    ws = Path(recipe.workspace)
    manifest = {
        "recipe": str(recipe.source_file) if recipe.source_file else None,
        "steps": [
            {"name": s.name, "stage": s.config.stage, "kind": s.kind, "fingerprint": s.fingerprint,
             "dir": str(s.dir.relative_to(ws)), "inputs": s.inputs}
            for s in steps
        ],
    }
    return write_json(manifest, ws / "_runs" / "latest.json")


def run_recipe(recipe: Recipe, *, until: str | None = None, reporter: Reporter | None = None,
               workers: int | None = None) -> list[dict]:
    """Plan (all checks before any work), then run each step in order; returns per-step stats."""
    steps = plan(recipe)
    if until is not None:
        names = [s.name for s in steps]
        if until not in names:
            raise ConfigError(f"--until: no step named '{until}'", received=until, expected=", ".join(names))
        steps = steps[: names.index(until) + 1]
    Path(recipe.workspace).mkdir(parents=True, exist_ok=True)
    write_manifest(recipe, steps)
    workers = workers or recipe.workers
    by_name = {s.name: s for s in steps}
    if recipe.executor == "ray":
        from slmforge.ray_executor import RayExecutor  # issue: scale-out

        return RayExecutor(address=recipe.address, workers=workers).run(steps, by_name, reporter=reporter)
    return [execute(s, by_name, workers=workers, reporter=reporter) for s in steps]


def run_step(
    config: StageConfig,
    inputs: Sequence[Path],
    output: Path | None,
    *,
    workers: int = 1,
    workspace: Path | None = None,
    reporter: Reporter | None = None,
) -> dict:
    """Run one stage standalone on Parquet files (each file one shard) and write ``output``.

    Used by CLI commands such as ``slmforge filter`` and ``slmforge pii scrub``. The stage's
    folder (decisions, quarantine, stats) stays in ``workspace`` (default: a temporary folder
    next to ``output``, removed on success).
    """
    import tempfile

    stage = load_stage(config)
    for p in inputs:
        if not Path(p).is_file():
            raise ConfigError("input file not found", received=str(p), fix="pass an existing Parquet file")
    if stage.kind != "source" and stage.requires:
        import pyarrow.parquet as pq

        for p in inputs:
            validate(pq.read_schema(p), stage.requires, where=f"{config.stage} --input {p}")
    tmp = None
    if workspace is None:
        base = Path(output).parent if output is not None else Path.cwd()
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".slmforge-", dir=base))
        workspace = tmp
    step = Step(name=config.step_name, config=config, stage=stage, inputs=[],
                input_files=[Path(p) for p in inputs])
    manifest = [(str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in inputs]
    step.fingerprint = fingerprint(stage=config.stage, version=stage.version, config=config.fingerprint_dict(),
                                   extra={**stage.fingerprint_extra(), "inputs": manifest})
    step.dir = Path(workspace) / step.name / step.fingerprint
    stats = execute(step, {}, workers=workers, reporter=reporter)
    if output is not None and stage.kind != "artifact":
        from schemas.io import read_parquet_dir

        write_parquet(read_parquet_dir(step.dir), output)
    stats["stage_dir"] = str(step.dir)
    if tmp is not None:
        stats.pop("stage_dir")
        _keep_sidecars(step.dir, output)
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _keep_sidecars(stage_dir: Path, output: Path | None) -> None:
    """Standalone runs keep decisions/quarantine next to the output: out.decisions.parquet."""
    if output is None:
        return
    for name in ("decisions", "quarantine"):
        src = stage_dir / f"{name}.parquet"
        if src.exists():
            os.replace(src, Path(output).with_suffix(f".{name}.parquet"))
    if (stage_dir / "stats.json").exists():
        os.replace(stage_dir / "stats.json", Path(output).with_suffix(".stats.json"))


def latest_manifest(workspace: Path) -> dict:
    path = Path(workspace) / "_runs" / "latest.json"
    if not path.exists():
        raise ConfigError(f"no run found in workspace {workspace}", received=str(path),
                          fix="run a recipe first (slmforge run RECIPE) or pass --workspace")
    return json.loads(path.read_text())


__all__ = ["Step", "plan", "execute", "run_recipe", "run_step", "latest_manifest", "NullReporter", "Reporter",
           "SchemaError", "columns"]
