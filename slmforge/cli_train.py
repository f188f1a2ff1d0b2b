"""CLI commands of the train area. Import only typer/rich at module level (`slmforge --help` must stay instant)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
