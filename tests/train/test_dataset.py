"""Dataset builder: grouped, deterministic splits; bad rows quarantined; loadable with `datasets`."""

from __future__ import annotations

import pyarrow as pa

from schemas.arrow import EXAMPLES
from train.config import DatasetConfig
from schemas.io import read_parquet_dir
from tests.train.conftest import build_dataset, example_rows, make_ctx
from train.dataset import DatasetStage, assign_splits, group_rows


def test_rows_sharing_a_source_document_never_straddle_splits(tmp_path):
    rows = example_rows()
    # a row derived from two documents links their groups
    rows[0]["source_ids"] = ["doc0", "doc1"]
    out = read_parquet_dir(build_dataset(tmp_path, rows)).to_pylist()
    split_of_doc: dict[str, set] = {}
    for r in out:
        for s in r["source_ids"]:
            split_of_doc.setdefault(s, set()).add(r["split"])
    assert all(len(v) == 1 for v in split_of_doc.values()), split_of_doc
    assert split_of_doc["doc0"] == split_of_doc["doc1"]
    assert {r["split"] for r in out} == {"train", "validation", "test"}


def test_split_assignment_is_deterministic_and_seeded():
    ids = [f"r{i}" for i in range(40)]
    groups = group_rows(ids, [[f"d{i // 2}"] for i in range(40)])
    a = assign_splits(groups, seed=3, validation=0.1, test=0.2)
    b = assign_splits(groups, seed=3, validation=0.1, test=0.2)
    c = assign_splits(groups, seed=4, validation=0.1, test=0.2)
    assert a == b and a != c
    assert sorted(a.values()).count("test") == 4 and sorted(a.values()).count("validation") == 2


def test_unusable_conversations_are_quarantined_with_a_decision(tmp_path):
    rows = example_rows(1)
    rows[0]["messages"] = [{"role": "user", "content": "no answer here"}]
    rows[1]["messages"] = [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]
    table = pa.Table.from_pylist(rows, schema=EXAMPLES)
    stage = DatasetStage(DatasetConfig())
    ctx = make_ctx(tmp_path, "dataset")
    from schemas.io import write_parquet

    write_parquet(table, tmp_path / "in.parquet")
    stage.prepare([tmp_path / "in.parquet"], ctx)
    stage.load()
    res = stage.process(table, ctx)
    assert res.table.num_rows == len(rows) - 2
    q = dict(zip(res.quarantine.column("id").to_pylist(), res.quarantine.column("reason").to_pylist()))
    assert q == {rows[0]["id"]: "no assistant turn", rows[1]["id"]: "unknown role 'robot'"}
    actions = res.decisions.column("action").to_pylist()
    assert actions.count("quarantine") == 2 and actions.count("modify") == len(rows) - 2


def test_output_loads_with_datasets(tmp_path):
    import datasets

    folder = build_dataset(tmp_path)
    ds = datasets.load_dataset("parquet", data_files=str(folder / "part-*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    splits = {s: ds.filter(lambda r, s=s: r["split"] == s).num_rows for s in ("train", "validation", "test")}
    assert sum(splits.values()) == len(example_rows()) and all(splits.values())
    assert ds[0]["messages"][0].keys() == {"role", "content"}
