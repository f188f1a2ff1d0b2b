"""Exercises every SearchEngine method of our SQLite plugin. Runs INSIDE the Argilla server venv
(argilla_server importable): ``<server-venv>/bin/python tests/annotate/plugin_suite.py DB_PATH``.
Uses argilla_server's real filter/sort/enum classes; datasets/records are plain namespaces with the
attributes the engine reads. Exits non-zero on the first failed assertion.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace as NS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "curation", "annotate", "server"))

from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder  # noqa: E402
from argilla_server.search_engine.base import (  # noqa: E402
    AndFilter, MetadataFilterScope, Order, RangeFilter, RecordFilterScope, ResponseFilterScope, SearchEngine,
    SuggestionFilterScope, TermsFilter, TextQuery)

import sqlite_engine  # noqa: E402

TEXTS = ["the invoice total is wrong", "payment terms net thirty", "invoice paid in full", "weather is nice",
         "the invoice was sent twice"]


def make(dataset_id):
    fields = [NS(name="text", is_image=False), NS(name="img", is_image=True)]
    ds = NS(id=dataset_id, name="q", fields=fields, is_draft=False,
            field_by_name=lambda n: next((f for f in fields if f.name == n), None))
    users = [NS(id=uuid.uuid4()), NS(id=uuid.uuid4())]
    q = NS(name="decision")
    vs = NS(id=uuid.uuid4(), name="emb")
    t0 = datetime(2024, 1, 1)
    records = []
    for i, text in enumerate(TEXTS):
        rid = uuid.uuid4()
        responses = []
        if i < 2:
            responses.append(NS(id=uuid.uuid4(), record_id=rid, user_id=users[0].id, status="submitted",
                                values={"decision": {"value": "keep" if i == 0 else "drop"}}))
        if i == 1:
            responses.append(NS(id=uuid.uuid4(), record_id=rid, user_id=users[1].id, status="draft",
                                values={"decision": {"value": "keep"}}))
        records.append(NS(id=rid, external_id=f"r{i}", status="completed" if i < 2 else "pending",
                          inserted_at=t0 + timedelta(minutes=i), updated_at=t0 + timedelta(minutes=i),
                          fields={"text": text, "img": "data:..."},
                          metadata_={"lang": "en" if i != 3 else "de", "score": i / 10, "n": i, "tags": ["a", f"t{i}"]},
                          responses=responses,
                          suggestions=[NS(question=q, record_id=rid, value="keep" if i % 2 == 0 else "drop",
                                          score=0.2 * i, agent="model", type="model")],
                          vectors=[NS(vector_settings_id=vs.id, value=[1.0, float(i), 0.0])], dataset=ds))
    return ds, users, q, vs, records


async def main(path: str) -> None:
    os.environ["SLMFORGE_SEARCH_DB"] = path
    async with SearchEngine.get_by_name("sqlite") as eng:
        assert await eng.ping() and (await eng.info())["engine"] == "sqlite"
        ds, users, q, vs, recs = make(uuid.uuid4())
        other, *_, other_recs = make(uuid.uuid4())
        await eng.create_index(ds)
        await eng.create_index(other)
        for name in ("lang", "score", "n", "tags"):
            await eng.configure_metadata_property(ds, NS(name=name))
        await eng.configure_index_vectors(vs)
        await eng.index_records(ds, recs)
        await eng.index_records(other, other_recs)
        ext = {r.id: r.external_id for r in recs}

        async def ids(**kw):
            res = await eng.search(ds, **kw)
            return [ext[i.record_id] for i in res.items], res.total

        # text search: bm25 order, AND semantics, field scoping, isolation between datasets
        got, total = await ids(query="invoice")
        assert total == 3 and set(got) == {"r0", "r2", "r4"}, got
        assert (await ids(query=TextQuery(q="invoice wrong", field="text")))[0] == ["r0"]
        assert (await ids(query="nothingmatches"))[1] == 0
        assert (await ids(query='"; DROP TABLE records; --'))[1] == 0
        # filters + sort + paging
        en = TermsFilter(scope=MetadataFilterScope(metadata_property="lang"), values=["en"])
        assert (await ids(filter=en))[1] == 4
        got, _ = await ids(query="invoice", filter=AndFilter(filters=[en, RangeFilter(
            scope=MetadataFilterScope(metadata_property="score"), ge=0.15)]),
            sort=[Order(scope=MetadataFilterScope(metadata_property="n"), order=SortOrder.desc)])
        assert got == ["r4", "r2"], got
        assert (await ids(filter=TermsFilter(scope=MetadataFilterScope(metadata_property="tags"), values=["t3"])))[0] == ["r3"]
        got, total = await ids(sort=[Order(scope=RecordFilterScope(property="inserted_at"), order=SortOrder.desc)],
                               offset=1, limit=2)
        assert got == ["r3", "r2"] and total == 5, got
        assert (await ids(filter=TermsFilter(scope=RecordFilterScope(property="status"), values=["completed"])))[1] == 2
        # responses scoped to a user (and the per-user shuffle of user_id)
        u0, u1 = users
        sub = TermsFilter(scope=ResponseFilterScope(property="status", user=u0), values=["submitted"])
        assert sorted((await ids(filter=sub))[0]) == ["r0", "r1"]
        pend = TermsFilter(scope=ResponseFilterScope(property="status", user=u1), values=["pending"])
        assert sorted((await ids(filter=pend))[0]) == ["r0", "r2", "r3", "r4"]
        pend_any = TermsFilter(scope=ResponseFilterScope(property="status"), values=["pending", "draft"])
        assert sorted((await ids(filter=pend_any))[0]) == ["r1", "r2", "r3", "r4"]
        keep_u0 = TermsFilter(scope=ResponseFilterScope(question="decision", user=u0), values=["keep"])
        assert (await ids(filter=keep_u0))[0] == ["r0"]
        a = (await eng.search(ds, user_id=str(u0.id), limit=5)).items
        b = (await eng.search(ds, user_id=str(u0.id), limit=5)).items
        c = (await eng.search(ds, user_id=str(u1.id), limit=5)).items
        assert [x.record_id for x in a] == [x.record_id for x in b] and len(c) == 5
        # suggestions
        sug = TermsFilter(scope=SuggestionFilterScope(question="decision", property="value"), values=["drop"])
        assert sorted((await ids(filter=sug))[0]) == ["r1", "r3"]
        got, _ = await ids(filter=RangeFilter(scope=SuggestionFilterScope(question="decision", property="score"), ge=0.5),
                           sort=[Order(scope=SuggestionFilterScope(question="decision", property="score"),
                                       order=SortOrder.asc)])
        assert got == ["r3", "r4"], got
        # progress + metrics
        assert await eng.get_dataset_progress(ds) == {"total": 5, "pending": 3, "completed": 2}
        assert await eng.get_dataset_user_progress(ds, u0) == {"total": 2, "submitted": 2}
        terms = await eng.compute_metrics_for(NS(dataset_id=ds.id, name="lang", type=MetadataPropertyType.terms))
        assert terms.total == 5 and [(v.term, v.count) for v in terms.values] == [("en", 4), ("de", 1)]
        num = await eng.compute_metrics_for(NS(dataset_id=ds.id, name="n", type=MetadataPropertyType.integer))
        assert (num.min, num.max) == (0, 4)
        flt = await eng.compute_metrics_for(NS(dataset_id=ds.id, name="score", type=MetadataPropertyType.float))
        assert (flt.min, flt.max) == (0.0, 0.4)
        # similarity (numpy cosine), by value and by record, threshold and order
        sim = await eng.similarity_search(ds, vs, value=[1.0, 0.0, 0.0], max_results=2)
        assert [ext[i.record_id] for i in sim.items] == ["r0", "r1"]
        sim = await eng.similarity_search(ds, vs, record=recs[4], max_results=10, order=SimilarityOrder.least_similar)
        assert ext[sim.items[0].record_id] == "r0" and "r4" not in [ext[i.record_id] for i in sim.items]
        sim = await eng.similarity_search(ds, vs, value=[1.0, 0.0, 0.0], threshold=0.9, filter=en)
        assert [ext[i.record_id] for i in sim.items] == ["r0"]
        # updates: responses, suggestions, partial record update, deletes
        new = NS(id=uuid.uuid4(), record_id=recs[3].id, user_id=u1.id, status="submitted",
                 values={"decision": {"value": "drop"}})
        await eng.update_record_response(new)
        assert (await eng.get_dataset_user_progress(ds, u1)) == {"total": 2, "draft": 1, "submitted": 1}
        await eng.delete_record_response(new)
        assert (await eng.get_dataset_user_progress(ds, u1)) == {"total": 1, "draft": 1}
        await eng.update_record_suggestion(NS(question=q, record_id=recs[0].id, value="drop", score=0.9, agent="m", type="model"))
        assert sorted((await ids(filter=sug))[0]) == ["r0", "r1", "r3"]
        await eng.delete_record_suggestion(NS(question=q, record_id=recs[0].id))
        assert sorted((await ids(filter=sug))[0]) == ["r1", "r3"]
        await eng.partial_record_update(recs[4], status="completed")
        assert (await eng.get_dataset_progress(ds))["completed"] == 3
        await eng.delete_records(ds, [recs[0]])
        assert (await ids(query="invoice"))[1] == 2
        await eng.delete_index(ds)
        assert (await ids())[1] == 0 and (await eng.search(other)).total == 5
    print("plugin suite: all SearchEngine methods ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
