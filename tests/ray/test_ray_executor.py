"""The Ray executor writes the same bytes as the local executor (real Ray, real stages)."""

import json
import shutil

import pytest

from slmforge.stages import recipe_from_dict
from slmforge.plan import plan
from slmforge.runner import run_recipe
from tests.core.conftest import parquet_bytes, recipe_dict

pytestmark = pytest.mark.ray


def _ray_recipe(corpus, ws, **kw):
    return recipe_from_dict({**recipe_dict(corpus, ws), "executor": "ray", "workers": 2, **kw})


def _with_pii(d: dict) -> dict:
    """PII overrides load(): on Ray it runs in an actor pool (analyzer built once per actor)."""
    d["stages"].insert(2, {"stage": "pii", "mode": "patterns"})
    d["stages"].append({"stage": "near_dedup"})  # global: prepare (MinHash clusters) in a Ray task
    return d


def test_ray_outputs_are_byte_identical_to_local(ray_local, corpus, tmp_path):
    from slmforge.ray_executor import _heavy

    (corpus / "contact.md").write_text(
        "# Escalation contacts\n\nFor on-call escalation write to jane.doe@example.com and include the "
        "incident number, the affected service and the time the alert fired in your message.\n")

    local = run_recipe(recipe_from_dict(_with_pii({**recipe_dict(corpus, tmp_path / "local"), "workers": 2})))
    recipe = recipe_from_dict(_with_pii({**recipe_dict(corpus, tmp_path / "ray"), "executor": "ray", "workers": 2}))
    assert [_heavy(s.stage) for s in plan(recipe)] == [False, False, True, False, False, False, False]
    on_ray = run_recipe(recipe)
    assert [s["step"] for s in on_ray] == ["ingest", "normalize", "pii", "score", "filter", "exact_dedup", "near_dedup"]
    assert on_ray[2]["modified"] > 0  # contact.md has an email: the actor path really scrubbed
    assert on_ray[0]["shards"] > 2  # several shards really spread over the actor pool
    a, b = parquet_bytes(tmp_path / "local"), parquet_bytes(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) > 20  # parts, per-shard decisions, merged decisions
    assert [k for k in a if a[k] != b[k]] == []
    for ls, rs in zip(local, on_ray):  # same stats apart from wall time
        assert {k: v for k, v in ls.items() if k != "seconds"} == {k: v for k, v in rs.items() if k != "seconds"}
    assert on_ray[-2]["dropped"] == {"exact_duplicate": 1}
    clusters = sorted((tmp_path / "ray" / "near_dedup").glob("*/_work/near_dedup_clusters.parquet"))
    assert len(clusters) == 1  # the near-dup cluster file is part of the byte comparison above
    assert str(clusters[0].relative_to(tmp_path / "ray")) in a


def test_ray_run_resumes_local_markers_and_caches(ray_local, corpus, tmp_path):
    """A half-finished stage (markers from a local run) is completed on Ray, redoing only the rest."""
    ws = tmp_path / "ws"
    recipe = _ray_recipe(corpus, ws)
    ref = tmp_path / "ref"
    run_recipe(recipe_from_dict({**recipe_dict(corpus, ref), "workers": 1}))
    steps = plan(recipe)
    # copy the reference ingest output, then forget the stage's end and two shard markers
    src = next((ref / "ingest").iterdir())
    shutil.copytree(src, steps[0].dir)
    (steps[0].dir / "_SUCCESS").unlink()
    markers = sorted((steps[0].dir / "_shards").glob("*.json"))
    for m in markers[:2]:
        m.unlink()
    keep = markers[2].stat().st_mtime_ns
    stats = run_recipe(recipe)
    assert not stats[0].get("cached")
    assert markers[2].stat().st_mtime_ns == keep  # finished shard not redone
    assert parquet_bytes(ws) == parquet_bytes(ref)
    again = run_recipe(recipe)
    assert all(s.get("cached") for s in again)
    assert json.loads((steps[-1].dir / "stats.json").read_text())["dropped"] == {"exact_duplicate": 1}


def test_a_failing_shard_keeps_the_finished_ones_and_the_rerun_resumes(ray_local, corpus, tmp_path):
    """A shard that fails on Ray stops the step with the cause; shards that finished keep their
    markers, and the next run redoes only what is missing, ending with the local bytes."""
    ws = tmp_path / "ws"
    recipe = _ray_recipe(corpus, ws)
    ref = tmp_path / "ref"
    run_recipe(recipe_from_dict({**recipe_dict(corpus, ref), "workers": 1}))
    steps = plan(recipe)
    shutil.copytree(next((ref / "ingest").iterdir()), steps[0].dir)  # ingest done (cached)
    part = steps[0].dir / "part-00001.parquet"
    good = part.read_bytes()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), part)  # readable, but not ingest's schema: shard 1 fails in its task
    with pytest.raises(Exception, match="shard 1"):
        run_recipe(recipe)
    normalize = steps[1].dir / "_shards"
    assert not (normalize / "00001.json").exists() and not (steps[1].dir / "_SUCCESS").exists()
    finished = {m.name: m.stat().st_mtime_ns for m in normalize.glob("*.json")}
    assert "00000.json" in finished  # in flight beside the failing shard: waited for, kept
    part.write_bytes(good)
    stats = run_recipe(recipe)
    assert stats[0].get("cached") and not stats[1].get("cached")
    assert {m: (normalize / m).stat().st_mtime_ns for m in finished} == finished  # not redone
    assert parquet_bytes(ws) == parquet_bytes(ref)
