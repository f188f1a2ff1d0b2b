"""Recipe and stage configuration models (pydantic v2, ``extra="forbid"``).

A recipe is one YAML file that maps 1:1 onto :class:`Recipe`. Each entry of ``stages`` names
its type with ``stage:`` and is validated by the config model registered for that type, so a
typo fails before any work starts with an error naming the bad key and the valid ones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import ConfigError

STAGE_CONFIGS: dict[str, type[StageConfig]] = {}


def runtime(default: Any = ..., **kw: Any) -> Any:
    """A field that changes how a stage runs but never what it outputs (excluded from fingerprints)."""
    extra = dict(kw.pop("json_schema_extra", None) or {})
    extra["runtime"] = True
    return Field(default, json_schema_extra=extra, **kw)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


class StageConfig(Strict):
    """Base of every stage config. Subclasses set ``stage: Literal[...]`` and ``impl``."""

    #: "module:Class" of the stage implementation, imported lazily by the runner.
    impl: ClassVar[str] = ""

    stage: str = Field(description="Stage type, e.g. 'filter'.")
    name: str | None = Field(None, description="Unique name of this step in the recipe (default: the stage type).")
    inputs: list[str] | None = Field(
        None, description="Names of upstream steps this one reads (default: the step before it)."
    )

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)

    @classmethod
    def __pydantic_init_subclass__(cls, **kw: Any) -> None:
        super().__pydantic_init_subclass__(**kw)
        field = cls.model_fields.get("stage")
        ann = field.annotation if field is not None else None
        args = getattr(ann, "__args__", ())
        if ann is not None and getattr(ann, "__origin__", None) is Literal and len(args) == 1:
            STAGE_CONFIGS[args[0]] = cls

    @property
    def step_name(self) -> str:
        return self.name or self.stage

    def fingerprint_dict(self) -> dict[str, Any]:
        """The config as it affects outputs: runtime-only fields and naming removed."""
        data = self.model_dump(mode="json")
        for key in ("name", "inputs"):
            data.pop(key, None)
        for fname, finfo in type(self).model_fields.items():
            extra = finfo.json_schema_extra
            if isinstance(extra, dict) and extra.get("runtime"):
                data.pop(fname, None)
        return data


class Recipe(Strict):
    """A whole run: where it lives and the ordered steps."""

    workspace: Path = Field(description="Folder holding <stage>/<fingerprint>/ outputs; relative to the working directory.")
    workers: int = runtime(2, ge=1, le=256, description="Worker processes for shard-parallel stages.")
    executor: Literal["local", "ray"] = runtime("local", description="Where stages run.")
    address: str | None = runtime(None, description="Ray cluster address when executor=ray ('auto' or host:port).")
    stages: list[StageConfig] = Field(description="Ordered steps; each names its type with 'stage:'.")
    source_file: Path | None = runtime(None, exclude=True, description="Set by the loader.")


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def parse_stage(entry: Any, *, where: str) -> StageConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a stage entry must be a mapping", received=repr(entry),
                          expected="a mapping with a 'stage:' key", fix="write e.g. '- stage: filter'")
    kind = entry.get("stage")
    if kind not in STAGE_CONFIGS:
        known = sorted(STAGE_CONFIGS)
        raise ConfigError(
            f"{where}: unknown stage type {kind!r}",
            received=kind,
            expected="one of " + ", ".join(known),
            fix=_suggest(str(kind), known) + "set 'stage:' to one of the known types",
        )
    model = STAGE_CONFIGS[kind]
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        raise config_error_from(exc, model, where=f"{where} ({kind})") from None


def config_error_from(exc: ValidationError, model: type[BaseModel], *, where: str) -> ConfigError:
    """Turn a pydantic error into one that names the bad key, what was expected and the fix."""
    fields = sorted(model.model_fields)
    lines, fixes = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(whole entry)"
        if err["type"] == "extra_forbidden" and err["loc"]:
            key = str(err["loc"][-1])
            lines.append(f"unknown key '{key}'")
            fixes.append(f"{_suggest(key, fields)}valid keys: {', '.join(fields)}")
        else:
            lines.append(f"'{loc}': {err['msg']} (got {err.get('input')!r})")
            desc = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            if desc is not None and desc.description:
                fixes.append(f"'{err['loc'][0]}' is {desc.description}")
    return ConfigError(f"{where}: " + "; ".join(lines), fix="; ".join(fixes) or None)


def load_recipe(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe; every error is raised before any work starts."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("recipe file not found", received=str(path), fix="pass the path of a YAML recipe")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}", fix="check indentation and quoting") from None
    return recipe_from_dict(raw, where=str(path), overrides=overrides, source_file=path)


def recipe_from_dict(raw: Any, *, where: str = "recipe", overrides: dict[str, Any] | None = None,
                     source_file: Path | None = None) -> Recipe:
    import schemas.config  # noqa: F401  (registers every stage config)

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
