"""Run a planned recipe on a Ray cluster with the same files, fingerprints and decisions as local.

An :class:`slmforge.execute.Executor`: the step lifecycle is :func:`slmforge.execute.execute`, as
locally. The unit of work is the shard, exactly as in the local executor: one Ray task per
pending shard (1 CPU, at most ``workers`` in flight) runs :func:`slmforge.shards.run_shard`;
stages that override ``load()`` (PII analyzer, teacher clients) run in a pool of ``workers``
actors instead, each building the heavy state once and taking the next shard when it is free.
Tasks run on Ray's pooled worker processes (no process start per step). Because each shard is
written by the same function with the same deterministic options, the Parquet files are
byte-identical to a local run, and markers make a Ray run resumable by a local run and vice versa.
(Plain tasks rather than Ray Data: the data never flows through a dataset, shards are files on
shared storage, and Ray Data's fixed cost per execution dominated on small clusters; docs/ray.md.)

Global stages compute their cross-shard state (``prepare``) in one Ray task, then map shards —
except a stage that offers a distributed prepare (``Stage.prepare_distributed``): ``near_dedup``'s
runs Ray-native (:mod:`curation.dedup.near_ray`:
signatures and band grouping as a hash shuffle of Ray tasks, distributed verification,
connected components on the driver or with a large-star/small-star loop) and writes the same
cluster file;
artifact stages (training, export) run in one Ray task that asks for one CPU. The workspace must be on storage every
node sees (a shared volume/NFS); docs/ray.md explains.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, require
from slmforge.execute import Executor
from slmforge.shards import loaded, loaded_copy, run_artifact, run_prepare, run_shard

#: environment for every Ray worker: one polars/arrow thread per worker process (the executor
#: already runs one actor per CPU; nested thread pools only oversubscribe)
WORKER_ENV = {"POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run_one(stage: Any, key: str, kind: str, i: int, item_blob: bytes, ctx: Any) -> dict:
    from dataclasses import replace

    return run_shard(stage, key, kind, i, pickle.loads(item_blob), replace(ctx))


class _ShardActor:
    """Ray actor for stages with heavy state: one loaded copy of the stage per actor, many shards
    through it (the PII analyzer or a teacher client is built once per actor)."""

    def __init__(self, stage_blob: bytes, key: str, kind: str, ctx_blob: bytes) -> None:
        self.stage = pickle.loads(stage_blob)
        self.key, self.kind, self.ctx = key, kind, pickle.loads(ctx_blob)
        loaded(self.stage, key)  # stage.load() once per actor

    def run(self, i: int, item_blob: bytes) -> dict:
        return _run_one(self.stage, self.key, self.kind, i, item_blob, self.ctx)


def _shard_task(stage_blob: bytes, key: str, kind: str, ctx_blob: bytes, i: int, item_blob: bytes) -> dict:
    """Ray task for stages without heavy state: pooled worker processes are reused, and
    ``loaded`` keeps one loaded copy per process."""
    stage = loaded_copy(key) or pickle.loads(stage_blob)
    return _run_one(stage, key, kind, i, item_blob, pickle.loads(ctx_blob))


def _heavy(stage: Any) -> bool:
    """A stage that overrides ``load()`` gets an actor pool (its state built once per actor)."""
    from schemas.stage import Stage

    return type(stage).load is not Stage.load


def _prepare_task(stage_blob: bytes, key: str, items: list[str], ctx_blob: bytes) -> float:
    started = time.perf_counter()
    run_prepare(pickle.loads(stage_blob), key, [Path(p) for p in items], pickle.loads(ctx_blob))
    return time.perf_counter() - started


def _artifact_task(stage_blob: bytes, key: str, ctx_blob: bytes) -> dict:
    return run_artifact(pickle.loads(stage_blob), key, pickle.loads(ctx_blob))


class RayExecutor(Executor):
    """Execute planned steps on Ray (``address=None`` starts a local Ray on this machine).

    ``workers`` is the number of shards in flight per map (tasks, or the actor pool size). When Ray is already
    initialised in this process (tests, notebooks), that session is used as is.
    """

    def __init__(self, address: str | None, workers: int, *, object_store_memory: int | None = None) -> None:
        if workers < 1:
            raise ConfigError("workers must be at least 1", received=workers, fix="pass --workers 1 or more")
        super().__init__(workers=workers)
        self.address = address
        self.object_store_memory = object_store_memory
        #: step name -> stats of a stage's distributed prepare (near-dup: docs, pairs, method chosen, rounds)
        self.prepare_stats: dict[str, dict[str, Any]] = {}
        self._started_ray = False
        self._ray: Any = None

    # --- cluster --------------------------------------------------------------------------
    def _init(self) -> Any:
        require("ray", extra="ray", purpose="running recipes on Ray (executor: ray)")
        import os

        import ray

        if ray.is_initialized():
            return ray
        kw: dict[str, Any] = {"log_to_driver": False}
        saved_env: dict[str, str | None] = {}
        if self.address is None:
            # a local Ray's worker processes inherit this process's environment: set the worker
            # variables for the start instead of a runtime_env, whose workers would not be the
            # ones Ray prestarts (a fresh process + imports per worker, seconds on small nodes)
            saved_env = {k: os.environ.get(k) for k in WORKER_ENV}
            os.environ.update(WORKER_ENV)
            # worker_niceness 0: Ray starts workers at nice 15, so any other busy process on the
            # machine (or the local executor's own workers) would take the CPU from them
            kw.update(num_cpus=self.workers, include_dashboard=False,
                      _system_config={"num_workers_soft_limit": 4 * self.workers + 4, "worker_niceness": 0})
            if self.object_store_memory is not None:
                kw["object_store_memory"] = self.object_store_memory
        else:
            kw.update(address=self.address, runtime_env={"env_vars": dict(WORKER_ENV)})
        started = time.perf_counter()
        try:
            ray.init(**kw)
        except ConnectionError as exc:
            raise ConfigError(
                f"could not connect to the Ray cluster at {self.address}: {exc}",
                received=self.address, expected="'auto' on a cluster node, or host:port of the head's GCS (6379)",
                fix="start the cluster first (ray start --head / ray up / KubeRay), set RAY_AUTH_TOKEN if the "
                    "cluster uses token auth, and bind the head to a reachable address, not 127.0.0.1",
            ) from exc
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._started_ray = True
        self.timings["_startup"] = {"seconds": round(time.perf_counter() - started, 3)}
        return ray

    def shutdown(self) -> None:
        if self._started_ray:
            import ray

            started = time.perf_counter()
            if self.address is None:
                _end_autoscaler_monitor(ray)
            ray.shutdown()
            self._started_ray = False
            self.timings["_shutdown"] = {"seconds": round(time.perf_counter() - started, 3)}

    # --- the executor interface -----------------------------------------------------------
    def start(self) -> None:
        self._ray = self._init()

    def stop(self) -> None:
        self.shutdown()

    def prepare(self, step: Any, items: list[Path], ctx: Any) -> dict[str, float]:
        """Global state: the stage's distributed prepare where it offers one (near-dup), else its
        ``prepare`` in one Ray task. Returns a timing breakdown (seconds) for the report."""
        ray = self._ray
        native = step.stage.prepare_distributed(items, ctx, backend="ray", workers=self.workers)
        if native is not None:
            stats, timing = native
            self.prepare_stats[step.name] = stats
            return {f"prepare.{k}": v for k, v in timing.items()}
        task = ray.remote(num_cpus=1)(_prepare_task)
        ray.get(task.remote(pickle.dumps(step.stage), f"{step.name}:{step.fingerprint}",
                            [str(p) for p in items], pickle.dumps(ctx)))
        return {}

    def run_artifact(self, step: Any, ctx: Any, *, advance: Any) -> dict:
        """One Ray task that asks for one CPU (no progress from inside it)."""
        task = self._ray.remote(num_cpus=1)(_artifact_task)
        return dict(self._ray.get(task.remote(pickle.dumps(step.stage), f"{step.name}:{step.fingerprint}",
                                              pickle.dumps(ctx))))

    def map_shards(self, step: Any, pending: list[tuple[int, Any]], ctx: Any, *, advance: Any) -> Any:
        key = f"{step.name}:{step.fingerprint}"
        for info in self._submit(self._ray, step, key, [(i, pickle.dumps(item)) for i, item in pending], ctx):
            advance(info["rows_in"])
            yield info

    def _submit(self, ray: Any, step: Any, key: str, pending: list[tuple[int, bytes]], ctx: Any) -> Any:
        """Run the pending shards, at most ``workers`` at a time, yielding each shard's info as it
        finishes (any order): plain tasks, or an actor pool when the stage has heavy state."""
        stage_ref = ray.put(pickle.dumps(step.stage))
        ctx_ref = ray.put(pickle.dumps(ctx))
        size = max(1, min(self.workers, len(pending)))
        queue = list(reversed(pending))
        running: dict[Any, Any] = {}  # object ref -> actor (None for tasks)
        if _heavy(step.stage):
            actor_cls = ray.remote(num_cpus=1)(_ShardActor)
            actors = [actor_cls.remote(stage_ref, key, step.kind, ctx_ref) for _ in range(size)]
            free = list(actors)

            def launch(actor: Any) -> None:
                i, blob = queue.pop()
                running[actor.run.remote(i, blob)] = actor
        else:
            task = ray.remote(num_cpus=1)(_shard_task)
            actors, free = [], [None] * size

            def launch(actor: Any) -> None:
                i, blob = queue.pop()
                running[task.remote(stage_ref, key, step.kind, ctx_ref, i, blob)] = actor
        try:
            while queue or running:
                while queue and free:
                    launch(free.pop())
                done, _ = ray.wait(list(running), num_returns=1)
                free.append(running.pop(done[0]))
                yield ray.get(done[0])
        except Exception:
            # a shard failed: launch no more, let the ones in flight finish (their markers count on
            # the next run, which then never races a late writer of the same files), then raise
            if running:
                ray.wait(list(running), num_returns=len(running))
            raise
        finally:
            for actor in actors:
                ray.kill(actor)


def _end_autoscaler_monitor(ray: Any) -> None:
    """End the autoscaler monitor of the local Ray this executor started, before ``ray.shutdown``.

    ``ray.shutdown`` stops a local Ray's processes one after the other, sending SIGTERM and waiting
    up to 1 s for each; the monitor spends that second reporting its own termination to the GCS
    (measured: 1.0 s of a 1.2-1.4 s shutdown; the others exit in 0.01-0.03 s). A local Ray has a
    fixed size, so its monitor has nothing to scale and no state to save: it is killed at once.
    Uses Ray's node handle; if a Ray version lays that out differently, nothing is done here and
    ``ray.shutdown`` stops the monitor as usual.
    """
    try:
        from ray._private import ray_constants, worker

        infos = worker._global_node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])
        for info in infos:
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
    except Exception:  # noqa: BLE001 - an optimisation only; ray.shutdown still stops everything
        return


def timings_report(executor: RayExecutor) -> str:
    """Where the time went, one line per step (used by bench/scale)."""
    return "\n".join(f"{name}: {json.dumps(t, sort_keys=True)}" for name, t in executor.timings.items())


__all__ = ["RayExecutor", "WORKER_ENV", "timings_report"]
