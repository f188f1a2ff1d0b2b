#!/usr/bin/env python3
"""Synthetic scale tier: K disjoint copies of the shared throughput corpus (no committed data).

Copy c > 0 appends a copy marker to every word, so copies never match each other while each
copy keeps the corpus's own near-duplicate structure. Usage: make_synth.py --copies 4 --docs 25000 OUT.parquet
"""
import argparse
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--copies", type=int, default=1)
ap.add_argument("--docs", type=int, default=25000, help="documents taken from the shared corpus per copy")
ap.add_argument("--src", default="/work/shared/bench/dedup/data/throughput/docs.parquet")
a = ap.parse_args()
base = pq.read_table(a.src).slice(0, a.docs)
texts = base["text"].to_pylist()
rng = np.random.default_rng(20261123)
word = re.compile(r"(\w+)")
writer = None
for c in range(a.copies):
    t = texts if c == 0 else [word.sub(lambda m: m.group(1) + f"q{c}", x) for x in texts]
    ids = rng.integers(0, 2**62, size=len(t), dtype=np.int64)
    tbl = pa.table({"id": pa.array(ids), "text": pa.array(t, pa.string())})
    writer = writer or pq.ParquetWriter(a.out, tbl.schema, compression="zstd")
    writer.write_table(tbl)
writer.close()
