"""The local executor: shards in a pool of worker processes on this machine (or in this process).

Workers die with the runner: a ``kill -9`` of the runner must not leave workers committing shards
under PID 1. Each worker asks Linux to SIGKILL it when its parent dies (``prctl(PR_SET_PDEATHSIG)``
via ctypes) and, everywhere, watches its parent's PID from a daemon thread and exits when the
parent is gone.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from schemas.stage import StageContext, no_progress
from slmforge.execute import Executor
from slmforge.plan import Step
from slmforge.shards import ctx_copy, run_artifact, run_prepare, run_shard

#: seconds between the watchdog's checks of the parent PID (the portable fallback)
WATCH_INTERVAL = 0.2


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when ``parent_pid`` (the runner) dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="slmforge-parent-watch", daemon=True).start()


def _pool_context():
    import multiprocessing as mp

    return mp.get_context("spawn")  # no fork: pyarrow/polars thread pools do not survive a fork


class LocalExecutor(Executor):
    """Shards in ``workers`` spawned processes (in this process when one worker or one shard)."""

    def map_shards(self, step: Step, pending: list[tuple[int, Any]], ctx: StageContext, *,
                   advance: Callable[[int], None]) -> Iterator[dict]:
        key = f"{step.name}:{step.fingerprint}"
        if self.workers <= 1 or len(pending) <= 1:
            for i, item in pending:
                yield run_shard(step.stage, key, step.kind, i, item, ctx_copy(ctx, progress=advance))
            return
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=_pool_context(),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(run_shard, step.stage, key, step.kind, i, item, ctx_copy(ctx, progress=no_progress))
                       for i, item in pending]
            for fut in as_completed(futures):
                info = fut.result()
                advance(info["rows_in"])
                yield info

    def prepare(self, step: Step, items: list[Path], ctx: StageContext) -> dict[str, float]:
        run_prepare(step.stage, f"{step.name}:{step.fingerprint}", items, ctx_copy(ctx, progress=no_progress))
        return {}

    def run_artifact(self, step: Step, ctx: StageContext, *, advance: Callable[[int], None]) -> dict:
        return run_artifact(step.stage, f"{step.name}:{step.fingerprint}", ctx_copy(ctx, progress=advance))


__all__ = ["LocalExecutor"]
