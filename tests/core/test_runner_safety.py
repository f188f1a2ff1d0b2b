"""Issue 19's runner-level failures, each reproduced: unsafe step names, two runs on one workspace,
orphaned workers after kill -9, a YAML alias bomb, a read-only workspace, a workspace inside an
input folder; and issue 21's input roles of artifact stages checked at planning."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from schemas.errors import ConfigError
from slmforge.plan import plan
from slmforge.runner import run_recipe
from slmforge.stages import recipe_from_dict
from tests.core.conftest import ROOT, recipe_dict, write_recipe


@pytest.mark.parametrize("name", ["../../elsewhere/x", "/tmp/abs", "a/b", "..", "a..b", "", ".hidden", "x" * 65])
def test_unsafe_step_names_fail_when_the_recipe_is_parsed(corpus, tmp_path, name):
    data = recipe_dict(corpus, tmp_path / "ws")
    data["stages"][1]["name"] = name
    with pytest.raises(ConfigError, match="step name is 1-64 letters") as err:
        recipe_from_dict(data)
    assert "stages[1]" in str(err.value)
    assert not (tmp_path / "ws").exists() and not (tmp_path / "elsewhere").exists()


def test_safe_step_names_still_work(corpus, tmp_path):
    data = recipe_dict(corpus, tmp_path / "ws")
    data["stages"][1]["name"] = "normalize_v2.1-a"
    data["stages"][2]["inputs"] = ["normalize_v2.1-a"]
    assert [s.name for s in plan(recipe_from_dict(data))][1] == "normalize_v2.1-a"


HOLD = ("import sys, time\nfrom pathlib import Path\nfrom slmforge.workspace import workspace_lock\n"
        "with workspace_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n")


def test_a_second_run_on_a_busy_workspace_fails_at_once_naming_the_holder(corpus, tmp_path):
    ws = tmp_path / "ws"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ws)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid} on ") as err:
            run_recipe(recipe_from_dict(recipe_dict(corpus, ws)))
        assert time.perf_counter() - started < 10 and "use another 'workspace:'" in str(err.value)
        assert not list(ws.glob("ingest/*/_SUCCESS"))
    finally:
        holder.kill()  # SIGKILL: the lock file still names the dead PID, the kernel lock is gone
        holder.wait()
    assert f"pid {holder.pid}" in (ws / "_runs" / "run.lock").read_text()
    stats = run_recipe(recipe_from_dict(recipe_dict(corpus, ws)))  # the stale lock is taken over
    assert [s["step"] for s in stats][-1] == "exact_dedup"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_runner_leaves_no_worker_alive_and_no_shard_committed_after(tmp_path):
    from tests.core.test_runner import big_corpus

    corpus = big_corpus(tmp_path / "big")
    data = {**recipe_dict(corpus, tmp_path / "ws"), "workers": 2}
    data["stages"][0]["shard_bytes"] = 1000  # one file per shard
    path = write_recipe(tmp_path / "r.yaml", data)
    proc = subprocess.Popen([sys.executable, "-m", "slmforge", "run", str(path), "-q"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        markers = list((tmp_path / "ws" / "score").glob("*/_shards/*.json"))
        workers = [p for p in _children(proc.pid) if _alive(p)]
        if len(markers) >= 2 and len(workers) >= 2 and not list((tmp_path / "ws" / "score").glob("*/_SUCCESS")):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.005)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-stage"
    gone = time.time() + 10
    while time.time() < gone and any(_alive(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "pool workers outlived the runner"
    stage_dir = next((tmp_path / "ws" / "score").iterdir())
    committed = sorted(stage_dir.glob("_shards/*.json"))
    time.sleep(1.5)
    assert sorted(stage_dir.glob("_shards/*.json")) == committed and len(committed) < 24


def _bomb(levels: int = 9) -> str:
    """A recipe whose ingest ``paths`` is 9 ** (levels + 1) strings through nested aliases."""
    text = 'workspace: ws\nlol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return text + f"stages:\n  - stage: ingest\n    paths: *l{levels}\n"


def test_a_yaml_alias_bomb_fails_fast_with_bounded_memory(tmp_path):
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert len(path.read_bytes()) < 1000  # expands to 9**10 strings

    def limit():  # if the cap regresses, fail here instead of taking the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    started = time.perf_counter()
    err = tmp_path / "stderr.txt"
    with err.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "slmforge", "run", str(path)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=sink, preexec_fn=limit,
                                env={**os.environ, "COLUMNS": "1000"})
        killer = threading.Timer(120, proc.kill)  # a regressed cap fails the test instead of hanging it
        killer.start()
        try:
            # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the peak over every child the
            # test session ever waited for, e.g. earlier training subprocesses)
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            proc.returncode = 0 if proc.returncode is None else proc.returncode
    stderr = err.read_text()
    assert time.perf_counter() - started < 30
    assert os.waitstatus_to_exitcode(status) == 2 and "expands to more than 100,000 nodes" in stderr
    assert "Traceback" not in stderr and len(stderr) < 5000
    assert usage.ru_maxrss < 1_000_000  # KiB: well under 1 GB


def test_error_messages_quote_huge_values_in_bounded_size():
    from schemas.errors import ConfigError as E

    huge = [["lol"] * 1000] * 1000
    assert len(str(E("bad", received=huge, expected="x" * 10**6))) < 5000


def test_a_read_only_workspace_is_a_clear_error(corpus, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    ws.mkdir(mode=0o555)
    path = write_recipe(tmp_path / "r.yaml", recipe_dict(corpus, ws))
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux)")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    proc = subprocess.run([*prefix, sys.executable, "-m", "slmforge", "run", str(path), "-q"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 2, proc.stderr
    assert f"the workspace folder {ws} cannot be written" in proc.stderr and "Traceback" not in proc.stderr
    assert "chmod u+w" in proc.stderr


def test_a_workspace_inside_an_input_folder_is_refused_at_planning(corpus, tmp_path):
    ws = corpus / "out" / "ws"
    with pytest.raises(ConfigError, match="workspace is inside a folder this step reads") as err:
        run_recipe(recipe_from_dict(recipe_dict(corpus, ws)))
    assert str(corpus.resolve()) in str(err.value)
    assert not (corpus / "out").exists()  # nothing written, nothing ingested twice
    # the same folder next to the inputs is fine
    assert plan(recipe_from_dict(recipe_dict(corpus, tmp_path / "ws")))


def _demo(tmp_path: Path) -> dict:
    data = yaml.safe_load((ROOT / "data/recipes/demo.yaml").read_text())
    data["workspace"] = str(tmp_path / "ws")
    data["stages"][0]["paths"] = [str(ROOT / "data/sample")]
    return data


@pytest.mark.parametrize("step,inputs,missing", [
    ("eval", ["dataset", "base_model"], "'adapter'"),
    ("train", ["dataset"], "'base_model'"),
    ("export", ["base_model", "train"], "'examples'"),
])
def test_artifact_stages_missing_an_input_role_fail_at_planning(tmp_path, step, inputs, missing):
    data = _demo(tmp_path)
    entry = next(s for s in data["stages"] if s["stage"] == step)
    entry["inputs"] = inputs
    with pytest.raises(ConfigError, match=f"step '{step}' needs {missing}") as err:
        plan(recipe_from_dict(data))
    assert "inputs:" in str(err.value)
    assert not (tmp_path / "ws").exists()
    good = plan(recipe_from_dict(_demo(tmp_path)))  # the demo as shipped plans
    names = [s.name for s in good]
    assert {"eval", "train", "export"} <= set(names)
    assert names.index("train") < names.index("eval") < names.index("export")


def test_a_workspace_next_to_a_file_named_directly_is_fine(corpus, tmp_path):
    one = next(p for p in sorted(corpus.rglob("*.md")))
    data = recipe_dict(corpus, one.parent / "ws")
    data["stages"][0]["paths"] = [str(one)]
    assert plan(recipe_from_dict(data))[0].name == "ingest"
    data["stages"][0]["paths"] = [str(one.parent / "*.md")]  # a pattern reads its folder
    with pytest.raises(ConfigError, match="workspace is inside a folder this step reads"):
        plan(recipe_from_dict(data))
