"""The code's shape (issue 21): every module imports, the import graph of the five packages has no
cycle (lazy imports inside functions count: a loop is a loop), and no file in slmforge/, synth/,
curation/ is over ~400 lines."""

import ast
import importlib
from pathlib import Path

import pytest

from tests.core.conftest import ROOT

PACKAGES = ("slmforge", "schemas", "curation", "synth", "train")
MAX_LINES = 400
#: vendored into the Argilla server's own venv (a search-engine plugin written against Argilla's
#: interface, one class by its contract); not imported by slmforge
LONG_OK = {"curation/annotate/server/sqlite_engine.py"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (top-level and inside functions), from the source."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {r for a in node.names if (r := resolve(a.name))}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                deps |= {r for a in node.names if (r := resolve(f"{base}.{a.name}"))}
        deps.discard(mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_lazy_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_of_the_five_packages_has_no_cycle():
    graph = import_graph()
    assert {"slmforge.plan", "slmforge.execute", "slmforge.runner", "slmforge.ray_executor"} <= set(graph)
    assert "slmforge.runner" not in graph["slmforge.ray_executor"]
    assert "slmforge.cli" not in set().union(*(graph[m] for m in graph if m.startswith("slmforge.cli_")))
    assert cycles(graph) == []


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith(("slmforge", "schemas")) and not m.endswith("__main__")])
def test_every_core_module_imports(module):
    importlib.import_module(module)


def test_no_file_is_over_400_lines():
    long = {}
    for pkg in ("slmforge", "synth", "curation"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = str(f.relative_to(ROOT))
            n = len(f.read_text().splitlines())
            if n > MAX_LINES and rel not in LONG_OK:
                long[rel] = n
    assert long == {}, f"split these files (docs/architecture.md: ~{MAX_LINES} lines at most): {long}"


def test_docs_point_inside_the_repository():
    """The design is docs/architecture.md; README and docs link only to files in the repository, and no
    source, doc or config names a design file outside it."""
    import re
    import subprocess

    assert (ROOT / "docs/architecture.md").is_file()
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            if not path.exists() or ROOT.resolve() not in path.parents:
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.yaml"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    outside = [f for f in tracked if f != "tests/core/test_structure.py" and "DESIGN.md" in (ROOT / f).read_text()]
    assert outside == [], f"these point at a design file outside the repository (use docs/architecture.md): {outside}"


def test_no_stage_config_lives_in_schemas():
    """schemas/ keeps only contracts: every registered stage's config class is defined beside its code."""
    from schemas.config import StageConfig
    from slmforge.stages import STAGES, config_model

    for name in STAGES:
        model = config_model(name, where="test")
        assert issubclass(model, StageConfig) and not model.__module__.startswith("schemas"), (name, model.__module__)
