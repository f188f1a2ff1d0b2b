"""A SQLite search engine for argilla-server 2.8.0, replacing Elasticsearch.

Runs INSIDE the Argilla server venv: imports only argilla_server, numpy and the standard library.
Registered as ``sqlite`` (select with ``ARGILLA_SEARCH_ENGINE=sqlite``); the index file is
``SLMFORGE_SEARCH_DB`` (default ``$ARGILLA_HOME_PATH/search.sqlite3``). Text queries use FTS5 with
bm25; filters, sorting, progress and metrics are SQL; vector similarity is numpy cosine.
Server and rq worker share the file, hence WAL and a busy timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from datetime import datetime
from typing import Any, Iterable, List, Optional, Union
from uuid import UUID

from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder
from argilla_server.search_engine.base import (
    AndFilter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  id TEXT PRIMARY KEY, dataset_id TEXT NOT NULL, external_id TEXT, status TEXT,
  inserted_at TEXT, updated_at TEXT, fields TEXT, metadata TEXT, shuffle INTEGER);
CREATE INDEX IF NOT EXISTS records_dataset ON records(dataset_id, inserted_at);
CREATE TABLE IF NOT EXISTS responses (
  id TEXT PRIMARY KEY, record_id TEXT NOT NULL, user_id TEXT, status TEXT, vals TEXT);
CREATE INDEX IF NOT EXISTS responses_record ON responses(record_id, user_id);
CREATE TABLE IF NOT EXISTS suggestions (
  record_id TEXT NOT NULL, question TEXT NOT NULL, value TEXT, score TEXT, agent TEXT, type TEXT,
  PRIMARY KEY (record_id, question));
CREATE TABLE IF NOT EXISTS vectors (
  record_id TEXT NOT NULL, settings_id TEXT NOT NULL, value BLOB, PRIMARY KEY (record_id, settings_id));
CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY, info TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(
  record_id UNINDEXED, dataset_id UNINDEXED, field UNINDEXED, body, tokenize='unicode61');
"""

RECORD_COLUMNS = {"id", "external_id", "inserted_at", "updated_at", "status"}
_WORD = re.compile(r"\w+", re.UNICODE)


def db_path() -> str:
    explicit = os.environ.get("SLMFORGE_SEARCH_DB")
    if explicit:
        return explicit
    home = os.environ.get("ARGILLA_HOME_PATH", os.path.expanduser("~/.argilla"))
    return os.path.join(home, "search.sqlite3")


def connect(path: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path or db_path(), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.create_function("user_rank", 2, _user_rank, deterministic=True)
    return conn


def _user_rank(seed: str, record_id: str) -> int:
    """Deterministic per-user shuffle (ES uses random_score seeded by the user id)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=6).digest(), "big")


def _ts(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _range_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def fts_query(q: str) -> str | None:
    """ES simple_query_string with AND: every word must occur (phrase-quoted so FTS syntax is inert)."""
    words = _WORD.findall(q)
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '\\"') + '"'


def _md(name: str, alias: str = "r.") -> str:
    """json_extract over a metadata key as an SQL literal (so the expression index is used)."""
    return f"json_extract({alias}metadata, '" + _json_path(name).replace("'", "''") + "')"


@SearchEngine.register(engine_name="sqlite")
class SQLiteSearchEngine(SearchEngine):
    def __init__(self, path: str | None = None) -> None:
        self.path = path or db_path()
        self.conn = connect(self.path)

    @classmethod
    async def new_instance(cls) -> "SQLiteSearchEngine":
        return cls()

    async def close(self) -> None:
        self.conn.close()

    async def ping(self) -> bool:
        try:
            return self.conn.execute("SELECT 1").fetchone() == (1,)
        except sqlite3.Error:
            return False

    async def info(self) -> dict:
        # served without a key by /api/v1/status: no file paths (upstream's Elasticsearch engine returns the
        # cluster's name and version here, nothing about the machine)
        return {"engine": "sqlite", "sqlite_version": sqlite3.sqlite_version}

    # --- indexes --------------------------------------------------------------------------
    async def create_index(self, dataset) -> None:
        self.conn.execute("INSERT OR REPLACE INTO datasets(id, info) VALUES (?, ?)", (str(dataset.id), dataset.name))

    async def delete_index(self, dataset) -> None:
        did = str(dataset.id)
        self.conn.execute("BEGIN")
        self._delete_record_rows("SELECT id FROM records WHERE dataset_id = ?", (did,))
        self.conn.execute("DELETE FROM datasets WHERE id = ?", (did,))
        self.conn.execute("COMMIT")

    async def configure_metadata_property(self, dataset, metadata_property) -> None:
        """Metadata lives as JSON on each record (json_extract at query time); nothing to configure.

        (Expression indexes per property were tried: they made text+filter queries pick the index over
        the FTS join and slowed them 300x on 50k records, so they are not created.)"""

    async def configure_index_vectors(self, vector_settings) -> None:
        """Vectors are stored per record and settings id; no mapping to configure."""

    def _delete_record_rows(self, select_sql: str, params: tuple) -> None:
        for table, col in (("texts", "record_id"), ("responses", "record_id"), ("suggestions", "record_id"),
                           ("vectors", "record_id"), ("records", "id")):
            self.conn.execute(f"DELETE FROM {table} WHERE {col} IN ({select_sql})", params)

    # --- records ----------------------------------------------------------------------------
    async def index_records(self, dataset, records: Iterable[Any]) -> None:
        did = str(dataset.id)
        text_fields = [f for f in dataset.fields if not getattr(f, "is_image", False)]
        rows, texts, responses, suggestions, vectors, ids = [], [], [], [], [], []
        for record in records:
            rid = str(record.id)
            ids.append(rid)
            fields = dict(record.fields or {})
            rows.append((rid, did, record.external_id, str(record.status) if record.status else None,
                         _ts(record.inserted_at), _ts(record.updated_at),
                         json.dumps({f.name: fields.get(f.name) for f in text_fields}, default=str),
                         json.dumps(record.metadata_ or {}, default=str), _user_rank("", rid)))
            for f in text_fields:
                value = fields.get(f.name)
                if value is not None:
                    texts.append((rid, did, f.name, value if isinstance(value, str) else json.dumps(value, default=str)))
            for response in record.responses or []:
                responses.append(self._response_row(response, rid))
            for suggestion in record.suggestions or []:
                suggestions.append(self._suggestion_row(suggestion, rid))
            for vector in record.vectors or []:
                vectors.append((rid, str(vector.vector_settings_id), _vec_blob(vector.value)))
        if not ids:
            return
        self.conn.execute("BEGIN")
        try:
            marks = ",".join("?" * len(ids))
            for table, col in (("texts", "record_id"), ("responses", "record_id"),
                               ("suggestions", "record_id"), ("vectors", "record_id")):
                self.conn.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", ids)
            self.conn.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?)", rows)
            self.conn.executemany("INSERT INTO texts(record_id, dataset_id, field, body) VALUES (?,?,?,?)", texts)
            self.conn.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?)", responses)
            self.conn.executemany("INSERT OR REPLACE INTO suggestions VALUES (?,?,?,?,?,?)", suggestions)
            self.conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?,?,?)", vectors)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    async def partial_record_update(self, record, **update) -> None:
        sets, params = [], []
        for key, value in update.items():
            if key in ("status", "external_id", "updated_at", "inserted_at"):
                sets.append(f"{key} = ?")
                params.append(_ts(value) if key.endswith("_at") else (str(value) if value is not None else None))
            elif key == "metadata":
                sets.append("metadata = ?")
                params.append(json.dumps(value or {}, default=str))
        if sets:
            self.conn.execute(f"UPDATE records SET {', '.join(sets)} WHERE id = ?", (*params, str(record.id)))

    async def delete_records(self, dataset, records: Iterable[Any]) -> None:
        ids = [str(r.id) for r in records]
        if not ids:
            return
        self.conn.execute("BEGIN")
        self._delete_record_rows("SELECT value FROM json_each(?)", (json.dumps(ids),))
        self.conn.execute("COMMIT")

    @staticmethod
    def _response_row(response, record_id: str) -> tuple:
        values = {q: (v or {}).get("value") for q, v in (response.values or {}).items()}
        return (str(response.id), record_id, str(response.user_id), str(response.status), json.dumps(values, default=str))

    @staticmethod
    def _suggestion_row(suggestion, record_id: str) -> tuple:
        return (record_id, suggestion.question.name, json.dumps(suggestion.value, default=str),
                json.dumps(suggestion.score), suggestion.agent, str(suggestion.type) if suggestion.type else None)

    async def update_record_response(self, response) -> None:
        self.conn.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?)",
                          self._response_row(response, str(response.record_id)))

    async def delete_record_response(self, response) -> None:
        self.conn.execute("DELETE FROM responses WHERE id = ?", (str(response.id),))

    async def update_record_suggestion(self, suggestion) -> None:
        self.conn.execute("INSERT OR REPLACE INTO suggestions VALUES (?,?,?,?,?,?)",
                          self._suggestion_row(suggestion, str(suggestion.record_id)))

    async def delete_record_suggestion(self, suggestion) -> None:
        self.conn.execute("DELETE FROM suggestions WHERE record_id = ? AND question = ?",
                          (str(suggestion.record_id), suggestion.question.name))

    # --- progress and metrics -------------------------------------------------------------
    async def get_dataset_progress(self, dataset) -> dict:
        if getattr(dataset, "is_draft", False):
            return {}
        rows = self.conn.execute("SELECT status, count(*) FROM records WHERE dataset_id = ? AND status IS NOT NULL "
                                 "GROUP BY status ORDER BY count(*) DESC", (str(dataset.id),)).fetchall()
        return {"total": sum(n for _s, n in rows), **{s: n for s, n in rows}}

    async def get_dataset_user_progress(self, dataset, user) -> dict:
        if getattr(dataset, "is_draft", False):
            return {}
        rows = self.conn.execute(
            "SELECT p.status, count(*) FROM responses p JOIN records r ON r.id = p.record_id "
            "WHERE r.dataset_id = ? AND p.user_id = ? GROUP BY p.status ORDER BY count(*) DESC",
            (str(dataset.id), str(user.id))).fetchall()
        return {"total": sum(n for _s, n in rows), **{s: n for s, n in rows}}

    async def compute_metrics_for(self, metadata_property):
        did, path = str(metadata_property.dataset_id), _json_path(metadata_property.name)
        if metadata_property.type == MetadataPropertyType.terms:
            rows = self.conn.execute(
                "SELECT CAST(j.value AS TEXT), count(*) FROM records r, "
                "json_each(CASE json_type(r.metadata, ?) WHEN 'array' THEN json_extract(r.metadata, ?) "
                "ELSE json_array(json_extract(r.metadata, ?)) END) j "
                "WHERE r.dataset_id = ? AND json_type(r.metadata, ?) IS NOT NULL AND json_type(r.metadata, ?) != 'null' "
                "GROUP BY 1 ORDER BY 2 DESC, 1", (path, path, path, did, path, path)).fetchall()
            return TermsMetrics(total=sum(n for _t, n in rows),
                                values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows])
        lo, hi = self.conn.execute(
            "SELECT min(json_extract(metadata, ?)), max(json_extract(metadata, ?)) FROM records WHERE dataset_id = ?",
            (path, path, did)).fetchone()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(min=lo, max=hi)
        return FloatMetadataMetrics(min=lo, max=hi)

    # --- filters -----------------------------------------------------------------------------
    def _filter_sql(self, flt) -> tuple[str, list]:
        if isinstance(flt, AndFilter):
            parts = [self._filter_sql(f) for f in flt.filters]
            if not parts:
                return "1", []
            return "(" + " AND ".join(p for p, _ in parts) + ")", [x for _, ps in parts for x in ps]
        scope = flt.scope
        if isinstance(scope, RecordFilterScope):
            if scope.property not in RECORD_COLUMNS:
                raise ValueError(f"cannot filter on record property {scope.property!r}; known: {sorted(RECORD_COLUMNS)}")
            return _cond(f"r.{scope.property}", flt)
        if isinstance(scope, MetadataFilterScope):
            path, col = _json_path(scope.metadata_property), _md(scope.metadata_property)
            if isinstance(flt, TermsFilter):
                marks = ",".join("?" * len(flt.values))
                values = [str(v) for v in flt.values]
                return (f"({col} IN ({marks}) OR (json_type(r.metadata, ?) = 'array' AND EXISTS (SELECT 1 FROM "
                        f"json_each(r.metadata, ?) j WHERE CAST(j.value AS TEXT) IN ({marks}))))",
                        [*values, path, path, *values])
            return _cond(col, flt)
        if isinstance(scope, SuggestionFilterScope):
            prop = scope.property or "value"
            if prop not in ("value", "score", "agent", "type"):
                raise ValueError(f"cannot filter suggestions on {prop!r}; use value, score, agent or type")
            col = f"json_extract(s.{prop}, '$')" if prop in ("value", "score") else f"s.{prop}"
            inner, params = _list_cond(col, flt) if prop in ("value", "score") else _cond(col, flt)
            return (f"EXISTS (SELECT 1 FROM suggestions s WHERE s.record_id = r.id AND s.question = ? AND {inner})",
                    [scope.question, *params])
        if isinstance(scope, ResponseFilterScope):
            user = [str(scope.user.id)] if scope.user else []
            user_sql = " AND p.user_id = ?" if scope.user else ""
            if scope.question:
                inner, params = _list_cond(f"json_extract(p.vals, ?)", flt, prefix=[_json_path(scope.question)])
                return (f"EXISTS (SELECT 1 FROM responses p WHERE p.record_id = r.id{user_sql} AND {inner})",
                        [*user, *params])
            if scope.property == "status" and isinstance(flt, TermsFilter):
                values = [str(v) for v in flt.values]
                parts, params = [], []
                if "pending" in values:
                    parts.append(f"NOT EXISTS (SELECT 1 FROM responses p WHERE p.record_id = r.id{user_sql})")
                    params += user
                    values = [v for v in values if v != "pending"]
                if values:
                    marks = ",".join("?" * len(values))
                    parts.append(f"EXISTS (SELECT 1 FROM responses p WHERE p.record_id = r.id{user_sql} "
                                 f"AND p.status IN ({marks}))")
                    params += [*user, *values]
                return ("(" + " OR ".join(parts) + ")" if parts else "1"), params
            raise ValueError(f"cannot process response filter scope {scope}")
        raise ValueError(f"unknown filter scope {scope!r}")

    def _order_sql(self, order: Order) -> tuple[str, list]:
        scope, direction = order.scope, ("DESC" if order.order == SortOrder.desc else "ASC")
        if isinstance(scope, RecordFilterScope):
            if scope.property not in RECORD_COLUMNS:
                raise ValueError(f"cannot sort on record property {scope.property!r}")
            return f"r.{scope.property} {direction}", []
        if isinstance(scope, MetadataFilterScope):
            return f"{_md(scope.metadata_property)} {direction}", []
        if isinstance(scope, SuggestionFilterScope):
            prop = scope.property or "value"
            col = f"json_extract(s.{prop}, '$')" if prop in ("value", "score") else f"s.{prop}"
            return (f"(SELECT {col} FROM suggestions s WHERE s.record_id = r.id AND s.question = ?) {direction}",
                    [scope.question])
        if isinstance(scope, ResponseFilterScope):
            key = scope.question or scope.property
            expr = "json_extract(p.vals, ?)" if scope.question else f"p.{key}"
            params = [_json_path(key)] if scope.question else []
            user_sql = " AND p.user_id = ?" if scope.user else ""
            if scope.user:
                params.append(str(scope.user.id))
            return (f"(SELECT avg({expr}) FROM responses p WHERE p.record_id = r.id{user_sql}) {direction}", params)
        raise ValueError(f"unknown sort scope {scope!r}")

    def _candidates(self, dataset, query, flt) -> tuple[str, list, bool]:
        """FROM/WHERE clause over ``records r`` (joined with FTS hits when there is a text query)."""
        params: list = []
        text = TextQuery(q=query) if isinstance(query, str) else query
        match = fts_query(text.q) if text is not None else None
        has_text = text is not None
        if has_text and text.field and dataset.field_by_name(text.field) is None:
            raise ValueError(f"Field {text.field} not found in dataset {dataset.id}")
        if has_text and match is None:
            return "FROM records r WHERE 0", [], False
        if has_text:
            field_sql = " AND field = ?" if text.field else ""
            sql = ("FROM records r JOIN (SELECT record_id, min(rank) AS rank FROM texts WHERE texts MATCH ? "
                   f"AND dataset_id = ?{field_sql} GROUP BY record_id) t "
                   "ON t.record_id = r.id WHERE r.dataset_id = ?")
            params = [match, str(dataset.id), *([text.field] if text.field else []), str(dataset.id)]
        else:
            sql, params = "FROM records r WHERE r.dataset_id = ?", [str(dataset.id)]
        if flt is not None:
            where, fparams = self._filter_sql(flt)
            sql += f" AND {where}"
            params += fparams
        return sql, params, has_text

    async def search(self, dataset, query: Optional[Union[TextQuery, str]] = None, filter=None,
                     sort: Optional[List[Order]] = None, offset: int = 0, limit: int = 100,
                     user_id: Optional[str] = None) -> SearchResponses:
        base, params, has_text = self._candidates(dataset, query, filter)
        total = self.conn.execute(f"SELECT count(*) {base}", params).fetchone()[0]
        order_parts, order_params = [], []
        for order in sort or []:
            part, ps = self._order_sql(order)
            order_parts.append(part)
            order_params += ps
        if has_text:
            order_parts.append("t.rank ASC")
        if user_id:
            order_parts.append("(r.shuffle * ?) % 2147483629")
            order_params.append(_user_rank(str(user_id), "seed") % 2147483629 + 1)
        order_parts.append("r.inserted_at ASC, r.id ASC")
        score = "-t.rank" if has_text else "1.0"
        rows = self.conn.execute(
            f"SELECT r.id, {score} {base} ORDER BY {', '.join(order_parts)} LIMIT ? OFFSET ?",
            [*params, *order_params, limit, offset]).fetchall()
        return SearchResponses(items=[SearchResponseItem(record_id=UUID(r), score=s) for r, s in rows], total=total)

    async def similarity_search(self, dataset, vector_settings, value: Optional[List[float]] = None, record=None,
                                query=None, filter=None, max_results: int = 100,
                                order: SimilarityOrder = SimilarityOrder.most_similar,
                                threshold: Optional[float] = None) -> SearchResponses:
        import numpy as np

        sid = str(vector_settings.id)
        exclude = None
        if value is None and record is not None:
            row = self.conn.execute("SELECT value FROM vectors WHERE record_id = ? AND settings_id = ?",
                                    (str(record.id), sid)).fetchone()
            if row is None:
                raise ValueError(f"record {record.id} has no vector {vector_settings.name!r}")
            value, exclude = _vec_from_blob(row[0]), str(record.id)
        if value is None:
            raise ValueError("similarity_search needs a value or a record")
        base, params, _ = self._candidates(dataset, query, filter)
        rows = self.conn.execute(
            f"SELECT r.id, v.value {base.replace('FROM records r', 'FROM records r JOIN vectors v ON v.record_id = r.id AND v.settings_id = ?', 1)}",
            [sid, *params]).fetchall()
        rows = [(rid, blob) for rid, blob in rows if rid != exclude]
        if not rows:
            return SearchResponses(items=[], total=0)
        matrix = np.stack([_vec_from_blob(b) for _r, b in rows])
        q = np.asarray(value, dtype=np.float32)
        scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q) + 1e-12)
        if order == SimilarityOrder.least_similar:
            scores = -scores
        idx = np.argsort(-scores, kind="stable")
        items = []
        for i in idx:
            s = float(scores[i])
            if threshold is not None and s < threshold:
                continue
            items.append(SearchResponseItem(record_id=UUID(rows[i][0]), score=s))
            if len(items) >= max_results:
                break
        return SearchResponses(items=items, total=len(items))


def _vec_blob(value) -> bytes:
    import numpy as np

    return np.asarray(value, dtype=np.float32).tobytes()


def _vec_from_blob(blob: bytes):
    import numpy as np

    return np.frombuffer(blob, dtype=np.float32)


def _cond(col: str, flt, *, prefix: list | None = None) -> tuple[str, list]:
    prefix = prefix or []
    if isinstance(flt, TermsFilter):
        marks = ",".join("?" * len(flt.values))
        return f"{col} IN ({marks})", [*prefix, *[str(v) for v in flt.values]]
    if isinstance(flt, RangeFilter):
        parts, params = [], []
        if flt.ge is not None:
            parts.append(f"{col} >= ?")
            params += [*prefix, _range_value(flt.ge)]
        if flt.le is not None:
            parts.append(f"{col} <= ?")
            params += [*prefix, _range_value(flt.le)]
        return ("(" + " AND ".join(parts) + ")" if parts else "1"), params
    raise ValueError(f"unknown filter {flt!r}")


def _list_cond(col: str, flt, *, prefix: list | None = None) -> tuple[str, list]:
    """Like _cond, but a JSON array value matches when any element matches (multi-label answers)."""
    if isinstance(flt, TermsFilter):
        prefix = prefix or []
        marks = ",".join("?" * len(flt.values))
        return (f"EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({col}) AND json_type({col}) = 'array' "
                f"THEN {col} ELSE json_array({col}) END) j WHERE CAST(j.value AS TEXT) IN ({marks}))",
                [*prefix, *prefix, *prefix, *prefix, *[str(v) for v in flt.values]])
    return _cond(col, flt, prefix=prefix)
