"""The dataset card's PII section: what the stage measured on this corpus (no labels here: spans found per type,
columns touched, residual-scan hits) beside the leak rate and precision measured on the labelled bench sets
(``curation/pii/measured.json``, written by ``bench/pii/run.py --json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MEASURED = Path(__file__).with_name("measured.json")
DEFAULT_ENGINE = "slmforge (default, residual:replace)"
_GROUPS = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
           "URL", "DATE_TIME", "SECRET"]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)])


def measured(path: Path = MEASURED) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def card_lines(step: str, counters: dict[str, int], *, bench: dict | None = None) -> list[str]:
    """Markdown lines for one pii step; empty when the step found nothing and there is no bench to cite."""
    ents = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("entities:")}
    cols = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("modified:")}
    md = [f"### PII scrubbed by `{step}`", ""]
    if ents:
        md += [_table(["entity", "spans replaced"], [[k, v] for k, v in sorted(ents.items())]), ""]
    else:
        md += ["No PII or secrets found.", ""]
    if cols:
        md += ["Rows changed per column: " + ", ".join(f"`{k}` {v}" for k, v in sorted(cols.items())) + ".", ""]
    md += [f"Residual scan (second pass at lower confidence): {counters.get('residual:replaced', 0)} spans replaced, "
           f"{counters.get('residual:review_rows', 0)} rows ({counters.get('residual:review_spans', 0)} spans) sent "
           "to review.", ""]
    bench = bench if bench is not None else measured()
    if not bench:
        return md
    sets = {name: s[DEFAULT_ENGINE] for name, s in bench.get("sets", {}).items() if DEFAULT_ENGINE in s}
    if not sets:
        return md
    md += ["This corpus has no labels, so its leak rate cannot be measured here. Leak rate (1 − recall) and "
           f"precision of the same recognizers on the project's labelled sets (bench/pii, {bench['date']}, "
           f"`{bench['command']}`; `holdout` was never used for tuning):", ""]
    names = sorted(sets)
    rows = []
    for g in _GROUPS + ["PII"]:
        cells = []
        for n in names:
            e = sets[n]["entities"].get(g)
            cells.append(f"{e['leak']:.3f} / {e['precision']:.3f}" if e and e["gold"] else "-")
        rows.append(["10 PII types (micro)" if g == "PII" else g, *cells])
    md += [_table(["entity", *(f"{n}: leak / precision" for n in names)], rows), "",
           "Labelled sets are synthetic (templates + Faker values); real text has formats they lack. See docs/pii.md.",
           ""]
    return md
