"""Dataset builder: assign train/validation/test splits grouped by source document.

``prepare`` reads the ids and ``source_ids`` of every row, joins rows that share any source
document into one group (union-find), orders the groups by a seeded hash and gives the first
ones to test, the next to validation and the rest to train. ``process`` then sets ``split`` on
each shard. The output is Parquet (Arrow) and loads with ``datasets.load_dataset("parquet", ...)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import EXAMPLES, MESSAGE, conform, decisions, quarantine
from train.config import DatasetConfig
from schemas.io import read_parquet, write_parquet
from schemas.stage import ShardResult, Stage, StageContext

ROLES = ("system", "user", "assistant")


def problem(messages: list[dict] | None) -> str | None:
    """Why a conversation cannot be trained on (None when it can)."""
    if not messages:
        return "no messages"
    for m in messages:
        if m.get("role") not in ROLES:
            return f"unknown role {m.get('role')!r}"
        if not (m.get("content") or "").strip():
            return f"empty {m.get('role')} message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


def group_rows(ids: list[str], source_ids: list[list[str] | None]) -> dict[str, str]:
    """row id -> group key; rows sharing any source id are in one group (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for rid, srcs in zip(ids, source_ids):
        nodes = [f"row:{rid}"] + [f"src:{s}" for s in (srcs or [])]
        root = find(nodes[0])
        for n in nodes[1:]:
            other = find(n)
            if other != root:
                parent[other] = root
    groups: dict[str, list[str]] = {}
    for rid in ids:
        groups.setdefault(find(f"row:{rid}"), []).append(rid)
    # name each group by its smallest member so the key does not depend on union order
    return {rid: min(members) for members in groups.values() for rid in members}


def assign_splits(group_of: dict[str, str], *, seed: int, validation: float, test: float) -> dict[str, str]:
    """group key -> split. Counts are rounded; any non-zero fraction gets at least one group when
    there are three or more groups, so tiny datasets still have a held-out split."""
    keys = sorted(set(group_of.values()), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n = len(keys)

    def count(frac: float) -> int:
        if frac <= 0 or n == 0:
            return 0
        return max(1 if n >= 3 else 0, round(frac * n))

    n_test, n_val = count(test), count(validation)
    n_val = min(n_val, max(0, n - n_test - 1))
    out = {}
    for i, key in enumerate(keys):
        out[key] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return out


class DatasetStage(Stage[DatasetConfig]):
    kind = "global"
    version = "1"
    requires = {"id": pa.string(), "messages": pa.list_(MESSAGE), "source_ids": pa.list_(pa.string())}
    output = EXAMPLES

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        ids: list[str] = []
        sources: list[list[str] | None] = []
        for path in shards:
            t = pq.read_table(path, columns=["id", "source_ids"])
            ids += t.column("id").to_pylist()
            sources += t.column("source_ids").to_pylist()
        group_of = group_rows(ids, sources)
        split_of = assign_splits(group_of, seed=self.config.seed, validation=self.config.validation_fraction,
                                 test=self.config.test_fraction)
        table = pa.table({"id": ids, "group": [group_of[i] for i in ids],
                          "split": [split_of[group_of[i]] for i in ids]})
        write_parquet(table, Path(ctx.work_dir) / "splits.parquet")

    def load(self) -> None:
        self._splits: dict[str, tuple[str, str]] | None = None

    def _assignment(self, ctx: StageContext) -> dict[str, tuple[str, str]]:
        if getattr(self, "_splits", None) is None:
            t = read_parquet(Path(ctx.work_dir) / "splits.parquet")
            self._splits = dict(zip(t.column("id").to_pylist(),
                                    zip(t.column("split").to_pylist(), t.column("group").to_pylist())))
        return self._splits

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        assignment = self._assignment(ctx)
        rows = table.to_pylist()
        keep: list[dict] = []
        bad: list[tuple[str, str, str]] = []
        dec: list[tuple[str, str, str, dict | None]] = []
        for row in rows:
            why = problem(row.get("messages"))
            if why is not None:
                bad.append((row["id"], why, json.dumps(row, default=str)))
                dec.append((row["id"], "quarantine", why, None))
                continue
            split, group = assignment[row["id"]]
            row["split"] = split
            keep.append(row)
            dec.append((row["id"], "modify", f"split:{split}", {"group": group}))
        out = pa.Table.from_pylist(keep, schema=_schema_of(table)) if keep else EXAMPLES.empty_table()
        result = ShardResult(
            table=conform(out, EXAMPLES, where=f"{ctx.step} output"),
            decisions=decisions([d[0] for d in dec], stage=ctx.step, action=[d[1] for d in dec],
                                reason=[d[2] for d in dec], detail=[d[3] for d in dec]),
            quarantine=quarantine([b[0] for b in bad], stage=ctx.step, reason=[b[1] for b in bad],
                                  payload=[b[2] for b in bad]),
        )
        for row in keep:
            result.counters[f"split:{row['split']}"] += 1
        for b in bad:
            result.counters[f"quarantined:{b[1]}"] += 1
        return result

    def summary(self, stats):
        c = stats.get("counters", {})
        return [("splits", " / ".join(f"{s} {c.get(f'split:{s}', 0)}" for s in ("train", "validation", "test")))]


def _schema_of(table: pa.Table) -> pa.Schema:
    schema = table.schema
    if "split" not in schema.names:
        schema = schema.append(pa.field("split", pa.string()))
    return schema
