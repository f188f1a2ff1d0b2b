"""Search latency of the SQLite search plugin over 50k records (target: <= 300 ms per search).

Run inside the server venv:  ~/.cache/slmforge/argilla-server-venv/bin/python bench/annotate/search_50k.py
Indexes N synthetic records (vocabulary of 2,000 words, 40 words each) with metadata, responses and
suggestions, then times text search, text + filter + sort, filter-only with sort, response-status
filter for a user, progress and metrics. Prints the median and max of 5 runs of each.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "curation", "annotate", "server"))

from argilla_server.enums import MetadataPropertyType, SortOrder  # noqa: E402
from argilla_server.search_engine.base import (  # noqa: E402
    AndFilter, MetadataFilterScope, Order, RangeFilter, ResponseFilterScope, TermsFilter)

import sqlite_engine  # noqa: E402

N = int(os.environ.get("N", "50000"))


async def main() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)] + ["invoice", "payment", "contract"]
    fields = [NS(name="text", is_image=False)]
    ds = NS(id=uuid.uuid4(), name="bench", fields=fields, is_draft=False,
            field_by_name=lambda n: next((f for f in fields if f.name == n), None))
    user = NS(id=uuid.uuid4())
    q = NS(name="decision")
    t0 = datetime(2024, 1, 1)
    path = os.path.join(tempfile.mkdtemp(), "search.sqlite3")
    eng = sqlite_engine.SQLiteSearchEngine(path)
    await eng.create_index(ds)
    for name in ("lang", "score"):
        await eng.configure_metadata_property(ds, NS(name=name))
    start = time.perf_counter()
    for b in range(0, N, 1000):
        recs = []
        for i in range(b, min(N, b + 1000)):
            rid = uuid.uuid4()
            responses = [NS(id=uuid.uuid4(), user_id=user.id, status="submitted", values={"decision": {"value": "keep"}})] if i % 3 == 0 else []
            recs.append(NS(id=rid, external_id=str(i), status="completed" if responses else "pending",
                           inserted_at=t0 + timedelta(seconds=i), updated_at=t0,
                           fields={"text": " ".join(rng.choice(words) for _ in range(40))},
                           metadata_={"lang": rng.choice(["en", "de", "fr"]), "score": rng.random()},
                           responses=responses, vectors=[],
                           suggestions=[NS(question=q, value=rng.choice(["keep", "drop"]), score=rng.random(), agent="m", type="model")]))
        await eng.index_records(ds, recs)
    index_s = time.perf_counter() - start
    en = TermsFilter(scope=MetadataFilterScope(metadata_property="lang"), values=["en"])
    cases = {
        "text 'invoice'": dict(query="invoice"),
        "text 2 words + lang filter + score sort": dict(query="invoice payment", filter=AndFilter(filters=[en, RangeFilter(
            scope=MetadataFilterScope(metadata_property="score"), ge=0.2)]),
            sort=[Order(scope=MetadataFilterScope(metadata_property="score"), order=SortOrder.desc)]),
        "filter lang + sort score (no text)": dict(filter=en, sort=[Order(scope=MetadataFilterScope(metadata_property="score"), order=SortOrder.asc)]),
        "pending for user (annotator queue page)": dict(filter=TermsFilter(scope=ResponseFilterScope(property="status", user=user), values=["pending"]), user_id=str(user.id)),
        "page 200 of all records": dict(offset=20000, limit=100),
    }
    print(f"indexed {N} records in {index_s:.1f} s ({path})")
    for name, kw in cases.items():
        times = []
        for _ in range(5):
            t = time.perf_counter()
            res = await eng.search(ds, **kw)
            times.append((time.perf_counter() - t) * 1000)
        print(f"{name:45s} total={res.total:6d}  median={statistics.median(times):7.1f} ms  max={max(times):7.1f} ms")
    for name, fn in {"progress": lambda: eng.get_dataset_progress(ds),
                     "user progress": lambda: eng.get_dataset_user_progress(ds, user),
                     "terms metrics lang": lambda: eng.compute_metrics_for(NS(dataset_id=ds.id, name="lang", type=MetadataPropertyType.terms))}.items():
        times = []
        for _ in range(5):
            t = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - t) * 1000)
        print(f"{name:45s} median={statistics.median(times):7.1f} ms  max={max(times):7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
