import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slmforge.stages import recipe_from_dict
from schemas.errors import ConfigError, SchemaError, StageError
from slmforge.runner import run_recipe
from tests.core.conftest import ROOT, cli, parquet_bytes, recipe_dict, write_recipe


def ran(stats):
    return [s["step"] for s in stats if not s.get("cached")]


def test_second_run_is_fully_cached_and_outputs_are_laid_out(corpus, tmp_path):
    recipe = recipe_from_dict(recipe_dict(corpus, tmp_path / "ws"))
    first = run_recipe(recipe)
    assert ran(first) == ["ingest", "normalize", "score", "filter", "exact_dedup"]
    second = run_recipe(recipe)
    assert ran(second) == []
    for s in first:
        d = tmp_path / "ws" / s["step"] / s["fingerprint"]
        for name in ("decisions.parquet", "quarantine.parquet", "stats.json", "_SUCCESS"):
            assert (d / name).exists(), (s["step"], name)
        assert list(d.glob("part-*.parquet"))
    dedup = first[-1]
    assert dedup["dropped"] == {"exact_duplicate": 1}  # copy-of-runbook.md
    assert first[0]["quarantined"] >= 8 and first[0]["shards"] > 1


def test_changing_one_stage_recomputes_it_and_downstream_only(corpus, tmp_path):
    run_recipe(recipe_from_dict(recipe_dict(corpus, tmp_path / "ws")))
    stats = run_recipe(recipe_from_dict(recipe_dict(corpus, tmp_path / "ws", min_words=40)))
    assert ran(stats) == ["filter", "exact_dedup"]
    # runtime-only settings do not change fingerprints
    data = recipe_dict(corpus, tmp_path / "ws", min_words=40)
    data["workers"] = 2
    data["stages"][0]["batch_rows"] = 7
    assert ran(run_recipe(recipe_from_dict(data))) == []


def test_recipe_typo_fails_before_any_work_naming_the_key(corpus, tmp_path):
    data = recipe_dict(corpus, tmp_path / "ws")
    data["stages"][3]["min_wrds"] = 5
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(data)
    msg = str(err.value)
    assert "min_wrds" in msg and "did you mean 'min_words'" in msg and "stages[3]" in msg
    # same through the CLI, and nothing is written
    path = write_recipe(tmp_path / "bad.yaml", data)
    proc = cli("run", str(path), check=False)
    assert proc.returncode == 2 and "min_wrds" in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_unknown_stage_and_broken_chain_fail_before_work(corpus, tmp_path):
    data = recipe_dict(corpus, tmp_path / "ws")
    data["stages"][1]["stage"] = "normalise"
    with pytest.raises(ConfigError, match="did you mean 'normalize'"):
        recipe_from_dict(data)
    data = recipe_dict(corpus, tmp_path / "ws")
    del data["stages"][2]  # filter right after normalize: no q_* score columns upstream
    with pytest.raises(SchemaError, match="q_n_words") as err:
        run_recipe(recipe_from_dict(data))
    assert "filter" in str(err.value)
    assert not (tmp_path / "ws").exists()


def big_corpus(root: Path, *, files: int = 24, docs: int = 300) -> Path:
    root.mkdir(parents=True)
    words = "shipment tracking webhook queue driver scanner invoice replica worker deploy the of and to with".split()
    for f in range(files):
        with open(root / f"part{f:03d}.jsonl", "w") as fh:
            for d in range(docs):
                text = " ".join(words[(f * 7 + d * 3 + k) % len(words)] + ("." if k % 11 == 10 else "")
                                for k in range(150))
                fh.write(json.dumps({"text": f"Doc {f}-{d}. " + text}) + "\n")
    return root


def test_sigkill_mid_stage_resumes_by_shard_with_identical_output(tmp_path):
    corpus = big_corpus(tmp_path / "big")
    base = recipe_dict(corpus, tmp_path / "ws")
    base["stages"][0]["shard_bytes"] = 1000  # one file per shard
    clean = write_recipe(tmp_path / "clean.yaml", {**base, "workspace": str(tmp_path / "clean")})
    killed = write_recipe(tmp_path / "killed.yaml", base)
    cli("run", str(clean), "-q")

    proc = subprocess.Popen([sys.executable, "-m", "slmforge", "run", str(killed), "-q"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_mid_stage = False
    while time.time() < deadline and proc.poll() is None:
        markers = list((tmp_path / "ws" / "score").glob("*/_shards/*.json"))
        done = list((tmp_path / "ws" / "score").glob("*/_SUCCESS"))
        if len(markers) >= 2 and not done:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_mid_stage = True
            break
        time.sleep(0.005)
    assert killed_mid_stage, "the run finished before it could be killed; make the corpus bigger"
    stage_dir = next((tmp_path / "ws" / "score").iterdir())
    n_done = len(list(stage_dir.glob("_shards/*.json")))
    assert not (stage_dir / "_SUCCESS").exists() and 0 < n_done < 24

    out = cli("run", str(killed))
    assert "cached" in out.stderr  # ingest/normalize were complete before the kill
    resumed = json.loads((stage_dir / "stats.json").read_text())
    assert resumed["shards"] == 24
    assert parquet_bytes(tmp_path / "ws") == parquet_bytes(tmp_path / "clean")


def test_worker_count_does_not_change_outputs(corpus, tmp_path):
    one = recipe_dict(corpus, tmp_path / "w1")
    two = {**recipe_dict(corpus, tmp_path / "w2"), "workers": 2}
    run_recipe(recipe_from_dict(one))
    run_recipe(recipe_from_dict(two))
    assert parquet_bytes(tmp_path / "w1") == parquet_bytes(tmp_path / "w2")


def test_trace_shows_a_documents_path_through_every_stage(corpus, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", recipe_dict(corpus, tmp_path / "ws"))
    cli("run", str(path), "-q")
    dedup_dir = next((tmp_path / "ws" / "exact_dedup").iterdir())
    dec = pq.read_table(dedup_dir / "decisions.parquet").to_pylist()
    dup = next(d for d in dec if d["action"] == "drop")
    out = cli("trace", dup["id"], "--workspace", str(tmp_path / "ws")).stdout
    for step in ("ingest", "normalize", "score", "filter", "exact_dedup"):
        assert step in out
    assert "exact_duplicate" in out and "ingested" in out and "passed" in out
    # a quarantined file is traceable too
    q = pq.read_table(next((tmp_path / "ws" / "ingest").iterdir()) / "quarantine.parquet").to_pylist()
    out = cli("trace", q[0]["id"], "--workspace", str(tmp_path / "ws")).stdout
    assert "quarantine" in out
    assert cli("trace", "nope", "--workspace", str(tmp_path / "ws"), check=False).returncode == 1
    stats_out = cli("stats", "--workspace", str(tmp_path / "ws")).stdout
    assert "exact_duplicate 1" in stats_out


def test_a_damaged_upstream_file_fails_with_step_shard_and_file_and_the_rerun_resumes(corpus, tmp_path):
    """A part file damaged outside slmforge: the error names the step, the shard and the file (not a
    bare pyarrow message), finished shards are kept, and after the repair the outputs are the same."""
    import shutil

    ws = tmp_path / "ws"
    recipe = recipe_from_dict(recipe_dict(corpus, ws))
    first = run_recipe(recipe)
    reference = parquet_bytes(ws)
    normalize = ws / "normalize" / first[1]["fingerprint"]
    part = ws / "ingest" / first[0]["fingerprint"] / "part-00001.parquet"
    good = part.read_bytes()
    assert len(good) > 600

    shutil.rmtree(normalize)  # normalize runs again, over a damaged input
    part.write_bytes(good[:8] + bytes(0xAB for _ in range(len(good) // 3)) + good[8 + len(good) // 3:])
    with pytest.raises(StageError, match=r"step 'normalize' failed on shard 1 \(part-00001.parquet\): OSError"):
        run_recipe(recipe)
    assert (normalize / "_shards" / "00000.json").exists() and not (normalize / "_shards" / "00001.json").exists()

    part.write_bytes(b"PAR1 not a parquet footer")  # unreadable even for its row count
    with pytest.raises(StageError, match="cannot read the Parquet file .*part-00001.parquet") as err:
        run_recipe(recipe)
    assert "delete that step's folder" in str(err.value)

    part.write_bytes(good)
    again = run_recipe(recipe)
    assert ran(again) == ["normalize"]
    assert parquet_bytes(ws) == reference
