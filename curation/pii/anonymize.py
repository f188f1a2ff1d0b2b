"""Replace found spans: redact, typed placeholder, or consistent pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from curation.pii.config import PiiConfig
from schemas.errors import ConfigError


def _norm(entity: str, value: str) -> str:
    if entity in ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN"):
        return re.sub(r"\D", "", value)
    return " ".join(value.lower().split())


def _person_keys(values: list[str]) -> dict[str, str]:
    """Map each PERSON mention to a canonical name: 'Maria' -> 'maria lopez' when that full name occurs."""
    full = [_norm("PERSON", v) for v in values if len(v.split()) > 1]
    keys = {}
    for v in values:
        n = _norm("PERSON", v)
        if len(n.split()) == 1:
            owners = [f for f in dict.fromkeys(full) if n in (f.split()[0], f.split()[-1])]
            keys[v] = owners[0] if len(owners) == 1 else n
        else:
            keys[v] = n
    return keys


def corpus_key(config: PiiConfig) -> bytes:
    key = os.environ.get(config.key_env)
    if not key:
        raise ConfigError(
            f"corpus_consistent pseudonyms need a secret key in ${config.key_env}", received="unset or empty",
            expected="a long random string", fix=f"export {config.key_env}=$(openssl rand -hex 32)",
        )
    return key.encode()


def replace(text: str, spans: list[dict], config: PiiConfig, *, key: bytes | None = None) -> str:
    """Apply the configured anonymisation to non-overlapping, sorted spans."""
    return _apply(text, spans, _labels(text, spans, config, key))


def mark(text: str, spans: list[dict], suspects: list[dict], config: PiiConfig, *, key: bytes | None = None) -> str:
    """``spans`` anonymised and each suspect span (residual scan) kept but marked ``[[TYPE? value]]`` for a reviewer."""
    labels = dict(zip((s["start"] for s in spans), _labels(text, spans, config, key)))
    labels.update({s["start"]: f"[[{s['entity_type']}? {text[s['start']:s['end']]}]]" for s in suspects})
    both = sorted(spans + suspects, key=lambda s: s["start"])
    return _apply(text, both, [labels[s["start"]] for s in both])


def _labels(text: str, spans: list[dict], config: PiiConfig, key: bytes | None) -> list[str]:
    labels: list[str] = []
    if config.anonymize == "redact":
        labels = ["" for _ in spans]
    elif config.anonymize == "placeholder":
        labels = [f"<{s['entity_type']}>" for s in spans]
    else:
        persons = _person_keys([text[s["start"]:s["end"]] for s in spans if s["entity_type"] == "PERSON"])
        numbers: dict[tuple[str, str], str] = {}
        counts: dict[str, int] = {}
        for s in spans:
            et, value = s["entity_type"], text[s["start"]:s["end"]]
            canon = persons[value] if et == "PERSON" else _norm(et, value)
            if (et, canon) not in numbers:
                if key is not None:
                    tag = hmac.new(key, f"{et}\x00{canon}".encode(), hashlib.sha256).hexdigest()[:8]
                else:
                    counts[et] = counts.get(et, 0) + 1
                    tag = str(counts[et])
                numbers[(et, canon)] = f"<{et}_{tag}>"
            labels.append(numbers[(et, canon)])
    return labels


def _apply(text: str, spans: list[dict], labels: list[str]) -> str:
    if not spans:
        return text
    out, pos = [], 0
    for s, label in zip(spans, labels):
        out.append(text[pos:s["start"]])
        out.append(label)
        pos = s["end"]
    out.append(text[pos:])
    return "".join(out)
