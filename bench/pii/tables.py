"""Markdown tables of docs/pii.md from a measured JSON (bench/pii/run.py --json):

    python bench/pii/tables.py curation/pii/measured.json
"""

from __future__ import annotations

import argparse
import json

DEFAULT = "slmforge (default, residual:replace)"
OFF = "slmforge residual:off"
GROUPS = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
          "URL", "DATE_TIME", "PII", "SECRET"]


def _prl(x: dict | None) -> str:
    if not x or not x["gold"]:
        return "-"
    p = "n/a" if x.get("predicted", 1) == 0 else f"{x['precision']:.3f}"  # nothing predicted: no precision
    return f"{p} / {x['recall']:.3f} / {x['leak']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measured")
    m = json.load(open(ap.parse_args().measured))
    d, h = m["sets"]["dev"], m["sets"]["holdout"]
    print(f"Measured {m['date']} with `{m['command']}` (spaCy model {m['spacy_model']}).\n")
    print("| entity | dev gold | dev stock P / R / leak | dev slmforge P / R / leak | holdout gold | "
          "holdout stock P / R / leak | holdout slmforge P / R / leak |")
    print("|---|---|---|---|---|---|---|")
    for k in GROUPS:
        label = "**10 PII types (micro)**" if k == "PII" else k
        print(f"| {label} | {d[DEFAULT]['entities'][k]['gold']} | {_prl(d['stock']['entities'].get(k))} | "
              f"{_prl(d[DEFAULT]['entities'][k])} | {h[DEFAULT]['entities'][k]['gold']} | "
              f"{_prl(h['stock']['entities'].get(k))} | {_prl(h[DEFAULT]['entities'][k])} |")
    kinds = sorted({k for s in (d, h) for k in s[DEFAULT]["entities"] if k.startswith("kind:") and k != "kind:clean"})
    print("\n| document kind | dev gold | dev P / R / leak | holdout gold | holdout P / R / leak |\n|---|---|---|---|---|")
    for k in kinds:
        a, b = d[DEFAULT]["entities"].get(k), h[DEFAULT]["entities"].get(k)
        print(f"| {k[5:]} | {a['gold'] if a else '-'} | {_prl(a)} | {b['gold'] if b else '-'} | {_prl(b)} |")
    print("\n| figure | dev stock | dev slmforge residual:off | dev slmforge default | holdout stock | "
          "holdout slmforge residual:off | holdout slmforge default |\n|---|---|---|---|---|---|---|")
    rows = [("PII-free technical docs unchanged", lambda e: f"{100 * e['pii_free_unchanged']:.1f} % of {e['pii_free']}"),
            ("look-alikes kept (versions, hashes, ports ...)", lambda e: f"{100 * e['lookalikes_kept']:.1f} %"),
            ("leak of the 10 PII types, any-type overlap", lambda e: f"{e['pii_leak_any_type']:.3f}"),
            ("secrets P / R / leak", lambda e: _prl(e["entities"]["SECRET"])),
            ("documents per CPU-second", lambda e: f"{e['docs_per_cpu_second']}"),
            ("throughput vs stock (same run)", lambda e: f"{e.get('throughput_vs_stock', 1.0):.2f}x")]
    for name, fn in rows:
        print(f"| {name} | " + " | ".join(fn(s[e]) for s in (d, h) for e in ("stock", OFF, DEFAULT)) + " |")


if __name__ == "__main__":
    main()
