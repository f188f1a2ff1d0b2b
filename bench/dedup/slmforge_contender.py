#!/usr/bin/env python3
"""Bench contender: ``--input docs.parquet --output result.parquet`` via curation.dedup.near.dedup_file."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curation.dedup.near import dedup_file  # noqa: E402
from curation.dedup.config import NearDedupConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    cfg = NearDedupConfig(threshold=a.threshold, num_perm=a.num_perm)
    stats = dedup_file(a.input, a.output, config=cfg, workers=a.workers)
    print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
