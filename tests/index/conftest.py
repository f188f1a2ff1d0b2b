"""Shared fixtures: the sample runbooks plus one planted page, run through ingest -> normalize -> chunk -> index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slmforge.runner import plan, run_recipe
from slmforge.stages import recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]

PLANTED = """# Moving the Osprey archive

Osprey is the cold-storage bucket for shipment photos older than 400 days.

## Restoring a photo from Osprey

To restore a photo, run `osprey_thaw --shipment ID` from the ops bastion; restores finish within six hours
and the photo reappears in the tracking page with a snowflake badge. The command refuses shipments that
were purged under the data retention policy.
"""


def index_recipe(corpus: Path, ws: Path, *, index: dict | None = None, chunk: dict | None = None) -> dict:
    return {"workspace": str(ws), "workers": 1, "stages": [
        {"stage": "ingest", "paths": [str(corpus)], "formats": ["md"]},
        {"stage": "normalize"},
        {"stage": "chunk", "max_chars": 800, "min_chars": 40, **(chunk or {})},
        {"stage": "index", "inputs": ["chunk", "normalize"], **(index or {})},
    ]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    shutil.copytree(ROOT / "data/sample/runbooks", root / "runbooks")
    (root / "runbooks" / "osprey-archive.md").write_text(PLANTED)
    return root


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    recipe = recipe_from_dict(index_recipe(corpus, ws))
    stats = run_recipe(recipe)
    return recipe, stats, plan(recipe)[-1].dir
