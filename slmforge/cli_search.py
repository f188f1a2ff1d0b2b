"""`slmforge search`: query the retrieval index of a workspace (or any index folder) from the shell.

Only typer is imported at module level (`slmforge --help` stays instant); the index opens when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def index_dir(workspace: Path, *, step: str | None = None) -> Path:
    """The folder of the index step of the last run in ``workspace`` (the last one, or the one named ``step``)."""
    from schemas.errors import ConfigError

    from slmforge.plan import latest_manifest

    steps = latest_manifest(workspace)["steps"]
    found = [s for s in steps if s["stage"] == "index" and (step is None or s["name"] == step)]
    if not found:
        raise ConfigError(f"the last run in {workspace} has no index step" + (f" named '{step}'" if step else ""),
                          received=", ".join(f"{s['name']} ({s['stage']})" for s in steps),
                          expected="a step with 'stage: index'",
                          fix="add '- stage: index' after the chunk step of the recipe and run it, "
                              "or pass --index DIR")
    return Path(workspace) / found[-1]["dir"]


def register(app: typer.Typer) -> None:
    """Add the search command to the main app."""

    @app.command("search")
    def search_cmd(
        query: str = typer.Argument(..., help="What to look for, e.g. a question."),
        k: int = typer.Option(5, "-k", "--top-k", min=1, help="How many passages to show."),
        workspace: Path = typer.Option(Path("workspace/demo"), "--workspace", "-w",
                                       help="Workspace whose last run has an index step."),
        index: Optional[Path] = typer.Option(None, "--index", help="An index folder instead of a workspace's."),
        step: Optional[str] = typer.Option(None, "--step", help="Name of the index step when the run has several."),
        width: int = typer.Option(300, "--chars", min=20, help="Characters of each passage to print."),
    ) -> None:
        """Print the best-matching chunks with their source ids, character spans and scores."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from curation.index import open_index
        from slmforge.cli_common import run_with_errors

        console = Console()
        ix = run_with_errors(lambda: open_index(index if index is not None else index_dir(workspace, step=step)))
        hits = run_with_errors(ix.search, query, k)
        table = Table(title=Text(f"{len(hits)} of {len(ix)} chunks ({ix.backend}) for: {query}"), show_lines=True)
        for col in ("#", "score", "source", "span", "passage"):
            table.add_column(col, overflow="fold", justify="right" if col in ("#", "score") else "left")
        for rank, h in enumerate(hits, 1):
            text = " ".join(h.text.split())
            text = text if len(text) <= width else text[:width] + " …"
            passage = Text.assemble((h.title + "\n", "bold") if h.title else "", text)
            table.add_row(str(rank), f"{h.score:.3f}", h.source_id, f"{h.span[0]}-{h.span[1]}", passage)
        console.print(table)
        if not hits:
            console.print("no chunk shares a word with the query")
