"""Scrub every text-bearing column of a table: plain strings, strings nested in list/struct values, JSON-object
strings such as ``meta`` (walked value by value, each analysed as ``key: value`` so key names give context),
and ``source`` (file names; PII parts become tags derived from the whole original source, so one source
always maps to one scrubbed source and distinct sources stay distinct).

One analyzer call covers every string of a shard; a shard the analyzer fails on is retried row by row and the
failing rows are reported (the stage quarantines them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curation.pii.config import ID_COLUMNS, PiiConfig
from schemas.errors import ConfigError

SOURCE = "source"
TEXT = "text"
#: tags in ``source`` are keyed by this constant unless the corpus key ($SLMFORGE_PII_KEY) is set
_SOURCE_SALT = b"slmforge-pii-source"


def _has_string(t: pa.DataType) -> bool:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_string(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_string(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _has_string(t.item_type)
    return False


def text_columns(schema: pa.Schema, config: PiiConfig) -> list[str]:
    """The columns scrubbed: ``config.columns`` (each must exist), else every string-bearing column but ids/labels."""
    if config.columns is not None:
        missing = [c for c in config.columns if c not in schema.names]
        if missing:
            raise ConfigError(f"pii columns {missing} are not in the input", received=schema.names,
                              expected="names of string, list or struct columns of the input",
                              fix="remove them from `columns`, or leave `columns` unset to scrub every text column")
        bad = [c for c in config.columns if not _has_string(schema.field(c).type)]
        if bad:
            raise ConfigError(f"pii columns {bad} hold no strings", received=[str(schema.field(c).type) for c in bad],
                              expected="string, or list/struct/map columns containing strings",
                              fix="list only text-bearing columns")
        return list(config.columns)
    return [f.name for f in schema if f.name not in ID_COLUMNS and _has_string(f.type)]


@dataclass
class _Leaf:
    row: int
    column: str
    path: str
    value: str
    key: str | None  # the dict key / JSON key holding the value: analysed as "key: value"


@dataclass
class RowReport:
    """What happened to one row: applied spans per column (``text`` with offsets; others with their path),
    residual spans left in place (residual: review) and the marked strings a reviewer sees."""

    applied: dict[str, list[dict]] = field(default_factory=dict)
    residual: dict[str, list[dict]] = field(default_factory=dict)
    marked: dict[str, str] = field(default_factory=dict)
    error: Exception | None = None

    @property
    def changed(self) -> bool:
        return any(self.applied.values())


def _walk(value: Any, key: str | None, path: str, row: int, column: str, leaves: list[_Leaf], parse_json: bool):
    """A tree mirroring ``value`` whose string leaves are indices into ``leaves``."""
    if isinstance(value, str):
        if parse_json and value[:1] in "{[":
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, (dict, list)):
                return ("json", value, _walk(parsed, key, path, row, column, leaves, parse_json))
        leaves.append(_Leaf(row, column, path, value, key))
        return ("leaf", len(leaves) - 1)
    if isinstance(value, dict):
        return ("dict", {k: _walk(v, str(k), f"{path}.{k}", row, column, leaves, parse_json) for k, v in value.items()})
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):  # an Arrow map
            return ("map", [(k, _walk(v, str(k), f"{path}.{k}", row, column, leaves, parse_json)) for k, v in value])
        return ("list", [_walk(v, key, f"{path}[{i}]", row, column, leaves, parse_json) for i, v in enumerate(value)])
    return ("const", value)


def _ids(node) -> list[int]:
    kind = node[0]
    if kind == "leaf":
        return [node[1]]
    if kind == "json":
        return _ids(node[2])
    if kind == "dict":
        return [i for v in node[1].values() for i in _ids(v)]
    if kind in ("list", "map"):
        return [i for v in node[1] for i in _ids(v[1] if kind == "map" else v)]
    return []


def _build(node, out: list[str], changed: set[int]):
    kind = node[0]
    if kind == "leaf":
        return out[node[1]]
    if kind == "json":
        if not changed.intersection(_ids(node[2])):
            return node[1]  # untouched: the original string byte for byte
        return json.dumps(_build(node[2], out, changed), ensure_ascii=False)
    if kind == "dict":
        return {k: _build(v, out, changed) for k, v in node[1].items()}
    if kind == "map":
        return [(k, _build(v, out, changed)) for k, v in node[1]]
    if kind == "list":
        return [_build(v, out, changed) for v in node[1]]
    return node[1]


def _analysed_text(leaf: _Leaf) -> str:
    if leaf.column == SOURCE:  # path separators read as spaces (same length, so offsets hold)
        return leaf.value.replace("/", " ").replace("\\", " ")
    return f"{leaf.key}: {leaf.value}" if leaf.key else leaf.value


def _local(spans: list[dict], leaf: _Leaf) -> list[dict]:
    """Spans moved from the analysed text to the value (those inside the key prefix dropped, others clipped)."""
    shift = len(leaf.key) + 2 if leaf.key and leaf.column != SOURCE else 0
    out = []
    for s in spans:
        start, end = max(s["start"] - shift, 0), min(s["end"] - shift, len(leaf.value))
        if end > start:
            out.append({**s, "start": start, "end": end})
    return out


def _source_replace(value: str, spans: list[dict], key: bytes | None) -> str:
    digest = hmac.new(key or _SOURCE_SALT, value.encode(), hashlib.sha256).hexdigest()[:8]
    out, pos = [], 0
    for s in spans:
        out += [value[pos:s["start"]], f"<{s['entity_type']}_{digest}>"]
        pos = s["end"]
    return "".join(out + [value[pos:]])


def _analyse(texts: list[str], rows: list[int], n_rows: int, config: PiiConfig) -> tuple[list, dict[int, Exception]]:
    """Spans per analysed text; on a failure, row by row so only the failing rows are lost."""
    from curation.pii.engine import analyze_batch

    try:
        return analyze_batch(texts, config), {}
    except Exception:  # noqa: BLE001 - find the failing rows one by one below
        pass
    spans: list = [[] for _ in texts]
    errors: dict[int, Exception] = {}
    for r in range(n_rows):
        idx = [i for i, row in enumerate(rows) if row == r]
        try:
            for i, found in zip(idx, analyze_batch([texts[i] for i in idx], config)):
                spans[i] = found
        except Exception as exc:  # noqa: BLE001 - becomes a quarantine row with the reason
            errors[r] = exc
    return spans, errors


def scrub_table(table: pa.Table, config: PiiConfig, *, key: bytes | None = None,
                source_key: bytes | None = None) -> tuple[pa.Table, list[RowReport]]:
    """The table with every text column scrubbed (same schema and rows) and a report per row. ``key``: the corpus
    pseudonym key; ``source_key``: keys the tags written into ``source`` (a fixed salt when None).

    A row whose ``text`` is not a string, or whose analysis raises, keeps its values and carries ``error``."""
    from curation.pii.anonymize import mark, replace

    columns = text_columns(table.schema, config)
    leaves: list[_Leaf] = []
    trees: dict[str, list] = {}
    for col in columns:
        values = table.column(col).to_pylist()
        trees[col] = [_walk(v, None, col, r, col, leaves, parse_json=col not in (TEXT, SOURCE))
                      for r, v in enumerate(values)]
    reports = [RowReport() for _ in range(table.num_rows)]
    if TEXT in columns:
        for r, v in enumerate(table.column(TEXT).to_pylist()):
            if not isinstance(v, str):
                reports[r].error = TypeError(f"text is {type(v).__name__}, expected str")
    todo = [i for i, leaf in enumerate(leaves) if reports[leaf.row].error is None]
    found, errors = _analyse([_analysed_text(leaves[i]) for i in todo], [leaves[i].row for i in todo],
                             table.num_rows, config)
    for r, exc in errors.items():
        reports[r].error = exc
    out = [leaf.value for leaf in leaves]
    changed: set[int] = set()
    for i, spans in zip(todo, found):
        leaf = leaves[i]
        if reports[leaf.row].error is not None or not spans:
            continue
        spans = _local(spans, leaf)
        primary = [s for s in spans if s["score"] >= config.score_threshold]
        rest = [s for s in spans if s["score"] < config.score_threshold]
        if config.residual == "replace":
            primary, rest = spans, []
        rep = reports[leaf.row]
        where = {} if leaf.column == TEXT else {"path": leaf.path}
        if primary:
            out[i] = _source_replace(leaf.value, primary, source_key) if leaf.column == SOURCE else \
                replace(leaf.value, primary, config, key=key)
            changed.add(i)
            rep.applied.setdefault(leaf.column, []).extend({**where, **s} for s in primary)
        if rest:
            rep.residual.setdefault(leaf.column, []).extend({**where, **s} for s in rest)
            rep.marked[leaf.path] = mark(leaf.value, primary, rest, config, key=key)
    new = table
    for col in columns:
        idx = new.schema.get_field_index(col)
        f = new.schema.field(idx)
        values = [_build(t, out, changed) if reports[r].error is None else table.column(col)[r].as_py()
                  for r, t in enumerate(trees[col])]
        new = new.set_column(idx, f, pa.array(values, type=f.type))
    return new, reports
