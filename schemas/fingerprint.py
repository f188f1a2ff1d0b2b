"""Stage fingerprints: what makes a stage's output reusable.

fingerprint = sha256(stage name, stage code version, normalised config without runtime-only
fields, upstream fingerprints, schema version, input manifest for source stages).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from schemas.arrow import SCHEMA_VERSION


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def fingerprint(
    *,
    stage: str,
    version: str,
    config: Mapping[str, object],
    upstream: Sequence[str] = (),
    extra: Mapping[str, object] | None = None,
) -> str:
    payload = {
        "stage": stage,
        "version": version,
        "config": config,
        "upstream": list(upstream),
        "schema_version": SCHEMA_VERSION,
        "extra": extra or {},
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]
