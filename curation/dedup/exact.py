"""Exact dedup on a hash of the normalised text (a global stage).

``prepare`` streams ``id, text`` of every shard, keeps only a 64-bit hash and the id per
document, and writes ``id -> cluster_id`` (the representative's id) atomically; ``process``
keeps representatives and records every duplicate in decisions with its cluster.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.normalize import dedup_key
from schemas.arrow import decisions
from curation.dedup.config import ExactDedupConfig
from schemas.io import iter_parquet_batches, read_parquet, write_parquet
from schemas.stage import ShardResult, Stage, StageContext

CLUSTERS_FILE = "exact_clusters.parquet"


def _hash(text: str, config: ExactDedupConfig) -> int:
    import xxhash

    key = dedup_key(text, casefold=config.casefold, ignore_punctuation=config.ignore_punctuation)
    return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))


def cluster_batches(batches, *, config: ExactDedupConfig, progress=lambda n: None) -> pa.Table:
    """``id, cluster_id, is_rep`` over streamed batches with columns ``id, text``.

    The representative is the first document of a group in input order, or the longest one
    (ties: first) with ``keep="longest"``. Memory: one hash + id + length per document.
    """
    first: dict[int, int] = {}  # hash -> position of the representative
    ids: list = []
    rep_pos: list[int] = []
    lengths: list[int] = []
    id_type = None
    for batch in batches:
        id_type = id_type or batch.schema.field("id").type
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            pos = len(ids)
            ids.append(doc_id)
            text = text or ""
            lengths.append(len(text))
            h = _hash(text, config)
            rep = first.get(h)
            if rep is None:
                first[h] = pos
                rep_pos.append(pos)
            else:
                if config.keep == "longest" and lengths[pos] > lengths[rep]:
                    first[h] = pos
                rep_pos.append(rep)  # provisional: resolved to the group's final representative below
        progress(batch.num_rows)
    # every member points at the first member; map first member -> final representative
    final = {rep_pos[p]: p for p in first.values()} if config.keep == "longest" else {}
    cluster_pos = [final.get(r, r) for r in rep_pos]
    cluster = [ids[p] for p in cluster_pos]
    is_rep = [p == i for i, p in enumerate(cluster_pos)]
    sizes = Counter(cluster_pos)
    id_type = id_type or pa.string()
    return pa.table(
        {
            "id": pa.array(ids, type=id_type),
            "cluster_id": pa.array(cluster, type=id_type),
            "is_rep": is_rep,
            "size": pa.array([sizes[p] for p in cluster_pos], type=pa.int32()),
        }
    )


def dedup_file(input: Path, output: Path, *, config: ExactDedupConfig | None = None, batch_size: int = 8192) -> dict:
    """Any Parquet with ``id, text`` -> Parquet ``id, cluster_id`` (duplicates share a cluster id)."""
    import pyarrow.parquet as pq

    config = config or ExactDedupConfig()
    schema = pq.read_schema(input)
    missing = [c for c in ("id", "text") if c not in schema.names]
    if missing:
        from schemas.errors import SchemaError

        raise SchemaError(
            f"dedup --exact: {input} lacks column(s) {', '.join(missing)}",
            received=", ".join(schema.names), expected="columns id (int or string) and text (string)",
            fix="rename the columns or select them before calling dedup",
        )
    table = cluster_batches(iter_parquet_batches(input, batch_size=batch_size, columns=["id", "text"]), config=config)
    write_parquet(table.select(["id", "cluster_id"]), output)
    n = table.num_rows
    n_rep = int(pc.sum(table.column("is_rep")).as_py() or 0)
    return {"docs": n, "clusters": n_rep, "duplicates": n - n_rep}


class ExactDedupStage(Stage[ExactDedupConfig]):
    kind = "global"
    version = "1"
    requires = {"id": pa.string(), "text": pa.large_string()}

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        def batches():
            for shard in shards:
                yield from iter_parquet_batches(shard, columns=["id", "text"])

        table = cluster_batches(batches(), config=self.config, progress=ctx.progress)
        write_parquet(table, ctx.work_dir / CLUSTERS_FILE)

    def _clusters(self, ctx: StageContext) -> dict[str, tuple[str, bool, int]]:
        cache = getattr(self, "_cache", None)
        if cache is None:
            t = read_parquet(ctx.work_dir / CLUSTERS_FILE).to_pydict()
            cache = {i: (c, r, n) for i, c, r, n in zip(t["id"], t["cluster_id"], t["is_rep"], t["size"])}
            self._cache = cache
        return cache

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        clusters = self._clusters(ctx)
        ids = table.column("id").to_pylist()
        keep, actions, reasons, details = [], [], [], []
        for i in ids:
            cluster, is_rep, size = clusters[i]
            keep.append(is_rep)
            actions.append("keep" if is_rep else "drop")
            reasons.append(("representative" if size > 1 else "unique") if is_rep else "exact_duplicate")
            details.append({"cluster_id": cluster, "cluster_size": size} if size > 1 else None)
        ctx.progress(len(ids))
        dec = decisions(ids, stage=ctx.step, action=actions, reason=reasons, detail=details)
        counters = Counter({"dropped:exact_duplicate": actions.count("drop")})
        return ShardResult(table.filter(pa.array(keep, type=pa.bool_())), dec, counters=counters)
