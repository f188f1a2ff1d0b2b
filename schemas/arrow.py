"""Arrow schemas of the data contracts and their validation at stage boundaries.

Declared once here; every stage checks its input against the columns it requires and casts
its output to the schema it declares, so a mismatch fails with an error that names the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa

from schemas.errors import SchemaError

#: Bump when any schema below changes shape; it is part of every stage fingerprint.
SCHEMA_VERSION = "1"

DOCUMENTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # stable URI: <input name>/<relative path>
        pa.field("format", pa.string(), nullable=False),  # txt|md|html|pdf|jsonl|csv|parquet
        pa.field("span_start", pa.int64()),  # char span in the source file's text, for split files
        pa.field("span_end", pa.int64()),
        pa.field("content_hash", pa.string(), nullable=False),  # sha256 of the raw text
        pa.field("title", pa.string()),
        pa.field("meta", pa.string()),  # JSON object: extra columns of structured inputs
    ]
)

CHUNKS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("span_start", pa.int64(), nullable=False),  # char offsets in the document text
        pa.field("span_end", pa.int64(), nullable=False),
        pa.field("heading", pa.string()),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("parent_ids", pa.list_(pa.string()), nullable=False),
    ]
)

DECISIONS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),  # keep|drop|modify|quarantine
        pa.field("reason", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("detail", pa.string()),  # JSON: cluster ids, spans (never original PII values)
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("payload", pa.large_string()),  # the row (JSON) or a pointer to the raw input
    ]
)

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.large_string())])

EXAMPLES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # source|annotated|synthetic
        pa.field("source_ids", pa.list_(pa.string()), nullable=False),
        pa.field("teacher", pa.string()),
        pa.field("template", pa.string()),
        pa.field("judge_score", pa.float64()),
        pa.field("split", pa.string()),  # train|validation|test (set by the dataset builder)
        pa.field("meta", pa.string()),
    ]
)

#: what ``synth`` writes: every judged example (all EXAMPLES columns) plus the scores ``synth_filter`` compares
#: with its thresholds (scores are columns, thresholds are config: re-thresholding never calls the teacher)
SYNTH_CANDIDATES = pa.schema(
    [
        *EXAMPLES,
        pa.field("question", pa.string()),  # the first user question, without any passage around it
        pa.field("judge_groundedness", pa.float64()),  # 0-1, worst turn
        pa.field("judge_helpfulness", pa.float64()),  # 0-1, worst turn
        pa.field("lexical_groundedness", pa.float64()),  # 0-1 share of answer words found in the source chunk
        pa.field("answer_chars_min", pa.int64()),  # shortest assistant turn, characters
        pa.field("answer_chars_max", pa.int64()),  # longest assistant turn, characters
    ]
)

ACTIONS = ("keep", "drop", "modify", "quarantine")
ORIGINS = ("source", "annotated", "synthetic")
SPLITS = ("train", "validation", "test")


def columns(schema: pa.Schema) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in schema}


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected) or pa.types.is_null(actual):
        return True
    strings = (pa.string(), pa.large_string(), pa.string_view())
    if expected in strings and actual in strings:
        return True
    if pa.types.is_integer(expected) and pa.types.is_integer(actual):
        return True
    if pa.types.is_floating(expected) and (pa.types.is_floating(actual) or pa.types.is_integer(actual)):
        return True
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        if pa.types.is_list(actual) or pa.types.is_large_list(actual):
            return _compatible(actual.value_type, expected.value_type)
        return False
    if pa.types.is_struct(expected) and pa.types.is_struct(actual):
        want = {f.name: f.type for f in expected}
        have = {f.name: f.type for f in actual}
        return all(n in have and _compatible(have[n], t) for n, t in want.items())
    return False


def validate(
    schema: pa.Schema | pa.Table,
    required: Mapping[str, pa.DataType] | pa.Schema,
    *,
    where: str,
) -> None:
    """Raise :class:`SchemaError` naming every missing or mistyped column."""
    have = schema.schema if isinstance(schema, pa.Table) else schema
    want = columns(required) if isinstance(required, pa.Schema) else dict(required)
    have_types = columns(have)
    missing = [n for n in want if n not in have_types]
    mistyped = [
        f"{n} ({have_types[n]}, expected {t})"
        for n, t in want.items()
        if n in have_types and not _compatible(have_types[n], t)
    ]
    if missing or mistyped:
        problems = []
        if missing:
            problems.append("missing column(s): " + ", ".join(missing))
        if mistyped:
            problems.append("mistyped column(s): " + ", ".join(mistyped))
        raise SchemaError(
            f"{where}: input does not match the contract; " + "; ".join(problems),
            received=", ".join(f"{n}:{t}" for n, t in have_types.items()) or "(no columns)",
            expected=", ".join(f"{n}:{t}" for n, t in want.items()),
            fix="put a stage that produces these columns upstream, or rename the columns of the input file",
        )


def conform(table: pa.Table, schema: pa.Schema, *, where: str) -> pa.Table:
    """Validate then cast/reorder ``table`` to ``schema`` (extra columns are kept at the end)."""
    validate(table, schema, where=where)
    cols = []
    fields = []
    for f in schema:
        cols.append(table.column(f.name).cast(f.type))
        fields.append(f.with_nullable(True) if table.column(f.name).null_count else f)
    extra = [n for n in table.column_names if n not in schema.names]
    for n in extra:
        cols.append(table.column(n))
        fields.append(table.schema.field(n))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def decisions(
    ids: Sequence[str] | pa.Array,
    *,
    stage: str,
    action: str | Sequence[str],
    reason: str | Sequence[str],
    score: float | None | Sequence[float | None] = None,
    detail: Iterable[object] | None = None,
) -> pa.Table:
    """Build a DECISIONS table; scalars broadcast, ``detail`` items are JSON-encoded."""
    ids = pa.array(ids, type=pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
    n = len(ids)

    def col(value, typ):
        if isinstance(value, (str, float, int)) or value is None:
            return pa.array([value] * n, type=typ)
        return pa.array(list(value), type=typ)

    if isinstance(action, str) and action not in ACTIONS:
        raise ValueError(f"action {action!r} not in {ACTIONS}")
    det = (
        pa.array([None] * n, type=pa.string())
        if detail is None
        else pa.array([None if d is None else json.dumps(d, sort_keys=True) for d in detail], type=pa.string())
    )
    return pa.Table.from_arrays(
        [ids, col(stage, pa.string()), col(action, pa.string()), col(reason, pa.string()), col(score, pa.float64()), det],
        schema=DECISIONS,
    )


def quarantine(
    ids: Sequence[str], *, stage: str, reason: Sequence[str] | str, source: Sequence[str | None] | None = None,
    payload: Sequence[str | None] | None = None,
) -> pa.Table:
    n = len(ids)
    reasons = [reason] * n if isinstance(reason, str) else list(reason)
    return pa.Table.from_pydict(
        {
            "id": list(ids),
            "stage": [stage] * n,
            "reason": reasons,
            "source": list(source) if source is not None else [None] * n,
            "payload": list(payload) if payload is not None else [None] * n,
        },
        schema=QUARANTINE,
    )
