"""Run one distilabel Task as a real distilabel Pipeline (``LoadDataFromDicts >> task``), safely.

The traps of distilabel 1.5.3 this wrapper handles:

* its cache keys ignore the data of ``LoadDataFromDicts`` and can return stale results: we always run with
  ``use_cache=False`` in a fresh cache folder named by a hash of the rows (our stage fingerprints decide reuse);
* an interrupted run can hang on resume: the folder is wiped before each run, there is no resume;
* building the Distiset extracts citations of the steps and fetches arXiv BibTeX over the network when
  ``bs4`` is installed: the citation grab is switched off while the pipeline runs;
* it starts a process per step with the default start method, ``fork`` on Linux: forking a process whose
  torch/OpenMP thread pools already ran (a loaded model, a previous run) deadlocks the children, so the
  start method is switched to ``spawn`` while the pipeline runs (and restored after);
* daemonic processes (the runner's worker pool) may not have children, so this engine refuses to start in
  one and says to use ``workers: 1`` or ``engine: direct``;
* ``requests`` is an undeclared dependency: it is in our ``synth`` extra;
* raw outputs and token counts live in the ``distilabel_metadata`` column: ``enable_metadata=True`` keeps it
  (1.5.3 happens to keep it even when False, as its removal checks a DatasetDict's column_names dict).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schemas.errors import StageError


@contextmanager
def _spawn_start_method():
    """distilabel's pool context (a subclass of the default context, fixed at import) and its manager use
    the default start method: make both ``spawn`` meanwhile."""
    import multiprocessing.context as mpc

    import distilabel.pipeline.local as local

    class _SpawnNoDaemonContext(mpc.SpawnContext):
        Process = local._NoDaemonProcess

    old, old_ctx = mp.get_start_method(allow_none=True), local._NoDaemonContext
    mp.set_start_method("spawn", force=True)
    local._NoDaemonContext = _SpawnNoDaemonContext
    try:
        yield
    finally:
        local._NoDaemonContext = old_ctx
        mp.set_start_method(old, force=True)


@contextmanager
def _no_citation_fetch():
    import distilabel.distiset as dd

    old = dd._grab_citations
    dd._grab_citations = lambda dag: []
    try:
        yield
    finally:
        dd._grab_citations = old


def run_task_pipeline(task_factory, rows: list[dict], *, cache_root: Path, name: str, batch_size: int) -> list[dict]:
    """Rows out of ``LoadDataFromDicts(rows) >> task_factory()``; every input row comes back (failed ones
    with the task's outputs set to None), matched by the ``_key`` column the caller put in each row."""
    if not rows:
        return []
    if mp.current_process().daemon:
        raise StageError("synth: the distilabel 'pipeline' engine forks a process per step, which a daemonic "
                         "worker process may not do",
                         received="a recipe run with workers > 1", expected="workers: 1",
                         fix="run the recipe with 'workers: 1' (or --workers 1), or set 'teacher: {engine: direct}'")
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache_dir = Path(cache_root) / f"{name}-{digest}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    with Pipeline(name=f"slmforge-{name}", cache_dir=str(cache_dir), enable_metadata=True) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=batch_size)
        task = task_factory()
        task.input_batch_size = batch_size
        load >> task
    with _no_citation_fetch(), _spawn_start_method():
        distiset = pipeline.run(use_cache=False)
    out: list[dict[str, Any]] = []
    for config in distiset.values():
        for split in config.values():
            out += split.to_list()
    shutil.rmtree(cache_dir, ignore_errors=True)
    return out
