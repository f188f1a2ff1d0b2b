#!/usr/bin/env python3
"""Throughput ratios from a run_bench results .jsonl, round by round (``run.sh`` interleaves
slmforge and the peers, so the k-th run of every tool on a tier forms round k: same load).

Usage: ratios.py results.jsonl  -> markdown: per round and tier, docs/s of each slmforge
variant, of the fastest peer, and their ratio (wall and CPU time), then medians.
"""
import json
import statistics
import sys
from collections import defaultdict

recs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
seen: dict = defaultdict(int)
rounds: dict = defaultdict(dict)  # (tier, round) -> name -> record
for r in recs:
    if r.get("returncode") != 0:
        continue
    k = seen[(r["tier"], r["name"])]
    seen[(r["tier"], r["name"])] += 1
    rounds[(r["tier"], k)][r["name"]] = r


def cpu(r):
    return max(r.get("tree_cpu_s", 0), r["user_s"] + r["sys_s"])


print("| tier | round | load 1m | tool | docs/s | fastest peer | peer docs/s | ratio (wall) | ratio (CPU s, vs the peer using least CPU) |")
print("|---|---|---|---|---|---|---|---|---|")
summary: dict = defaultdict(list)
for (tier, k), tools in sorted(rounds.items()):
    peers = {n: r for n, r in tools.items() if not n.startswith("slmforge")}
    if not peers:
        continue
    best = max(peers.values(), key=lambda r: r["docs_per_s"])
    for name, r in sorted(tools.items()):
        if not name.startswith("slmforge"):
            continue
        ratio, cratio = r["docs_per_s"] / best["docs_per_s"], min(cpu(p) for p in peers.values()) / cpu(r)
        summary[(tier, name)].append((ratio, cratio))
        load = max(max(x.get("loadavg_1m", [0, 0])) for x in tools.values())
        print(f"| {tier} | {k + 1} | {load:.1f} | {name} | {r['docs_per_s']:.0f} | {best['name']} | "
              f"{best['docs_per_s']:.0f} | {ratio:.2f} | {cratio:.2f} |")
print()
print("| tier | tool | rounds | median ratio (wall) | min | median ratio (CPU s) |")
print("|---|---|---|---|---|---|")
for (tier, name), v in sorted(summary.items()):
    w = [x[0] for x in v]
    print(f"| {tier} | {name} | {len(v)} | {statistics.median(w):.2f} | {min(w):.2f} | {statistics.median(x[1] for x in v):.2f} |")
