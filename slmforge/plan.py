"""Planning: a recipe -> checked, fingerprinted steps, before any work (no stage runs here).

Layout of a run::

    <workspace>/<step>/<fingerprint>/part-00000.parquet ...   output shards (tables)
                                     decisions.parquet          id, stage, action, reason, score, detail
                                     quarantine.parquet         rows the stage could not handle
                                     stats.json                 counts, drops by reason, time
                                     _SUCCESS                   written last
                                     _shards/00000.json         per-shard completion marker (resume)
                                     _work/                     scratch that survives a crash
    <workspace>/_runs/latest.json    the steps of the last run (used by `trace` and `stats`)

:func:`plan` checks every boundary up front: step names and inputs, the columns each stage
requires, the input roles an artifact stage needs (``Stage.needs``), and that the workspace is not
inside a folder a source stage reads. Running the steps is :mod:`slmforge.execute`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from schemas.arrow import validate
from schemas.config import Recipe, StageConfig
from schemas.errors import ConfigError
from schemas.fingerprint import fingerprint
from schemas.io import write_json
from schemas.stage import Stage
from slmforge.stages import load_stage


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
    #: explicit input folders by name (standalone artifact runs); otherwise the inputs' step folders
    input_dirs: dict[str, Path] | None = None

    @property
    def kind(self) -> str:
        return self.stage.kind


def plan(recipe: Recipe) -> list[Step]:
    """Resolve names and inputs, instantiate stages (cheap), check every boundary, fingerprint.

    Raises before any work if a name repeats, an input is unknown, a stage's required columns
    are not produced upstream, an artifact stage lacks an input role it needs, or the workspace
    lies inside a folder a source stage reads.
    """
    steps: list[Step] = []
    by_name: dict[str, Step] = {}
    workspace = Path(recipe.workspace)
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
        if stage.kind == "source":
            check_workspace_outside(workspace, stage.roots(), where=where)
        _check_inputs(step, by_name, where=where)
        step.fingerprint = fingerprint(
            stage=cfg.stage, version=stage.version, config=cfg.fingerprint_dict(),
            upstream=[by_name[n].fingerprint for n in inputs], extra=stage.fingerprint_extra(),
        )
        step.dir = workspace / name / step.fingerprint
        steps.append(step)
        by_name[name] = step
    return steps


def check_workspace_outside(workspace: Path, roots: Sequence[Path], *, where: str) -> None:
    """A workspace inside a folder a source reads would be read back as input on the next run."""
    ws = Path(workspace).resolve()
    for root in roots:
        root = Path(root).resolve()
        if ws == root or root in ws.parents:
            raise ConfigError(f"{where}: the workspace is inside a folder this step reads, so every run "
                              "would ingest the outputs of the previous one",
                              received=f"workspace {ws}, input folder {root}",
                              expected="a workspace outside every input folder",
                              fix="set 'workspace:' to a folder outside the inputs (e.g. next to them)")


def role_of(step: Step) -> str | None:
    """What a step offers an artifact stage: its stage's ``provides`` (base_model, adapter, eval),
    or ``examples`` for a table with ``messages``."""
    if step.kind == "artifact":
        return step.stage.provides
    return "examples" if "messages" in step.out_columns else None


def _check_roles(step: Step, by_name: Mapping[str, Step], *, where: str) -> None:
    offered = {n: role_of(by_name[n]) for n in step.inputs}
    missing = [r for r in step.stage.needs if r not in offered.values()]
    if missing:
        have = ", ".join(f"{n} ({r or 'nothing it uses'})" for n, r in offered.items()) or "none"
        raise ConfigError(
            f"{where}: step '{step.name}' needs {' and '.join(repr(r) for r in missing)} among its inputs",
            received=f"inputs: {have}", expected=f"inputs that provide {', '.join(step.stage.needs)}",
            fix=f"add the step(s) that provide {', '.join(missing)} to 'inputs:' of '{step.name}' "
                "(examples: a dataset step; base_model: a base_model step; adapter: a train step; eval: an eval step)")


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
    primary = by_name[step.inputs[0]]
    in_cols = primary.out_columns
    if stage.kind in ("map", "global") and primary.kind == "artifact":
        raise ConfigError(f"{where}: reads '{primary.name}', which makes files, not rows",
                          fix="list a table-producing step first in 'inputs:'")
    if stage.requires and primary.kind != "artifact":
        validate(pa.schema(list(in_cols.items())), stage.requires,
                 where=f"step '{step.name}' ({step.config.stage}) reading '{primary.name}'")
    if stage.needs:
        _check_roles(step, by_name, where=where)
    stage.check({n: by_name[n].out_columns for n in step.inputs})
    step.out_columns = stage.output_columns(in_cols) if stage.kind != "artifact" else {}


def until_step(steps: list[Step], until: str | None) -> list[Step]:
    """The steps up to and including ``until`` (all when None)."""
    if until is None:
        return steps
    names = [s.name for s in steps]
    if until not in names:
        raise ConfigError(f"--until: no step named '{until}'", received=until, expected=", ".join(names))
    return steps[: names.index(until) + 1]


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


def latest_manifest(workspace: Path) -> dict:
    path = Path(workspace) / "_runs" / "latest.json"
    if not path.exists():
        raise ConfigError(f"no run found in workspace {workspace}", received=str(path),
                          fix="run a recipe first (slmforge run RECIPE) or pass --workspace")
    return json.loads(path.read_text())


def input_shards(step: Step, by_name: Mapping[str, Step]) -> list[Path]:
    if step.input_files is not None:
        return list(step.input_files)
    primary = by_name[step.inputs[0]]
    return sorted(primary.dir.glob("part-*.parquet"))


__all__ = ["Step", "plan", "role_of", "until_step", "write_manifest", "latest_manifest", "input_shards",
           "check_workspace_outside"]
