"""What scrubbing every text column costs: ``scrub_table`` on the labelled texts with only ``text`` vs with a
one-line ``title``, a three-key JSON ``meta`` and a ``source`` path per document (documents per CPU-second).

    python bench/pii/columns_cost.py /tmp/pii_dev_final.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow as pa

from curation.pii.columns import scrub_table
from curation.pii.config import PiiConfig
from curation.pii.engine import _offline_tldextract, get_analyzer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set")
    a = ap.parse_args()
    _offline_tldextract()
    rows = [json.loads(line) for line in open(a.set)]
    table = pa.table({
        "id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
        "source": [f"inbox/{r['kind']}/{r['id']}.txt" for r in rows],
        "title": [r["text"].split("\n")[0][:60] for r in rows],
        "meta": [json.dumps({"kind": r["kind"], "locale": r["locale"], "template": r["template"]}) for r in rows],
    })
    cfg = PiiConfig()
    get_analyzer(cfg)
    scrub_table(table.slice(0, 5), cfg)  # warm up
    for cols in (["text"], None):
        t0 = time.process_time()
        scrub_table(table, cfg.model_copy(update={"columns": cols}))
        dt = time.process_time() - t0
        print(f"{'text only' if cols else 'text, source, title, meta'}: {len(rows) / dt:.1f} documents per CPU-second")


if __name__ == "__main__":
    main()
