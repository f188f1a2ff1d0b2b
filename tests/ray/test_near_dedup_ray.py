"""Ray-native near-dup (curation/near_dedup_ray.py): both component methods write the local bytes.

Each test runs the upstream stages locally once, copies that workspace, and lets the Ray executor
compute only ``near_dedup`` (the upstream steps are cached: fingerprints do not depend on the
executor), so the comparison covers the cluster file, the parts and the decisions of near_dedup.
"""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmforge.stages import recipe_from_dict
from slmforge.plan import plan
from slmforge.runner import run_recipe
from tests.core.conftest import parquet_bytes

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("shipment tracking worker queue webhook driver invoice route depot pallet carrier alert "
         "backlog deploy scale retry latency region customer label scanner manifest freight dock "
         "batch event stream replica cluster node token rotate secret audit export import gateway").split()


def _text(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n)]


def _edit(words: list[str], positions: list[int], tag: str) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = f"{tag}{p}"
    return out


def planted_corpus(root: Path) -> dict[str, int]:
    """Text files with planted near-duplicates; returns what was planted."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    docs: list[str] = []
    for _ in range(40):  # unrelated documents
        docs.append(" ".join(_text(rng, rng.randrange(80, 160))))
    for f in range(10):  # families: 1-3 light edits (J ~ 0.85-0.92) and one heavy edit (fails the exact check)
        base = _text(rng, 120)
        docs.append(" ".join(base))
        for v in range(1 + f % 3):
            docs.append(" ".join(_edit(base, [10 + 37 * v], f"e{f}v{v}x")))
        docs.append(" ".join(_edit(base, [5, 30, 55, 80, 105], f"h{f}x")))
    for c in range(3):  # chains A~B, B~C but not A~C: one cluster only through the verified edges
        a = _text(rng, 120)
        b = _edit(a, [3, 8], f"c{c}b")
        docs += [" ".join(a), " ".join(b), " ".join(_edit(b, [110, 115], f"c{c}c"))]
    big = " ".join(_text(rng, 90))
    docs += [big] * 70  # one bucket of 70 > 64 members: chained candidate pairs, as the local stage
    docs += ["alpha beta gamma", "alpha beta gamma", "short note"]  # shorter than one shingle
    order = list(range(len(docs)))
    rng.shuffle(order)
    for k, i in enumerate(order):
        (root / f"doc-{k:04d}.txt").write_text(docs[i] + "\n")
    return {"docs": len(docs), "big_bucket": 70}


def _local_then_ray(recipe: dict, tmp_path: Path, methods: list[str]) -> dict[str, dict]:
    """Run ``recipe`` locally; then for each method copy the workspace without near_dedup and
    compute near_dedup on Ray. Returns {method: the Ray-native near-dup stats}."""
    from slmforge.ray_executor import RayExecutor

    local_ws = tmp_path / "local"
    run_recipe(recipe_from_dict({**recipe, "workspace": str(local_ws)}))
    ref = parquet_bytes(local_ws)
    assert any(k.endswith("near_dedup_clusters.parquet") for k in ref)
    out = {}
    for method in methods:
        ws = tmp_path / f"ray-{method}"
        shutil.copytree(local_ws, ws, ignore=shutil.ignore_patterns("near_dedup"))
        stages = [{**st, "ray_components": method} if st["stage"] == "near_dedup" else st for st in recipe["stages"]]
        steps = plan(recipe_from_dict({**recipe, "stages": stages, "workspace": str(ws), "executor": "ray", "workers": 2}))
        ex = RayExecutor(address=None, workers=2)
        stats = ex.run(steps, {s.name: s for s in steps})
        assert [bool(s.get("cached")) for s in stats] == [True] * (len(stats) - 1) + [False]
        got = parquet_bytes(ws)
        assert got.keys() == ref.keys()
        assert [k for k in ref if ref[k] != got[k]] == [], method
        # the raw shingle spill of the signature tasks is removed after the clusters are written
        assert list(ws.glob("near_dedup/*/_work/near_dedup_ray-*")) == []
        out[method] = {**ex.prepare_stats["near_dedup"], "timings": ex.timings["near_dedup"]}
    return out


def test_planted_near_dups_both_methods_match_local(ray_local, tmp_path):
    planted_corpus(tmp_path / "corpus")
    recipe = {"workers": 1, "stages": [
        {"stage": "ingest", "paths": [str(tmp_path / "corpus")], "shard_bytes": 6000},
        {"stage": "near_dedup"},
    ]}
    res = _local_then_ray(recipe, tmp_path, ["driver", "large_star"])
    for method, st in res.items():
        assert st["components"] == method
        assert st["verified_pairs"] > 70 and st["duplicates"] >= 69 + 10 + 6 + 1
    assert res["large_star"]["large_star_rounds"] >= 2  # chains really needed the loop
    assert {k: v for k, v in res["driver"].items() if k not in ("components", "timings")} == \
        {k: v for k, v in res["large_star"].items() if k not in ("components", "timings", "large_star_rounds")}


def test_demo_corpus_both_methods_match_local(ray_local, tmp_path):
    """The bundled sample corpus through the demo recipe's curation stages, unchanged (4 near-dups)."""
    import yaml

    demo = yaml.safe_load((ROOT / "data/recipes/demo.yaml").read_text())
    stages = []
    for st in demo["stages"]:
        if st["stage"] == "ingest":
            st = {**st, "paths": [str(ROOT / "data/sample")]}
        stages.append(st)
        if st["stage"] == "near_dedup":
            break
    res = _local_then_ray({"workers": 1, "stages": stages}, tmp_path, ["auto", "large_star"])
    assert res["auto"]["components"] == "driver"
    assert res["auto"]["verified_pairs"] > 0 and res["auto"]["duplicates"] == 4


def test_large_star_labels_equal_union_find(ray_local):
    """The distributed loop alone on random graphs with long paths: labels = smallest member."""
    import ray

    from curation.dedup.minhash import components
    from curation.dedup.star import large_star_components

    rng = np.random.default_rng(3)
    n = 400
    perm = rng.permutation(n)
    path = np.stack([perm[:23], perm[1:24]], 1)  # a 24-node path in random label order
    rand = rng.integers(24, n, size=(120, 2))
    e = np.concatenate([path, rand])
    e = e[e[:, 0] != e[:, 1]]
    i, j = np.minimum(e[:, 0], e[:, 1]), np.maximum(e[:, 0], e[:, 1])
    import pyarrow as pa

    blocks = [ray.put(pa.table({"i": i[k::3].astype(np.int64), "j": j[k::3].astype(np.int64)})) for k in range(3)]
    nodes, labels, rounds = large_star_components(blocks, partitions=2)
    ref = components(n, i, j)
    assert np.array_equal(nodes, np.unique(np.concatenate([i, j])))
    assert np.array_equal(labels, ref[nodes])
    assert rounds >= 2


def test_components_option_is_checked():
    """The method is a recipe field of near_dedup (checked when the recipe is parsed), not an
    environment variable read by the executor."""
    from schemas.errors import ConfigError
    from slmforge.stages import parse_stage

    with pytest.raises(ConfigError, match="ray_components"):
        parse_stage({"stage": "near_dedup", "ray_components": "spark"}, where="recipe")
    cfg = parse_stage({"stage": "near_dedup", "ray_components": "large_star"}, where="recipe")
    assert "ray_components" not in cfg.fingerprint_dict()  # same files with every method
