"""``executor: ray`` with no address: the run starts its own local Ray and stops all of it.

No ``ray_local`` fixture here: this is the path of ``slmforge run --executor ray`` on a machine
without a cluster, where the executor calls ``ray.init`` itself (worker env, nice 0) and, at the
end, ends the autoscaler monitor itself before ``ray.shutdown``.
"""

import os
from pathlib import Path

import pytest

from slmforge.stages import recipe_from_dict
from slmforge.runner import run_recipe
from tests.core.conftest import parquet_bytes, recipe_dict

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


def _children(pid: int) -> set[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def test_a_self_started_ray_writes_local_bytes_and_leaves_no_process(corpus, tmp_path, monkeypatch):
    from slmforge import ray_executor

    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    d = recipe_dict(corpus, tmp_path / "local")
    d["stages"].append({"stage": "near_dedup"})
    local = run_recipe(recipe_from_dict({**d, "workers": 2}))

    started: dict[str, list] = {}
    shutdown = ray_executor.RayExecutor.shutdown

    def spy(self):  # the processes of the local Ray, as the executor is about to stop it
        started.update({k: [i.process for i in v] for k, v in ray._private.worker._global_node.all_processes.items()})
        shutdown(self)

    monkeypatch.setattr(ray_executor.RayExecutor, "shutdown", spy)
    before = _children(os.getpid())
    on_ray = run_recipe(recipe_from_dict({**d, "workspace": str(tmp_path / "ray"), "executor": "ray", "workers": 2}))

    assert not ray.is_initialized()
    assert {"raylet", "gcs_server", "monitor"} <= started.keys()
    assert [k for k, procs in started.items() for p in procs if p.poll() is None] == []
    assert _children(os.getpid()) - before == set()  # nothing the run started is left running
    a, b = parquet_bytes(tmp_path / "local"), parquet_bytes(tmp_path / "ray")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    assert [s["step"] for s in on_ray] == [s["step"] for s in local]
