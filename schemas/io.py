"""Atomic, deterministic Parquet/JSON IO.

Every write goes to a temporary file in the same folder and is renamed into place, so a
crash leaves either the old file or the new one, never half a file. Parquet is written with
fixed options so the same table always gives the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)
ROW_GROUP_ROWS = 10_000


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` atomically with deterministic options."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
    return Path(path)


def write_parquet_batches(
    batches: Iterable[pa.RecordBatch | pa.Table], path: str | os.PathLike, *, schema: pa.Schema
) -> int:
    """Stream batches into one Parquet file atomically; returns the number of rows written."""
    rows = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as writer:
            for batch in batches:
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                if table.num_rows:
                    writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_ROWS)
                    rows += table.num_rows
    return rows


def write_json(obj: object, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_parquet(path: str | os.PathLike, *, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def read_parquet_dir(path: str | os.PathLike, *, pattern: str = "part-*.parquet", columns=None) -> pa.Table:
    """Concatenate the shards of a stage folder in shard order."""
    files = sorted(Path(path).glob(pattern))
    if not files:
        return pa.table({})
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def iter_parquet_batches(path: str | os.PathLike, *, batch_size: int = 4096, columns=None) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet file in bounded batches."""
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
