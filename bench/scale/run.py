"""Scale-out benchmark: the same recipe with the local executor and on Ray (1 and 2 workers).

    .venv/bin/python bench/scale/run.py [--docs /work/shared/bench/dedup/data/throughput/docs.parquet]
                                        [--limit N] [--shards 8] [--out bench/scale/results.json]

The input is split into ``--shards`` Parquet files (not timed) so ingest makes that many shards.
Recipe: ingest -> normalize -> exact_dedup -> near_dedup. Each configuration runs in a fresh
workspace. For Ray, "startup" is ray.init, "prepare" the global stage's cross-shard pass (one
Ray task for exact_dedup; for near_dedup the Ray-native computation of curation/near_dedup_ray.py,
broken down as ``prepare.*``), "map" the shard map (Ray tasks, or an actor pool for stages with
``load()``), "finalize" merging decisions on the driver.

A Ray config may name the near-dup components method: ``ray:2:driver``, ``ray:2:large_star``,
``ray:2:auto`` (default) or ``ray:2:task`` (the local near-dup code in one Ray task, as before).
``ray:W`` starts a local Ray for the run (``ray.init`` is timed, as ``slmforge run --executor ray``
does); ``cluster:W[:method]`` joins a single-node cluster of W CPUs that the script starts before
the run and stops after it, untimed (``ray start --head``; as ``--executor ray --address auto`` on
a running cluster).
Near-dup only on the 50k tier, as reported in README.md:

    .venv/bin/python bench/scale/run.py --stages near_dedup --configs local:2,ray:2:driver,cluster:2:driver \
        --fresh --repeat 9 --out bench/scale/results_near_dedup_ray_fresh.json

``--fresh`` runs every configuration in a new Python process (as ``slmforge run`` would be: nothing
imported or warmed by the configuration before it) and times that whole process; ``--repeat N``
runs N rounds, round r starting the configuration list at position r, and prints each config's
seconds per round and the median (min, max) of its per-round ratio to the first config.
Without ``--fresh`` the configurations run one after the other in this process.

Never imported by the package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def split(docs: Path, out: Path, shards: int, limit: int | None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(docs, columns=["id", "text"])
    if limit:
        t = t.slice(0, limit)
    t = pa.table({"id": t["id"].cast(pa.string()).combine_chunks(), "text": t["text"].combine_chunks()})
    out.mkdir(parents=True)
    per = -(-t.num_rows // shards)
    for k in range(shards):
        pq.write_table(t.slice(k * per, per), out / f"docs-{k:02d}.parquet")
    return t.num_rows


STAGES = ["normalize", "exact_dedup", "near_dedup"]


def recipe(data: Path, ws: Path, *, executor: str, workers: int, method: str | None = None):
    from slmforge.stages import recipe_from_dict

    return recipe_from_dict({
        "workspace": str(ws), "workers": workers, "executor": executor,
        "stages": [
            {"stage": "ingest", "paths": [str(data)], "shard_bytes": 1000},
            *({"stage": name, **({"ray_components": method} if method and name == "near_dedup" else {})}
              for name in STAGES),
        ],
    })


def run_local(data: Path, ws: Path, workers: int) -> dict:
    from slmforge.runner import run_recipe

    t0 = time.perf_counter()
    stats = run_recipe(recipe(data, ws, executor="local", workers=workers))
    return {"total": round(time.perf_counter() - t0, 2), "steps": {s["step"]: s["seconds"] for s in stats}}


def start_cluster(workers: int) -> None:
    """A single-node Ray cluster as an operator would start it (worker settings of docs/ray.md)."""
    import os
    import subprocess

    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_num_workers_soft_limit": str(4 * workers + 4)}
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--num-cpus={workers}",
                    "--include-dashboard=false", "--object-store-memory", str(500 * 1024 * 1024), "--disable-usage-stats"],
                   check=True, env=env, capture_output=True)


def stop_cluster() -> None:
    import subprocess

    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], check=True, capture_output=True)


def run_ray(data: Path, ws: Path, workers: int, method: str | None = None, *, address: str | None = None) -> dict:
    import ray

    from slmforge.ray_executor import RayExecutor
    from slmforge.plan import plan

    t0 = time.perf_counter()
    ex = RayExecutor(address=address, workers=workers, object_store_memory=500 * 1024 * 1024)
    steps = plan(recipe(data, ws, executor="ray", workers=workers, method=method))
    by_name = {s.name: s for s in steps}
    ws.mkdir(parents=True, exist_ok=True)
    stats = ex.run(steps, by_name)
    assert not ray.is_initialized()
    return {"total": round(time.perf_counter() - t0, 2), "steps": {s["step"]: s["seconds"] for s in stats},
            "where": ex.timings, "near_dedup": ex.prepare_stats}


@contextlib.contextmanager
def cluster_for(cfg: str) -> Iterator[None]:
    """For a ``cluster:W[:method]`` config, a running cluster of W CPUs around the block (untimed)."""
    if not cfg.startswith("cluster:"):
        yield
        return
    start_cluster(int(cfg.split(":")[1]))
    try:
        yield
    finally:
        stop_cluster()


def run_config(cfg: str, data: Path, ws: Path) -> dict:
    """One configuration (``local:W``, ``ray:W[:method]``, ``cluster:W[:method]``) in this process;
    a ``cluster`` config joins the running cluster (see :func:`cluster_for`)."""
    ex, w, *method = cfg.split(":")
    if ex == "local":
        return run_local(data, ws, int(w))
    return run_ray(data, ws, int(w), method[0] if method else None, address="auto" if ex == "cluster" else None)


def run_fresh(cfg: str, data: Path, ws: Path) -> dict:
    """One configuration in a new Python process, as a user's ``slmforge run`` would be: nothing
    imported or warmed by an earlier configuration. ``process`` is that process's whole wall time
    (interpreter start and imports included), ``total`` the run itself as in-process mode times it."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", cfg, "--data-dir", str(data), "--ws", str(ws),
                           "--stages", ",".join(STAGES)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cfg} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**res, "process": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path, default=Path("/work/shared/bench/dedup/data/throughput/docs.parquet"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--configs", default="local:1,local:2,ray:1,ray:2")
    ap.add_argument("--stages", default=",".join(STAGES), help="stages after ingest, comma-separated")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/scale/results.json")
    ap.add_argument("--fresh", action="store_true",
                    help="run every configuration in a new Python process (nothing warmed by an earlier one)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; round r starts the configuration list at position r, so each config "
                         "takes each place in the order")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child of --fresh: one config, JSON on stdout
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ws", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    STAGES[:] = args.stages.split(",")
    if args.one:
        print(json.dumps(run_config(args.one, args.data_dir, args.ws)), flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    try:
        n = split(args.docs, tmp / "data", args.shards, args.limit)
        configs = args.configs.split(",")
        results = {"docs": n, "shards": args.shards, "stages": ["ingest", *STAGES], "fresh": args.fresh,
                   "repeat": args.repeat, "runs": {}, "rounds": []}
        outputs = {}
        for r in range(args.repeat):
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            this_round = {}
            for cfg in order:
                ws = tmp / f"ws-{cfg.replace(':', '-')}"
                shutil.rmtree(ws, ignore_errors=True)
                with cluster_for(cfg):
                    res = run_fresh(cfg, tmp / "data", ws) if args.fresh else run_config(cfg, tmp / "data", ws)
                this_round[cfg] = res
                results["runs"].setdefault(cfg, res)  # the first round's breakdown, as before
                got = {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*.parquet"))}
                outputs.setdefault(cfg, got)
                if got != outputs[cfg]:
                    outputs[f"{cfg}#round{r}"] = got  # a round that differs from its own first run
                print(f"round {r} {cfg}", json.dumps(res), flush=True)
            results["rounds"].append({"order": order, **{c: {k: v for k, v in res.items() if k in ("total", "process")}
                                                          for c, res in this_round.items()}})
        ref = next(iter(outputs.values()))
        results["identical_outputs"] = all(o == ref for o in outputs.values())
        if args.repeat > 1 or args.fresh:
            key = "process" if args.fresh else "total"
            base = configs[0]
            print(f"\nseconds ({key}) per round, ratio to {base}:")
            for cfg in configs:
                vals = [rd[cfg][key] for rd in results["rounds"]]
                ratios = sorted(rd[cfg][key] / rd[base][key] for rd in results["rounds"])
                med = statistics.median(ratios)
                results.setdefault("summary", {})[cfg] = {"seconds": vals, "ratio_median": round(med, 3),
                                                          "ratio_min": round(ratios[0], 3), "ratio_max": round(ratios[-1], 3)}
                print(f"  {cfg:18s} {' '.join(f'{v:6.2f}' for v in vals)}   ratio median {med:.2f} "
                      f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})")
        print("identical parquet bytes across configs:", results["identical_outputs"])
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
