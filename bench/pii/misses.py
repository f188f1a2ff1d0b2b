"""Print missed gold spans and false positives of slmforge on a labelled set, with context (tuning aid).

Use it on the DEV set only (python bench/pii/misses.py /tmp/pii_dev.jsonl --entity PERSON); the holdout
set is for reporting, never for reading misses.
"""

from __future__ import annotations

import argparse
import json

from run import GROUPS, _overlaps, group

from curation.pii import scrub_texts
from curation.pii.config import PiiConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set")
    ap.add_argument("--entity", default=None, help="only this entity group (e.g. PERSON, SECRET)")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--residual", default="off")
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.set)]
    if "holdout" in rows[0]["id"]:
        raise SystemExit("misses.py reads the dev set only: the holdout set is never used for tuning")
    _, preds = scrub_texts([r["text"] for r in rows], config=PiiConfig(residual=a.residual))
    miss, fp = [], []
    for row, pred in zip(rows, preds):
        t = row["text"]
        pred = [p for p in pred if group(p["entity_type"]) in GROUPS]
        for g in row["spans"]:
            if a.entity and group(g["entity_type"]) != a.entity:
                continue
            if not any(group(p["entity_type"]) == group(g["entity_type"]) and _overlaps(p, g) for p in pred):
                got = [p["entity_type"] for p in pred if _overlaps(p, g)]
                miss.append(f"{g['entity_type']:13} {t[g['start']:g['end']]!r:40} got={got} | "
                            f"{t[max(0, g['start'] - 40):g['end'] + 25]!r}")
        for p in pred:
            if a.entity and group(p["entity_type"]) != a.entity:
                continue
            if not any(group(p["entity_type"]) == group(g["entity_type"]) and _overlaps(p, g) for g in row["spans"]):
                fp.append(f"{p['entity_type']:13} {t[p['start']:p['end']]!r:40} {p['score']} | "
                          f"{t[max(0, p['start'] - 40):p['end'] + 25]!r}")
    print(f"--- {len(miss)} missed")
    print("\n".join(miss[:a.limit]))
    print(f"--- {len(fp)} false positives")
    print("\n".join(fp[:a.limit]))


if __name__ == "__main__":
    main()
