"""The dataset card of a run: what went in, what each stage kept, dropped and quarantined, and what
came out (documents and training examples), as Markdown with plots.

Written to ``<workspace>/card/README.md`` (+ PNGs) after ``slmforge run`` and by ``slmforge card``.
Everything is read from the run's stored outputs (``_runs/latest.json``, each step's ``stats.json``,
``quarantine.parquet`` and ``part-*.parquet``), so the card always describes the files on disk.
Plots need matplotlib (the ``train`` extra); without it the card has tables only and says so.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from schemas.io import atomic_path, write_text


def _step_dirs(workspace: Path, manifest: dict) -> list[tuple[dict, Path]]:
    out = []
    for step in manifest["steps"]:
        d = workspace / step["dir"]
        if (d / "_SUCCESS").exists():
            out.append((step, d))
    return out


def _stats(d: Path) -> dict:
    p = d / "stats.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _parts(d: Path) -> list[Path]:
    return sorted(d.glob("part-*.parquet"))


def _read_columns(d: Path, columns: list[str]):
    """Only the columns that exist, from every part file (None when the step wrote no table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = _parts(d)
    if not parts:
        return None
    names = set(pq.read_schema(parts[0]).names)
    cols = [c for c in columns if c in names]
    if not cols:
        return None
    return pa.concat_tables(pq.read_table(p, columns=cols) for p in parts)


def _quarantine_reasons(d: Path) -> Counter:
    import pyarrow.parquet as pq

    p = d / "quarantine.parquet"
    if not p.exists():
        return Counter()
    reasons = pq.read_table(p, columns=["reason"]).column("reason").to_pylist()
    return Counter(r.split(":")[0] for r in reasons)


def _fmt_counter(c: dict | Counter, limit: int = 6) -> str:
    items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", … (+{len(items) - limit})" if len(items) > limit else "") if items else "-"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _quantiles(values: list[int]) -> str:
    if not values:
        return "-"
    s = sorted(values)
    q = lambda f: s[min(len(s) - 1, int(f * (len(s) - 1)))]  # noqa: E731
    return f"min {s[0]}, median {q(0.5)}, p90 {q(0.9)}, max {s[-1]}"


def _plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def _funnel_plot(rows: list[tuple[str, int, int, int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(rows)), 3.6))
    ax.bar(names, [r[2] for r in rows], color="#4C72B0", label="kept / out")
    ax.bar(names, [r[3] for r in rows], bottom=[r[2] for r in rows], color="#DD8452", label="dropped")
    ax.bar(names, [r[4] for r in rows], bottom=[r[2] + r[3] for r in rows], color="#C44E52", label="quarantined")
    ax.set_ylabel("rows")
    ax.set_title("Rows through the curation stages")
    ax.tick_params(axis="x", rotation=35)
    ax.legend(frameon=False)
    _save(fig, path)
    plt.close(fig)


def _hist_plot(series: dict[str, list[int]], path: Path, *, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, values in series.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend(frameon=False)
    _save(fig, path)
    plt.close(fig)


def _raft_section(rows: list[dict]) -> list[str]:
    """Retrieval recall@k of the RAFT rows' questions per split (synth/raft.py), when there are RAFT rows."""
    from synth.raft import recall_by_split

    found = recall_by_split(rows)
    if not found:
        return []
    k = found[0][3]
    return [f"## Retrieval (RAFT rows, k = {k})", "", "Share of questions whose source chunk the index retrieved among "
            f"the top {k} passages with the question as query (before the oracle was forced in or taken out):", "",
            _table(["split", "questions", f"recall@{k}"], [[s, n, f"{r:.3f}"] for s, n, r, _ in found]), ""]


def write_dataset_card(workspace: str | Path) -> Path:
    """Write ``<workspace>/card/README.md`` (and plots) for the last run; returns its path."""
    from slmforge.plan import latest_manifest

    workspace = Path(workspace)
    manifest = latest_manifest(workspace)
    steps = _step_dirs(workspace, manifest)
    out_dir = workspace / "card"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots_available()
    md: list[str] = ["# Dataset card", "", f"Recipe: `{manifest.get('recipe', '?')}` · workspace: `{workspace}`", ""]

    # 1. The funnel: every table-producing step.
    funnel, rows = [], []
    quarantine_all: Counter = Counter()
    for step, d in steps:
        st = _stats(d)
        if "rows_out" not in st:
            continue
        q = st.get("quarantined", 0)
        quarantine_all.update({f"{step['name']}: {k}": v for k, v in _quarantine_reasons(d).items()})
        dropped = sum(st.get("dropped", {}).values())
        rows.append([step["name"], step["stage"], st.get("rows_in", "-"), st["rows_out"],
                     _fmt_counter(st.get("dropped", {})), st.get("modified", 0), q,
                     f"{st.get('seconds', 0):.1f}", f"`{step['fingerprint']}`"])
        funnel.append((step["name"], st.get("rows_in", 0) or 0, st["rows_out"], dropped, q))
    md += ["## Stages", "", _table(["step", "stage", "in", "out", "dropped (by reason)", "modified",
                                    "quarantined", "seconds", "fingerprint"], rows), ""]
    if plots and funnel:
        _funnel_plot(funnel, out_dir / "funnel.png")
        md += ["![rows through the stages](funnel.png)", ""]
    md += ["## Quarantine", ""]
    if quarantine_all:
        md += ["Rows and files no stage could handle, kept with their reason and payload in each step's "
               "`quarantine.parquet`:", "",
               _table(["step: reason", "rows"], [[k, v] for k, v in sorted(quarantine_all.items())]), ""]
    else:
        md += ["Nothing was quarantined.", ""]

    # 2. The documents: the last step whose output has a `text` column.
    doc_step = None
    for step, d in steps:
        table = _read_columns(d, ["text", "format"])
        if table is not None and {"text", "format"} <= set(table.column_names):
            doc_step = (step, table)
    if doc_step is not None:
        step, table = doc_step
        lengths = [len(t) for t in table.column("text").to_pylist()]
        md += [f"## Documents (output of `{step['name']}`)", "",
               f"{table.num_rows} documents; characters: {_quantiles(lengths)}.", ""]
        if "format" in table.column_names:
            fmts = Counter(table.column("format").to_pylist())
            md += [_table(["format", "documents"], [[k, v] for k, v in sorted(fmts.items())]), ""]
        if plots:
            _hist_plot({"documents": lengths}, out_dir / "document_lengths.png",
                       title="Document length", xlabel="characters")
            md += ["![document lengths](document_lengths.png)", ""]
    for step, d in steps:  # PII: what the stage found here, beside the bench's leak rate and precision
        if step["stage"] == "pii":
            from curation.pii.report import card_lines

            md += card_lines(step["name"], _stats(d).get("counters", {}))

    # 3. The training examples: the last step with `messages`.
    ex_step = None
    for step, d in steps:
        table = _read_columns(d, ["messages", "origin", "split", "teacher", "template", "judge_score", "meta"])
        if table is not None and "messages" in table.column_names:
            ex_step = (step, table)
    if ex_step is not None:
        step, table = ex_step
        data = table.to_pylist()
        md += [f"## Training examples (output of `{step['name']}`)", "", f"{len(data)} examples.", ""]
        by = Counter((r.get("split") or "-", r.get("origin") or "-") for r in data)
        md += [_table(["split", "origin", "examples"], [[s, o, n] for (s, o), n in sorted(by.items())]), ""]
        teachers = Counter(f"{r.get('teacher') or '-'} / {r.get('template') or '-'}" for r in data)
        md += [_table(["teacher / template", "examples"], [[k, v] for k, v in sorted(teachers.items())]), ""]
        prompt_len = [sum(len(m["content"]) for m in r["messages"] if m["role"] != "assistant") for r in data]
        answer_len = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "assistant") for r in data]
        scores = [r["judge_score"] for r in data if r.get("judge_score") is not None]
        md += [f"Prompt characters: {_quantiles(prompt_len)}. Answer characters: {_quantiles(answer_len)}.", ""]
        if scores:
            md += [f"Judge scores: min {min(scores):.2f}, mean {sum(scores) / len(scores):.2f}, "
                   f"max {max(scores):.2f}.", ""]
        if plots:
            _hist_plot({"prompt": prompt_len, "answer": answer_len}, out_dir / "example_lengths.png",
                       title="Training example length", xlabel="characters")
            md += ["![example lengths](example_lengths.png)", ""]
        md += _raft_section(data)
    # 4. The model: eval results and exported files, when the run trained one.
    for step, d in steps:
        ev = d / "eval.json"
        if ev.exists():
            res = json.loads(ev.read_text())
            base, tuned = res["results"]["base"], res["results"]["tuned"]
            keys = [k for k in ("loss", "perplexity", "exact_match", "token_f1", "rouge_l") if k in base]
            md += [f"## Model evaluation (`{step['name']}`, {res.get('rows', '?')} rows of the {res.get('split', '?')} split)",
                   "", _table(["metric", "base", "tuned"],
                              [[k, f"{base[k]:.4g}", f"{tuned[k]:.4g}"] for k in keys]), ""]
        for card in sorted(d.glob("_out/README.md")) + sorted(d.glob("README.md")):
            md += [f"Model card of `{step['name']}`: `{card}`", ""]
    if not plots:
        md += ["*Plots skipped: matplotlib is not installed (`pip install 'slmforge[train]'`).*", ""]
    md += ["## Lineage", "", "Every row's path through the stages: `slmforge trace <id> --workspace "
           f"{workspace}`. Per-row decisions (action, reason, score) are in each step's `decisions.parquet`.", ""]
    path = out_dir / "README.md"
    write_text("\n".join(md), path)
    return path


__all__ = ["write_dataset_card"]
