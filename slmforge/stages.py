"""The index of stage types: a recipe's ``stage:`` name -> its config model and its implementation.

Each stage's config model lives beside its code (``curation/config.py``, ``curation/quality.py``,
``curation/dedup/config.py``, ``curation/pii/config.py``, ``curation/annotate/config.py``, ``synth/config.py``,
``train/config.py``);
this module is the one place that lists them. Config modules are cheap (pydantic only) and are imported
when a recipe is parsed; implementations (which may import torch, Presidio, Ray …) only when a step is
planned. Adding a stage type: its config and code in its package, one line here.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from schemas.config import Recipe, StageConfig, config_error_from, suggest
from schemas.errors import ConfigError
from schemas.stage import Stage


class StageType(NamedTuple):
    config: str  # "module:ConfigClass"
    impl: str    # "module:StageClass"


STAGES: dict[str, StageType] = {
    "ingest": StageType("curation.config:IngestConfig", "curation.ingest:IngestStage"),
    "normalize": StageType("curation.config:NormalizeConfig", "curation.normalize:NormalizeStage"),
    "score": StageType("curation.quality:ScoreConfig", "curation.quality:ScoreStage"),
    "filter": StageType("curation.quality:FilterConfig", "curation.quality:FilterStage"),
    "exact_dedup": StageType("curation.dedup.config:ExactDedupConfig", "curation.dedup.exact:ExactDedupStage"),
    "near_dedup": StageType("curation.dedup.config:NearDedupConfig", "curation.dedup.near:NearDedupStage"),
    "pii": StageType("curation.pii.config:PiiConfig", "curation.pii.stage:PiiStage"),
    "annotate": StageType("curation.annotate.config:AnnotateConfig", "curation.annotate.stage:AnnotateStage"),
    "annotate_merge": StageType("curation.annotate.config:AnnotateMergeConfig",
                                "curation.annotate.stage:AnnotateMergeStage"),
    "chunk": StageType("synth.config:ChunkConfig", "synth.chunking:ChunkStage"),
    "index": StageType("curation.index.config:IndexConfig", "curation.index.stage:IndexStage"),
    "synth": StageType("synth.config:SynthConfig", "synth.stage:SynthStage"),
    "synth_filter": StageType("synth.checks:SynthFilterConfig", "synth.filter:SynthFilterStage"),
    "dataset": StageType("train.config:DatasetConfig", "train.dataset:DatasetStage"),
    "base_model": StageType("train.config:BaseModelConfig", "train.base_model:BaseModelStage"),
    "train": StageType("train.config:TrainConfig", "train.sft:TrainStage"),
    "eval": StageType("train.config:EvalConfig", "train.evaluate:EvalStage"),
    "export": StageType("train.config:ExportConfig", "train.export:ExportStage"),
    "bundle": StageType("train.bundle_config:BundleConfig", "train.bundle:BundleStage"),
}


def _resolve(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@cache
def config_models() -> dict[str, type[StageConfig]]:
    """Every stage type's config model, by ``stage:`` name (imports the config modules only)."""
    return {name: _resolve(entry.config) for name, entry in STAGES.items()}


def config_model(stage_type: str, *, where: str = "recipe") -> type[StageConfig]:
    if stage_type not in STAGES:
        known = sorted(STAGES)
        raise ConfigError(
            f"{where}: unknown stage type {stage_type!r}",
            received=stage_type,
            expected="one of " + ", ".join(known),
            fix=suggest(str(stage_type), known) + "set 'stage:' to one of the known types",
        )
    return config_models()[stage_type]


def load_stage(config: StageConfig) -> Stage:
    """The stage object for a config (imports its implementation; cheap constructor, no ``load()``)."""
    module, cls = STAGES[config.stage].impl.split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"stage '{config.stage}' needs {module}, which failed to import: {exc}",
            fix="install the extra that provides it, e.g. pip install 'slmforge[all]'",
        ) from exc
    return getattr(mod, cls)(config)


def parse_stage(entry: Any, *, where: str) -> StageConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a stage entry must be a mapping", received=repr(entry),
                          expected="a mapping with a 'stage:' key", fix="write e.g. '- stage: filter'")
    kind = entry.get("stage")
    model = config_model(kind, where=where)
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        raise config_error_from(exc, model, where=f"{where} ({kind})") from None


def load_recipe(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe; every error is raised before any work starts."""
    from schemas.yamlsafe import load_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("recipe file not found", received=str(path), fix="pass the path of a YAML recipe")
    raw = load_yaml(path.read_text(), where=f"recipe {path}")
    return recipe_from_dict(raw, where=str(path), overrides=overrides, source_file=path)


def recipe_from_dict(raw: Any, *, where: str = "recipe", overrides: dict[str, Any] | None = None,
                     source_file: Path | None = None) -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping", received=type(raw).__name__,
                          expected="keys workspace, stages", fix="see data/recipes/demo.yaml")
    raw = {**raw, **(overrides or {})}
    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: 'stages' must be a non-empty list", received=entries,
                          fix="list the steps under 'stages:', e.g. '- stage: ingest'")
    stages = [parse_stage(e, where=f"{where}: stages[{i}]") for i, e in enumerate(entries)]
    top = {k: v for k, v in raw.items() if k != "stages"}
    try:
        recipe = Recipe.model_validate({**top, "stages": [], "source_file": source_file})
    except ValidationError as exc:
        raise config_error_from(exc, Recipe, where=where) from None
    recipe.stages = stages
    return recipe
