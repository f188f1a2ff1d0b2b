"""Running recipes and single steps: plan (:mod:`slmforge.plan`), pick an executor, execute
(:mod:`slmforge.execute`). Every command of the CLI that does work comes through here.

Executors are plug-ins listed in :data:`EXECUTORS` (the recipe's ``executor:``); the Ray executor
imports Ray only when it starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from schemas.arrow import validate
from schemas.config import Recipe, StageConfig
from schemas.errors import ConfigError
from schemas.fingerprint import fingerprint
from schemas.io import write_parquet
from slmforge.execute import SUCCESS, Executor, Reporter, execute
from slmforge.local_executor import LocalExecutor
from slmforge.plan import Step, plan, until_step, write_manifest
from slmforge.ray_executor import RayExecutor
from slmforge.stages import load_stage
from slmforge.workspace import workspace_lock, writable_workspace

#: recipe ``executor:`` -> the executor that runs its steps
EXECUTORS = {
    "local": lambda recipe, workers: LocalExecutor(workers=workers),
    "ray": lambda recipe, workers: RayExecutor(address=recipe.address, workers=workers),
}


def run_recipe(recipe: Recipe, *, until: str | None = None, reporter: Reporter | None = None,
               workers: int | None = None) -> list[dict]:
    """Plan (all checks before any work), then run each step in order; returns per-step stats.

    Holds the workspace lock for the whole run: a second run on the same workspace fails at once."""
    steps = until_step(plan(recipe), until)
    ws = writable_workspace(Path(recipe.workspace))
    with workspace_lock(ws):
        write_manifest(recipe, steps)
        executor = EXECUTORS[recipe.executor](recipe, workers or recipe.workers)
        return executor.run(steps, {s.name: s for s in steps}, reporter=reporter)


def run_step(
    config: StageConfig,
    inputs: Sequence[Path] | Mapping[str, Path],
    output: Path | None,
    *,
    workers: int = 1,
    workspace: Path | None = None,
    reporter: Reporter | None = None,
) -> dict:
    """Run one stage standalone and write ``output``; the CLI's commands use it.

    Table stages read Parquet files (``inputs``, each file one shard) and write the rows to the
    ``output`` file; their decisions, quarantine and stats land next to it (``out.decisions.parquet``
    …) unless a ``workspace`` keeps the stage folder. Artifact stages read named folders
    (``inputs``: role -> path) and ``output`` is their stage folder: it is re-run every time,
    resuming from ``output/_work``.
    """
    import tempfile

    stage = load_stage(config)
    if stage.kind == "artifact":
        return _run_artifact_step(config, stage, dict(inputs), Path(output), workers=workers, reporter=reporter)
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.is_file():
            raise ConfigError("input file not found", received=str(p), fix="pass an existing Parquet file")
    if stage.kind != "source" and stage.requires:
        import pyarrow.parquet as pq

        for p in inputs:
            validate(pq.read_schema(p), stage.requires, where=f"{config.stage} --input {p}")
    tmp = None
    if workspace is None:
        base = writable_workspace(Path(output).parent if output is not None else Path.cwd())
        tmp = Path(tempfile.mkdtemp(prefix=".slmforge-", dir=base))
        workspace = tmp
    step = Step(name=config.step_name, config=config, stage=stage, inputs=[], input_files=inputs)
    manifest = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
    step.fingerprint = fingerprint(stage=config.stage, version=stage.version, config=config.fingerprint_dict(),
                                   extra={**stage.fingerprint_extra(), "inputs": manifest})
    step.dir = Path(workspace) / step.name / step.fingerprint
    stats = execute(step, {}, executor=LocalExecutor(workers=workers), reporter=reporter)
    if output is not None:
        from schemas.io import read_parquet_dir

        write_parquet(read_parquet_dir(step.dir), output)
    stats["stage_dir"] = str(step.dir)
    if tmp is not None:
        stats.pop("stage_dir")
        _keep_sidecars(step.dir, output)
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _run_artifact_step(config: StageConfig, stage, inputs: dict[str, Path], out: Path, *, workers: int,
                       reporter: Reporter | None) -> dict:
    for name, path in inputs.items():
        if not Path(path).exists():
            raise ConfigError(f"--{name.replace('_', '-')}: path not found", received=str(path),
                              fix="pass an existing folder (or Parquet file for --dataset)")
    step = Step(name=config.step_name, config=config, stage=stage, inputs=[],
                input_dirs={k: Path(v) for k, v in inputs.items()}, dir=out)
    step.fingerprint = fingerprint(stage=config.stage, version=stage.version, config=config.fingerprint_dict(),
                                   extra={"inputs": {k: str(v) for k, v in sorted(inputs.items())}})
    writable_workspace(out)
    (out / SUCCESS).unlink(missing_ok=True)  # always re-run (checkpoints in out/_work make it resume)
    return execute(step, {}, executor=LocalExecutor(workers=workers), reporter=reporter)


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


__all__ = ["EXECUTORS", "Executor", "Step", "plan", "run_recipe", "run_step"]
