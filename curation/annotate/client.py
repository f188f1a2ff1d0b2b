"""Talk to Argilla with the argilla 2.8.0 SDK (co-installs in the main venv): queues, push, pull, progress.

Target: ARGILLA_API_URL/ARGILLA_API_KEY when set (a production Argilla with Elasticsearch), else the
embedded server's credentials written by `slmforge annotate serve`. Nothing here waits for a human.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa

from schemas.errors import ConfigError, StageError, require

QUESTIONS = ("decision", "rating", "correction")


def target_url(api_url: str | None = None) -> str:
    """The Argilla URL the annotate stages talk to (no network): the config's, ARGILLA_API_URL, or the embedded one."""
    if api_url or os.environ.get("ARGILLA_API_URL"):
        return str(api_url or os.environ["ARGILLA_API_URL"])
    from curation.annotate.embedded import Embedded

    return Embedded.from_env().url


def connect(*, api_url: str | None = None, api_key: str | None = None):
    """An ``rg.Argilla`` client; fails fast with the fix when no server is configured or reachable."""
    require("argilla", extra="annotate", purpose="pushing to and pulling from Argilla review queues")
    import argilla as rg

    url = api_url or os.environ.get("ARGILLA_API_URL")
    key = api_key or os.environ.get("ARGILLA_API_KEY")
    if not url or not key:
        from curation.annotate.embedded import Embedded, credentials, running

        emb = Embedded.from_env()
        creds = credentials(emb)
        if creds is None or "server" not in running(emb):
            raise StageError(
                "no Argilla server to talk to: ARGILLA_API_URL/ARGILLA_API_KEY are not set and the embedded "
                "server is not running.\nStart it with `slmforge annotate serve`, or export ARGILLA_API_URL and "
                "ARGILLA_API_KEY of your Argilla deployment."
            )
        url, key = url or emb.url, key or creds["api_key"]
    try:
        return rg.Argilla(api_url=url, api_key=key, timeout=60)
    except Exception as exc:  # the SDK raises several types; keep the cause
        raise StageError(f"cannot reach Argilla at {url}: {exc}. Is the server running and the API key right?") from exc


def ensure_queue(client, name: str, *, workspace: str, labels: list[str], metadata: dict[str, pa.DataType]):
    """Get or create the queue dataset with our fields/questions/metadata."""
    import argilla as rg

    ws = client.workspaces(workspace)
    if ws is None:
        ws = rg.Workspace(name=workspace, client=client).create()
    existing = client.datasets(name=name, workspace=ws)
    if existing is not None:
        return existing
    props = []
    for col, typ in metadata.items():
        if pa.types.is_integer(typ):
            props.append(rg.IntegerMetadataProperty(name=col))
        elif pa.types.is_floating(typ):
            props.append(rg.FloatMetadataProperty(name=col))
        else:
            props.append(rg.TermsMetadataProperty(name=col))
    settings = rg.Settings(
        guidelines="Decide whether the row stays in the dataset; correct its text if it is almost right.",
        fields=[rg.TextField(name="text", title="Text", use_markdown=False)],
        questions=[
            rg.LabelQuestion(name="decision", title="Keep this row?", labels=labels),
            rg.RatingQuestion(name="rating", title="Quality (1-5)", values=[1, 2, 3, 4, 5], required=False),
            rg.TextQuestion(name="correction", title="Corrected text (leave empty if fine)", required=False),
        ],
        metadata=props,
        distribution=rg.TaskDistribution(min_submitted=1),
    )
    return rg.Dataset(name=name, workspace=ws, settings=settings, client=client).create()


def _text_of(value: Any) -> str:
    if isinstance(value, list):  # chat messages
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return "" if value is None else str(value)


def push(client, queue_rows: pa.Table, *, queue: str, rule_column: str | None, text_column: str,
         metadata_columns: list[str], workspace: str, labels: list[str]) -> int:
    """Upsert rows into ``queue`` (record id = our id, so a second push updates instead of duplicating)."""
    import argilla as rg

    missing = [c for c in [text_column, *metadata_columns] if c not in queue_rows.column_names]
    if missing:
        raise ConfigError(f"annotate: column(s) {missing} are not columns of the routed rows",
                          received=queue_rows.column_names, fix="fix text_column / metadata_columns")
    meta_cols = [c for c in dict.fromkeys([*metadata_columns, *([rule_column] if rule_column else [])])
                 if c in queue_rows.column_names and c != text_column]
    schema = queue_rows.schema
    meta_types = {c: schema.field(c).type for c in meta_cols
                  if pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type)
                  or pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)}
    dataset = ensure_queue(client, queue, workspace=workspace, labels=labels, metadata=meta_types)
    records = []
    for row in queue_rows.to_pylist():
        metadata = {c: row[c] for c in meta_types if row.get(c) is not None}
        suggestions = []
        score = row.get(rule_column) if rule_column else None
        if isinstance(score, (int, float)) and 0.0 <= score <= 1.0 and {"keep", "drop"} <= set(labels):
            suggestions.append(rg.Suggestion(question_name="decision", value="keep" if score >= 0.5 else "drop",
                                             score=float(score), agent=rule_column))
        records.append(rg.Record(id=row["id"], fields={"text": _text_of(row[text_column])}, metadata=metadata,
                                 suggestions=suggestions))
    if records:
        dataset.records.log(records)
    return len(records)


def pull(client, queue: str, *, workspace: str) -> list[dict[str, Any]]:
    """Submitted answers of ``queue``: one dict per (record, user, question)."""
    dataset = client.datasets(name=queue, workspace=workspace) if queue in queue_names(client, workspace=workspace) \
        else None
    if dataset is None:
        raise StageError(f"queue {queue!r} does not exist in workspace {workspace!r}; push to it first "
                         "(`slmforge annotate push`, or an `annotate` step before this one).")
    users = {str(u.id): u.username for u in client.users}
    out = []
    for record in dataset.records(with_responses=True):
        for response in record.responses:
            status = str(getattr(response.status, "value", response.status))
            if status != "submitted":
                continue
            uid = str(response.user_id)
            out.append({"id": record.id, "queue": queue, "user": users.get(uid, uid),
                        "question": response.question_name, "value": json.dumps(response.value)})
    return out


def queue_names(client, *, workspace: str) -> set[str]:
    """Names of the queues (datasets) in ``workspace``; empty when the workspace does not exist yet."""
    ws = client.workspaces(workspace)
    return {d.name for d in ws.datasets} if ws is not None else set()


def require_queues(client, queues: list[str], *, workspace: str) -> None:
    """Raise the fix when a queue does not exist (a typo in ``queues:``, or nothing pushed to it yet)."""
    names = queue_names(client, workspace=workspace)
    missing = [q for q in queues if q not in names]
    if missing:
        raise StageError(f"queue(s) {missing} do not exist in workspace {workspace!r}",
                         received=sorted(names), fix="push to them first (`slmforge annotate push`, or an `annotate` "
                         "step before this one), or fix the names in 'queues:'")


def progress(client, *, workspace: str) -> list[dict[str, Any]]:
    """Per queue: records, completed, pending (from the server's progress endpoint)."""
    ws = client.workspaces(workspace)
    if ws is None:
        return []
    rows = []
    for dataset in ws.datasets:
        p = dataset.progress()
        rows.append({"queue": dataset.name, "total": p.get("total", 0), "completed": p.get("completed", 0),
                     "pending": p.get("pending", 0)})
    return rows
