"""Shared helpers of the labelled PII sets (bench/pii/dev_set.py and bench/pii/holdout_set.py).

A document template is a function ``(fake, rnd) -> list[piece]`` where a piece is plain text or a
``(LABEL, value)`` pair. LABEL is one of the ten PII types or ``SECRET``; ``(None, value)`` marks a
look-alike that must NOT be found (versions, hashes, ports ...; it is plain text in the output and
only counted for the "look-alikes kept" figure). Rendering records the character span of every
labelled value, so the labels are exact by construction.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence

Piece = str | tuple[str | None, str]
Template = Callable[..., list[Piece]]

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"


def token(rnd: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def render(pieces: Sequence[Piece]) -> tuple[str, list[dict], list[dict]]:
    """Text, gold spans (label != None) and look-alike spans (label None)."""
    out: list[str] = []
    spans: list[dict] = []
    decoys: list[dict] = []
    pos = 0
    for p in pieces:
        if isinstance(p, str):
            out.append(p)
            pos += len(p)
            continue
        label, value = p
        if label is None:
            decoys.append({"start": pos, "end": pos + len(value)})
        else:
            spans.append({"start": pos, "end": pos + len(value), "entity_type": label})
        out.append(value)
        pos += len(value)
    return "".join(out), spans, decoys


def generate(templates: dict[str, list[Template]], clean: list[Template], *, n: int, seed: int, locales: list[str],
             split: str, clean_share: float = 0.2) -> list[dict]:
    """``n`` documents: kinds drawn round-robin, a ``clean_share`` of PII-free technical documents."""
    from faker import Faker

    rnd = random.Random(seed)
    fakes = []
    for i, loc in enumerate(locales):
        f = Faker(loc)
        f.seed_instance(seed * 1000 + i)
        fakes.append(f)
    kinds = sorted(templates)
    rows = []
    for i in range(n):
        fake = fakes[rnd.randrange(len(fakes))]
        if rnd.random() < clean_share:
            kind, tpl = "clean", rnd.choice(clean)
        else:
            kind = kinds[i % len(kinds)]
            tpl = rnd.choice(templates[kind])
        text, spans, decoys = render(tpl(fake, rnd))
        rows.append({"id": f"{split}-{i}", "kind": kind, "clean": kind == "clean", "locale": fake.locales[0],
                     "template": f"{split}:{tpl.__name__}", "text": text, "spans": spans, "decoys": decoys})
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
