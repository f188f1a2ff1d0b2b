"""Two Ray nodes (1 CPU each, one worker actor fits per node): output bytes equal the local executor's
(the Ray-native near-dup included: its shuffles and shingle-set tables cross the two nodes)."""

import pytest

from slmforge.stages import recipe_from_dict
from slmforge.runner import run_recipe
from tests.core.conftest import parquet_bytes, recipe_dict
from tests.ray.conftest import OBJECT_STORE

pytestmark = pytest.mark.ray


def test_two_node_cluster_matches_local(corpus, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1"}})
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        def with_near_dedup(d: dict) -> dict:
            return {**d, "stages": [*d["stages"], {"stage": "near_dedup", "threshold": 0.5}]}

        recipe = recipe_from_dict(with_near_dedup({**recipe_dict(corpus, tmp_path / "ray"), "executor": "ray",
                                                   "workers": 2, "address": cluster.address}))
        stats = run_recipe(recipe)
        local = run_recipe(recipe_from_dict(with_near_dedup(recipe_dict(corpus, tmp_path / "local"))))
        assert [s["rows_out"] for s in stats] == [s["rows_out"] for s in local]
        a, b = parquet_bytes(tmp_path / "local"), parquet_bytes(tmp_path / "ray")
        assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    finally:
        ray.shutdown()
        cluster.shutdown()
