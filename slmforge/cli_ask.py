"""``slmforge ask`` and ``slmforge serve``: answer from a bundle (train/bundle.py) with llama.cpp.

Import only typer/rich at module level (``slmforge --help`` stays instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slmforge.cli_common import console, out, run_with_errors

BUNDLE_HELP = "Bundle folder (holds bundle.json). Default: the last run's bundle step in --workspace."
WS_HELP = "Workspace of a run whose recipe ends with a bundle step (used when --bundle is not given)."


def workspace_bundle(workspace: Path) -> Path:
    """The bundle folder of the last run in ``workspace`` (its last bundle step)."""
    from schemas.errors import ConfigError
    from slmforge.plan import latest_manifest
    from train.bundle import MANIFEST

    runs = latest_manifest(Path(workspace))
    steps = [s for s in runs["steps"] if s["stage"] == "bundle"]
    if not steps:
        raise ConfigError(f"the last run in {workspace} has no bundle step", received=[s["name"] for s in runs["steps"]],
                          fix="add '- stage: bundle' at the end of the recipe and run it, or pass --bundle DIR")
    folder = Path(workspace) / steps[-1]["dir"] / "bundle"
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"the bundle step of the last run in {workspace} has not finished", received=str(folder),
                          fix="run the recipe to the end: slmforge run RECIPE")
    return folder


def _bundle_path(bundle: Optional[Path], workspace: Optional[Path]) -> Path:
    from schemas.errors import ConfigError

    if bundle is not None:
        return bundle
    if workspace is None:
        raise ConfigError("no bundle given", fix="pass --bundle DIR, or -w WORKSPACE for the last run's bundle")
    return workspace_bundle(workspace)


def _print_answer(to, ans) -> None:
    from rich.markup import escape
    from rich.table import Table

    to.print(escape(ans.answer) or "[dim](empty answer)[/]", highlight=False)  # model text is not markup
    if ans.finish_reason == "length":
        to.print("[dim](stopped at the token limit: --max-tokens)[/]")
    elif ans.finish_reason == "loop":
        to.print("[dim](cut where the answer began to repeat itself: --loop-ngram)[/]")
    if ans.closed_book:
        to.print("[dim]closed-book: no passages retrieved[/]")
        return
    table = Table(title="passages", show_header=True, header_style="bold")
    for col in ("", "cited", "source", "span", "score", "text"):
        table.add_column(col, overflow="fold")
    for p in ans.passages:
        text = " ".join(p.text.split())
        text = text if len(text) <= 160 else text[:157] + "..."
        table.add_row(escape(f"[{p.n}]"), "yes" if p.n in ans.cited else "", escape(p.source_id),
                      f"{p.span[0]}-{p.span[1]}", f"{p.score:.3g}", escape(text))
    to.print(table)
    if ans.passages_dropped:
        to.print(f"[yellow]{ans.passages_dropped} lower-ranked passage(s) left out: the prompt would not fit n_ctx[/]")


def register(app: typer.Typer) -> None:
    """Add ``ask`` and ``serve`` to the main app."""

    @app.command("ask")
    def ask_cmd(
        question: Optional[str] = typer.Argument(None, help="The question (or use --questions)."),
        bundle: Optional[Path] = typer.Option(None, "--bundle", "-b", help=BUNDLE_HELP),
        workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
        questions: Optional[Path] = typer.Option(None, help="JSONL file: one {id, question} per line."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL answers for --questions: "
                                              "id, answer, citations, passages."),
        k: Optional[int] = typer.Option(None, "-k", min=1, max=64, help="Passages retrieved (default: the bundle's)."),
        closed_book: bool = typer.Option(False, "--closed-book", help="Answer without retrieval."),
        gguf: Optional[str] = typer.Option(None, help="GGUF type, e.g. Q4_K_M (default: the bundle's, Q8_0 if present)."),
        max_tokens: Optional[int] = typer.Option(None, min=1, help="Longest answer in tokens (default: the bundle's)."),
        repeat_penalty: Optional[float] = typer.Option(None, min=0.5, max=2.0, help="llama.cpp repetition penalty "
                                                       "(1.0: none; default: the bundle's)."),
        loop_ngram: Optional[int] = typer.Option(None, min=0, max=64, help="Cut the answer when its last N tokens "
                                                 "repeat earlier ones (0: off; default: the bundle's)."),
        quote: Optional[bool] = typer.Option(None, "--quote/--no-quote", help="Open-book answers quote a span of "
                                             "one passage and cite it (default: the bundle's)."),
        threads: Optional[int] = typer.Option(None, min=1, help="llama.cpp CPU threads (default: the physical cores)."),
    ) -> None:
        """Answer a question (or a file of them) with citations, from a bundle, through llama.cpp."""

        def go():
            from schemas.errors import ConfigError
            from train.answer import open_reader, read_questions

            if (question is None) == (questions is None):
                raise ConfigError("give either a question or --questions FILE", fix='slmforge ask -b DIR "question"')
            if questions is not None and output is None:
                raise ConfigError("--questions needs --output FILE.jsonl")
            rows = read_questions(questions) if questions is not None else None  # checked before loading the model
            reader = open_reader(_bundle_path(bundle, workspace), gguf=gguf, threads=threads)
            try:
                # checked before the first answer; None keeps the bundle's setting
                reader.generation.override(max_tokens=max_tokens, repeat_penalty=repeat_penalty, loop_ngram=loop_ngram)
                kw = dict(k=k, closed_book=closed_book or not reader.has_index, max_tokens=max_tokens,
                          repeat_penalty=repeat_penalty, loop_ngram=loop_ngram, quote=quote)
                if rows is None:
                    _print_answer(out, reader.answer(question, **kw))
                    if not reader.has_index and not closed_book:
                        out.print("[dim]this bundle has no index: answered closed-book[/]")
                    return
                _answer_file(reader, rows, output, **kw)
            finally:
                reader.close()

        run_with_errors(go)

    @app.command("serve")
    def serve_cmd(
        bundle: Optional[Path] = typer.Option(None, "--bundle", "-b", help=BUNDLE_HELP),
        workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
        port: int = typer.Option(8000, min=0, max=65535, help="Port on 127.0.0.1 (0: any free port)."),
        gguf: Optional[str] = typer.Option(None, help="GGUF type (default: the bundle's)."),
        threads: Optional[int] = typer.Option(None, min=1, help="llama.cpp CPU threads (default: the physical cores)."),
        state_dir: Optional[Path] = typer.Option(None, help="Folder of the API key file (default "
                                                 "$XDG_STATE_HOME/slmforge or ~/.local/state/slmforge)."),
    ) -> None:
        """OpenAI-compatible /v1/chat/completions for a bundle on 127.0.0.1 (Bearer key required)."""

        def go():
            from slmforge.serve import api_key, make_server
            from train.answer import open_reader

            reader = open_reader(_bundle_path(bundle, workspace), gguf=gguf, threads=threads)
            try:
                key, key_file, created = api_key(state_dir)  # after the bundle loads, shown at once when new
                if created:
                    console.print(f"new API key (shown once; stored 0600 in {key_file}):\n  {key}", highlight=False)
                else:
                    console.print(f"API key: the one stored in {key_file}")
                server = make_server(reader, key=key, port=port)
            except BaseException:
                reader.close()
                raise
            host, bound = server.server_address[:2]
            console.print(f"serving {reader.model_name} at http://{host}:{bound}/v1 "
                          f"({'retrieval on' if reader.has_index else 'closed-book: no index'}); Ctrl-C stops")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
                reader.close()

        run_with_errors(go)


def _answer_file(reader, rows, output: Path, **kw) -> None:
    import json

    from rich.progress import Progress

    from schemas.io import atomic_path

    cited = 0
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as fh, Progress(console=console) as bar:
        task = bar.add_task("answering", total=len(rows))
        for row in rows:
            ans = reader.answer(row["question"], **kw)
            cited += bool(ans.citations)
            fh.write(json.dumps({"id": row["id"], "question": row["question"], "answer": ans.answer,
                                 "citations": ans.citations, "closed_book": ans.closed_book,
                                 "finish_reason": ans.finish_reason, "completion_tokens": ans.completion_tokens,
                                 "passages": [{"n": p.n, "source_id": p.source_id, "chunk_id": p.chunk_id,
                                               "span": list(p.span), "score": p.score} for p in ans.passages]},
                                ensure_ascii=False) + "\n")
            bar.advance(task)
    console.print(f"wrote {len(rows)} answers to {output} ({cited} with citations)")
