"""Stage config of near-duplicate MinHash dedup (issue: near-dup). Registers itself by its `stage` literal."""

from __future__ import annotations
