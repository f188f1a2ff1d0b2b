"""Generate docs/recipe-reference.md from the config models (run: python -m slmforge.docgen)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic_core import PydanticUndefined

HEADER = """# Recipe reference

Generated from the config models by `python -m slmforge.docgen` (a test checks it is current).
Every key is validated before any work starts; unknown keys fail with the list of valid ones.
Fields marked *runtime* change how a stage runs, never what it outputs: they are not part of
the stage fingerprint, so changing them does not recompute anything.

Every stage entry also takes `name` (unique step name, default: the stage type) and `inputs`
(names of earlier steps to read; default: the step before it).
"""


def _type(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(field) -> str:
    from pydantic import BaseModel

    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return f"{type(value).__name__} defaults (below)"
    return f"`{value!r}`"


def _model_section(title: str, model: type, *, impl: str | None = None) -> list[str]:
    """Heading, docstring, implementation path (stages) and key table of one config model."""
    out = [title, ""]
    doc = typing.cast(str, model.__doc__ or "").strip()
    if doc:
        out += [" ".join(line.strip() for line in doc.splitlines()), ""]
    if impl:
        out += [f"Implementation: `{impl}`", ""]
    return out + model_table(model) + [""]


def nested_models(model) -> list[tuple[str, type]]:
    """(key path, model) of every config model nested in ``model``'s fields, depth first, each once."""
    from pydantic import BaseModel

    out: list[tuple[str, type]] = []

    def walk(annotation, path: str) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in [m for _, m in out]:
                out.append((path, annotation))
                for name, field in annotation.model_fields.items():
                    walk(field.annotation, f"{path}.{name}")
            return
        for arg in typing.get_args(annotation):
            walk(arg, path)

    for name, field in model.model_fields.items():
        walk(field.annotation, name)
    return out


def model_table(model) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in ("stage", "name", "inputs", "source_file"):
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        if extra.get("runtime"):
            desc = "*runtime* — " + desc
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {desc} |")
    return lines


def render() -> str:
    from schemas.config import Recipe
    from slmforge.stages import STAGES, config_models

    out = [HEADER, "## Top level", ""]
    out += model_table(Recipe)
    out.append("")
    for stage, model in sorted(config_models().items(), key=lambda kv: (kv[1].__module__, kv[0])):
        out += _model_section(f"## `stage: {stage}`", model, impl=STAGES[stage].impl)
        for path, sub in nested_models(model):
            out += _model_section(f"### `{path}` ({sub.__name__})", sub)
    return "\n".join(out)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/recipe-reference.md")
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
