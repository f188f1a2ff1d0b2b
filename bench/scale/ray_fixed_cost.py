"""Ray's fixed costs on this machine: ``ray.init``, the first Ray Data execution, a wave of plain tasks.

Each mode runs in a fresh process (a fresh local Ray), 8 items, each importing the modules the
executor's shard tasks import:

    .venv/bin/python bench/scale/ray_fixed_cost.py            # all modes, one line each

``tasks``: ``ray.init`` with the worker variables in the environment (as the executor does), then
two waves of 8 plain tasks. ``tasks+runtime_env``: the same variables as a job ``runtime_env``
(Ray starts fresh workers for it). ``data``: one Ray Data ``map_batches`` execution over 8 rows
(one block each), then a wave of plain tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ENV = {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _imports(i: int) -> int:
    import curation.ingest  # noqa: F401
    import curation.dedup.near_ray  # noqa: F401
    import slmforge.runner  # noqa: F401

    return os.getpid()


def measure(mode: str) -> dict:
    import ray

    out: dict = {"mode": mode}
    kw: dict = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
                "_system_config": {"worker_niceness": 0}}
    if mode == "tasks+runtime_env":
        kw["runtime_env"] = {"env_vars": ENV}
    else:
        os.environ.update(ENV)
    t = time.perf_counter()
    ray.init(**kw)
    out["init_s"] = round(time.perf_counter() - t, 2)
    if mode == "data":
        try:
            import ray.data
        except ImportError as exc:  # slmforge[ray] installs ray core only
            ray.shutdown()
            return {**out, "skipped": f"{exc}: pip install 'ray[data]==2.60.*' for this mode"}

        def fn(batch: dict) -> dict:
            _imports(0)
            return {"x": batch["i"]}

        t = time.perf_counter()
        ray.data.from_items([{"i": i} for i in range(8)], override_num_blocks=8).map_batches(
            fn, batch_size=1, batch_format="numpy").materialize()
        out["first_data_execution_s"] = round(time.perf_counter() - t, 2)
    task = ray.remote(num_cpus=1)(_imports)
    for wave in (1, 2):
        t = time.perf_counter()
        pids = ray.get([task.remote(i) for i in range(8)])
        out[f"task_wave{wave}_s"] = round(time.perf_counter() - t, 3)
        out[f"task_wave{wave}_workers"] = len(set(pids))
    ray.shutdown()
    return out


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(sys.argv[1])))
        return
    for mode in ("tasks", "tasks+runtime_env", "data"):
        res = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
        print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
