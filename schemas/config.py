"""Recipe and stage configuration models (pydantic v2, ``extra="forbid"``).

A recipe is one YAML file that maps 1:1 onto :class:`Recipe`. Each entry of ``stages`` names
its type with ``stage:`` and is validated by that type's config model, which lives beside the stage's code
and is listed in ``slmforge/stages.py`` (which also parses recipes), so a typo fails before any work
starts with an error naming the bad key and the valid ones.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigError, quote

#: what a step name may be (it becomes a folder name under the workspace)
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def runtime(default: Any = ..., **kw: Any) -> Any:
    """A field that changes how a stage runs but never what it outputs (excluded from fingerprints)."""
    extra = dict(kw.pop("json_schema_extra", None) or {})
    extra["runtime"] = True
    return Field(default, json_schema_extra=extra, **kw)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


class StageConfig(Strict):
    """Base of every stage config. Subclasses set ``stage: Literal[...]`` and are listed in slmforge/stages.py."""

    stage: str = Field(description="Stage type, e.g. 'filter'.")
    name: str | None = Field(None, description="Unique name of this step in the recipe (default: the stage type); "
                             "1-64 letters, digits, '_', '.', '-', starting with a letter or digit, no '..' "
                             "(it names the step's folder in the workspace).")
    inputs: list[str] | None = Field(
        None, description="Names of upstream steps this one reads (default: the step before it)."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and (not STEP_NAME.fullmatch(value) or ".." in value):
            raise ValueError("a step name is 1-64 letters, digits, '_', '.', '-', starting with a letter or digit, "
                             "without '..' (it names a folder inside the workspace)")
        return value

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


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def _got(value: Any) -> str:
    return quote(repr(value) if isinstance(value, str) else value)


def config_error_from(exc: ValidationError, model: type[BaseModel], *, where: str) -> ConfigError:
    """Turn a pydantic error into one that names the bad key, what was expected and the fix."""
    fields = sorted(model.model_fields)
    lines, fixes = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(whole entry)"
        if err["type"] == "extra_forbidden" and err["loc"]:
            key = str(err["loc"][-1])
            lines.append(f"unknown key '{key}'")
            fixes.append(f"{suggest(key, fields)}valid keys: {', '.join(fields)}")
        else:
            lines.append(f"'{loc}': {err['msg']} (got {_got(err.get('input'))})")
            desc = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            if desc is not None and desc.description:
                fixes.append(f"'{err['loc'][0]}' is {desc.description}")
    return ConfigError(f"{where}: " + "; ".join(lines), fix="; ".join(fixes) or None)
