"""Helpers every CLI module shares: errors and exit codes, the ``--set`` parser, reporting.

Imports only typer/rich at module level (``slmforge --help`` must stay instant). Sub-command
modules (cli_pii, cli_annotate, cli_synth, cli_train, …) import from here, never from
:mod:`slmforge.cli`, so there is no import loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

#: progress, tables and errors go to stderr; results a user may pipe (trace, stats) to stdout
console = Console(stderr=True)
out = Console()

SET_HELP = "Any other config field, key=value (YAML value), repeatable, e.g. --set rank=8."
#: the exit code of every command whose input or config was rejected
EXIT_ERROR = 2

T = TypeVar("T")


def fail(exc: Exception) -> None:
    """Print the error (what was received, expected, the fix) and exit with :data:`EXIT_ERROR`."""
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(EXIT_ERROR)


def run_with_errors(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """``fn(*args, **kw)``; a slmforge error becomes a message and exit code 2, never a traceback."""
    from schemas.errors import SlmforgeError

    try:
        return fn(*args, **kw)
    except SlmforgeError as exc:
        fail(exc)
        raise  # unreachable: fail() exits


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` options as a dict (values parsed as YAML: numbers, lists, booleans)."""
    import yaml

    parsed: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        parsed[k.strip()] = yaml.safe_load(v)
    return parsed


def stage_config(stage_type: str, fields: Mapping[str, Any], *, config_file: Path | None = None, where: str):
    """A stage config from a YAML file (the keys of that stage in a recipe; ``stage:`` optional) and
    options on top (``None`` = not given), validated as in a recipe: a ConfigError names the bad field."""
    from schemas.errors import ConfigError
    from slmforge.stages import parse_stage

    data: dict[str, Any] = {}
    if config_file is not None:
        from schemas.yamlsafe import load_yaml

        if not Path(config_file).is_file():
            raise ConfigError(f"{where}: config file not found", received=str(config_file),
                              fix=f"pass a YAML file with the keys of a '{stage_type}' stage")
        loaded = load_yaml(Path(config_file).read_text(), where=str(config_file))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{where}: {config_file} is not a mapping", received=type(loaded).__name__,
                              expected=f"the keys of a '{stage_type}' stage, e.g. 'rules: [...]'",
                              fix="write one key per line (see docs/recipe-reference.md)")
        data = dict(loaded or {})
        if data.setdefault("stage", stage_type) != stage_type:
            raise ConfigError(f"{where}: {config_file} is the config of a '{data['stage']}' stage",
                              received=data["stage"], expected=stage_type,
                              fix=f"drop its 'stage:' line or pass a '{stage_type}' config")
    return parse_stage({**data, "stage": stage_type, **{k: v for k, v in fields.items() if v is not None}},
                       where=where)


def parquet_inputs(paths: list[Path], *, what: str = "input") -> list[Path]:
    """Parquet files, a stage folder standing for its ``part-*.parquet`` files (in shard order)."""
    from schemas.errors import ConfigError

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            parts = sorted(p.glob("part-*.parquet"))
            if not parts:
                raise ConfigError(f"{what} {p} is a folder without part-*.parquet files", received=str(p),
                                  expected="a stage folder (workspace/<step>/<fingerprint>/) or a Parquet file",
                                  fix="pass the folder of a finished step, or Parquet files")
            files += parts
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{what} not found: {p}", received=str(p), fix="pass an existing Parquet file or folder")
    return files


def reporter(*, quiet: bool = False):
    """The rich progress bars and per-stage tables the runner reports to."""
    from slmforge.report import RichReporter

    return RichReporter(console, quiet=quiet)


def stats_table(title: str, stats: Mapping[str, Any], where: Path | None = None) -> None:
    """One stage's stats as a table (nested values left out, warnings shown), then where it wrote."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("stat")
    table.add_column("value")
    for key, value in stats.items():
        if key == "warnings":
            for w in value:
                table.add_row("[yellow]warning[/]", str(w))
            continue
        if isinstance(value, (dict, list)):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if where is not None:
        console.print(f"wrote {where}")


__all__ = ["console", "out", "SET_HELP", "EXIT_ERROR", "fail", "run_with_errors", "parse_sets", "reporter",
           "stage_config", "parquet_inputs",
           "stats_table"]
