"""General English text for replay (train: replay_path) from Debian's ``fortunes`` package.

Quotes, anecdotes and short prose from ten of its files (people, science, work, literature, …),
one JSON object per entry; entries that share any 8-word sequence with the forgetting check's
text (data/eval/general_text.jsonl) are left out, and a seeded 10 % goes to a separate
validation file used to choose a training configuration (never the forgetting check itself).

    apt-get install -y fortunes
    python bench/gemma/fortunes_replay.py [--out workspace/corpora/general-replay]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
FILES = ("people", "science", "work", "literature", "wisdom", "fortunes", "platitudes", "education", "food", "humorists")
ROOT = Path(__file__).resolve().parents[2]


def entries(text: str) -> list[str]:
    return [e.strip("\n") for e in re.split(r"^%\s*$", text, flags=re.M) if e.strip()]


def prose(entry: str) -> bool:
    """Readable English prose: enough words, mostly letters, no drawings or tables."""
    words = entry.split()
    chars = [c for c in entry if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    return 15 <= len(words) <= 300 and letters >= 0.75 * len(chars) and not re.search(r"[_|\\/#*=~^]{3,}", entry)


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("workspace/corpora/general-replay"))
    ap.add_argument("--exclude", type=Path, default=ROOT / "data/eval/general_text.jsonl")
    ap.add_argument("--validation", type=float, default=0.1)
    args = ap.parse_args(argv)
    if not FORTUNES.is_dir():
        print(f"{FORTUNES} is missing: apt-get install -y fortunes", file=sys.stderr)
        return 2
    banned = set().union(*(shingles(json.loads(ln)["text"]) for ln in args.exclude.read_text().splitlines() if ln.strip()))
    rows, seen, dropped = [], set(), {"not_prose": 0, "duplicate": 0, "overlaps_eval": 0}
    for name in FILES:
        for k, entry in enumerate(entries((FORTUNES / name).read_text(encoding="utf-8", errors="replace"))):
            key = " ".join(entry.split()).lower()
            if not prose(entry):
                dropped["not_prose"] += 1
            elif key in seen:
                dropped["duplicate"] += 1
            elif shingles(entry) & banned:
                dropped["overlaps_eval"] += 1
            else:
                seen.add(key)
                rows.append({"id": f"fortunes/{name}/{k}", "text": entry})
    random.Random(0).shuffle(rows)
    n_val = round(len(rows) * args.validation)
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, part in (("validation.jsonl", rows[:n_val]), ("train.jsonl", rows[n_val:])):
        tmp = args.out / f".{fname}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sorted(part, key=lambda r: r["id"])))
        tmp.replace(args.out / fname)
    print(f"{len(rows) - n_val} train + {n_val} validation entries -> {args.out}; left out: {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
