"""Near-duplicate dedup with MinHash LSH (a global stage), vectorised over Arrow batches: the local driver.

The kernels (shingles, MinHash, banding, verification, components, representatives) live in
:mod:`curation.dedup.shingle` and :mod:`curation.dedup.minhash`, shared with the Ray driver
(:mod:`curation.dedup.near_ray`). This driver, in one process:

1. hashes batches in a thread pool (``workers`` threads; polars, numpy and Arrow release the
   GIL), consumed in input order, so results do not depend on ``workers`` or ``batch_size``;
2. spills one 64-bit hash per band per document to a file (read back as a memmap) and the raw
   shingle hashes (for verification), so memory holds no signatures or texts;
3. finds candidate pairs (same bucket in any band), verifies them with exact Jaccard of the
   shingle-hash sets of candidate documents only, labels connected components and picks one
   representative per cluster (longest / earliest / best_quality, ties: earliest).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.dedup.config import NearDedupConfig
from curation.dedup.minhash import (
    SpillWriter,
    batch_bands,
    batch_meta,
    candidate_pairs,
    check_columns,
    components,
    input_columns,
    lsh_params,
    pair_jaccard,
    read_sets,
    representatives,
)
from schemas.arrow import decisions
from schemas.errors import SchemaError
from schemas.io import iter_parquet_batches, read_parquet, write_parquet
from schemas.stage import ShardResult, Stage, StageContext

CLUSTERS_FILE = "near_dedup_clusters.parquet"


def cluster_batches(
    make_batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]],
    *,
    config: NearDedupConfig,
    workers: int = 1,
    spill_dir: Path | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Cluster documents streamed by ``make_batches()`` (batches with ``id, text``; called once).

    Returns a table ``id, cluster_id, is_rep, jaccard`` aligned with the input order
    (``jaccard``: exact Jaccard to the representative, 1.0 for representatives) and stats.

    Batches are hashed by ``workers`` threads (polars' regex, numpy and Arrow release the GIL, so
    the threads run in parallel without pickling texts or re-importing modules in worker
    processes); results are consumed in input order, so the output does not depend on ``workers``.
    """
    metas: list[pa.Table] = []
    has_list: list[np.ndarray] = []
    tmp = tempfile.TemporaryDirectory(dir=spill_dir, prefix="near_dedup-")
    spill_path = Path(tmp.name) / "bands.bin"  # uint64 band hashes, docs x bands
    shingles = SpillWriter(Path(tmp.name) / "shingles")  # raw uint64 shingle hashes, in document order
    n_docs = 0
    with open(spill_path, "wb") as spill:

        def consume(res):
            nonlocal n_docs
            bh, has, hashes, counts = res
            spill.write(np.ascontiguousarray(bh).tobytes())
            shingles.add(hashes, counts)
            has_list.append(has)
            n_docs += len(has)
            progress(len(has))

        def texts_of(batches):
            start = 0
            for batch in batches:
                check_columns(batch.schema.names, config)
                metas.append(batch_meta(batch, config, start))
                start += batch.num_rows
                yield batch.column("text")

        # a thread pool even for one worker: the main thread reads/decodes the next batch meanwhile;
        # datasketch (+scipy) is imported for the LSH parameters while the first batch is shingled
        with ThreadPoolExecutor(1, thread_name_prefix="near_dedup_params") as side, \
                ThreadPoolExecutor(workers, thread_name_prefix="near_dedup") as pool:
            params = side.submit(lsh_params, config)
            pending: list = []
            try:
                for texts in texts_of(make_batches()):
                    pending.append(pool.submit(batch_bands, texts, config.ngram, params))
                    while len(pending) > workers:  # bounded in-flight batches, results in input order
                        consume(pending.pop(0).result())
                while pending:
                    consume(pending.pop(0).result())
            finally:
                for fut in pending:
                    fut.cancel()
            a, b, bands, rows = params.result()
    shingles.close()

    n = n_docs
    meta = pa.concat_tables(metas) if metas else None
    has = np.concatenate(has_list) if has_list else np.zeros(0, bool)
    bands_mm = np.memmap(spill_path, dtype=np.uint64, mode="r", shape=(n, bands)) if n else np.zeros((0, bands), np.uint64)
    keys = candidate_pairs(bands_mm, has)
    del bands_mm
    pi = (keys // np.uint64(max(n, 1))).astype(np.int64)
    pj = (keys % np.uint64(max(n, 1))).astype(np.int64)

    # exact shingle sets of candidate documents only, read back from the spill file
    sets = read_sets(shingles.prefix, np.unique(np.concatenate([pi, pj])))
    ok = pair_jaccard(pi, pj, [sets], threshold=config.threshold) >= config.threshold
    comp = components(n, pi[ok], pj[ok])
    rep = representatives(comp, meta, config) if meta is not None else np.zeros(0, np.int64)
    is_rep = rep == np.arange(n)
    jac = np.ones(n)
    nr = np.nonzero(~is_rep)[0]
    jac[nr] = pair_jaccard(nr, rep[nr], [sets])
    ids = meta["id"].combine_chunks() if meta is not None else pa.array([], pa.string())
    sizes = np.bincount(comp) if n else np.zeros(0, np.int64)
    table = pa.table({"id": ids, "cluster_id": ids.take(pa.array(rep)), "is_rep": pa.array(is_rep),
                      "jaccard": pa.array(jac, pa.float64())})
    stats = {
        "docs": n, "bands": bands, "rows": rows, "candidate_pairs": int(len(keys)), "verified_pairs": int(ok.sum()),
        "clusters": int((sizes > 0).sum()), "duplicate_clusters": int((sizes > 1).sum()),
        "duplicates": int(n - (sizes > 0).sum()), "empty_docs": int((~has).sum()),
    }
    tmp.cleanup()
    return table, stats


def _resolve_workers(config: NearDedupConfig, workers: int) -> int:
    return max(1, int(config.workers or workers))


def cluster_texts(ids: Sequence, texts: Sequence[str], *, config: NearDedupConfig | None = None, workers: int = 1) -> list:
    """Cluster id of every document (the representative's id), aligned with ``ids``."""
    config = config or NearDedupConfig()
    if len(ids) != len(texts):
        raise SchemaError("cluster_texts: ids and texts differ in length", received=f"{len(ids)} ids, {len(texts)} texts",
                          expected="one id per text", fix="pass aligned sequences")
    id_arr = pa.array(list(ids))
    tbl = pa.table({"id": id_arr, "text": pa.array(list(texts), pa.string())})
    table, _ = cluster_batches(lambda: tbl.to_batches(max_chunksize=config.batch_size), config=config,
                               workers=_resolve_workers(config, workers), spill_dir=config.spill_dir)
    return table.column("cluster_id").to_pylist()


def _file_batches(paths: Sequence[Path], config: NearDedupConfig) -> Callable[[], Iterator[pa.RecordBatch]]:
    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            yield from iter_parquet_batches(path, batch_size=config.batch_size, columns=input_columns(config))

    return batches


def dedup_file(input: Path, output: Path, *, config: NearDedupConfig, workers: int) -> dict:
    """Parquet ``id, text`` (id int64 or string) -> Parquet ``id, cluster_id`` (same type), atomically."""
    table, stats = cluster_batches(_file_batches([Path(input)], config), config=config,
                                   workers=_resolve_workers(config, workers), spill_dir=config.spill_dir)
    write_parquet(table.select(["id", "cluster_id"]), Path(output))
    return stats


class NearDedupStage(Stage[NearDedupConfig]):
    """Keeps one representative per near-duplicate cluster; the others are dropped with decisions."""

    kind = "global"
    version = "1"
    requires = {"id": pa.string(), "text": pa.string()}
    adds = {"cluster_id": pa.string()}

    def __init__(self, config: NearDedupConfig) -> None:
        super().__init__(config)
        self._clusters: dict[str, tuple[str, bool, float]] | None = None

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        cfg = self.config
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        table, stats = cluster_batches(_file_batches(shards, cfg), config=cfg, workers=_resolve_workers(cfg, ctx.workers),
                                       spill_dir=cfg.spill_dir or ctx.work_dir, progress=ctx.progress)
        table = pa.table({"id": table["id"].cast(pa.string()), "cluster_id": table["cluster_id"].cast(pa.string()),
                          "is_representative": table["is_rep"], "jaccard": table["jaccard"]})
        # singletons are implicit (keep, own cluster id): store non-singleton members only
        import pyarrow.compute as pc

        counts = pc.value_counts(table["cluster_id"])
        multi = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        write_parquet(table.filter(pc.is_in(table["cluster_id"], value_set=multi)), ctx.work_dir / CLUSTERS_FILE)

    def prepare_distributed(self, shards: list[Path], ctx: StageContext, *, backend: str,
                            workers: int) -> tuple[dict[str, Any], dict[str, float]] | None:
        """On Ray (unless ``ray_components: task``): the same cluster file, computed by Ray tasks
        (:mod:`curation.dedup.near_ray`) instead of one process."""
        if backend != "ray" or self.config.ray_components == "task":
            return None
        import time

        from curation.dedup.near_ray import cluster_on_ray

        table, stats, timing = cluster_on_ray(shards, config=self.config, workers=workers, spill_dir=Path(ctx.work_dir))
        t0 = time.perf_counter()
        write_parquet(table, Path(ctx.work_dir) / CLUSTERS_FILE)
        timing["write"] = time.perf_counter() - t0
        return stats, timing

    def _load_clusters(self, ctx: StageContext) -> dict[str, tuple[str, bool, float]]:
        if self._clusters is None:
            t = read_parquet(ctx.work_dir / CLUSTERS_FILE)
            self._clusters = {i: (c, r, s) for i, c, r, s in zip(t["id"].to_pylist(), t["cluster_id"].to_pylist(),
                                                                  t["is_representative"].to_pylist(), t["jaccard"].to_pylist())}
        return self._clusters

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        clusters = self._load_clusters(ctx)
        ids = table.column("id").cast(pa.string()).to_pylist()
        keep, cluster_col = [], []
        drop_ids, drop_scores, drop_detail = [], [], []
        keep_ids, keep_detail = [], []
        for i in ids:
            entry = clusters.get(i)
            if entry is None:
                keep.append(True)
                cluster_col.append(i)
            elif entry[1]:
                keep.append(True)
                cluster_col.append(entry[0])
                keep_ids.append(i)
                keep_detail.append({"cluster_id": entry[0]})
            else:
                keep.append(False)
                cluster_col.append(entry[0])
                drop_ids.append(i)
                drop_scores.append(entry[2])
                drop_detail.append({"cluster_id": entry[0]})
        mask = pa.array(keep, pa.bool_())
        out = table.append_column("cluster_id", pa.array(cluster_col, pa.string())).filter(mask)
        step = ctx.step
        dec = [
            decisions(keep_ids, stage=step, action="keep", reason="near_duplicate_representative", score=1.0, detail=keep_detail),
            decisions(drop_ids, stage=step, action="drop", reason="near_duplicate", score=drop_scores, detail=drop_detail),
        ]
        counters = Counter({"dropped:near_duplicate": len(drop_ids), "kept:representative": len(keep_ids)})
        return ShardResult(table=out, decisions=pa.concat_tables(dec), counters=counters)
