import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_corpus

ROOT = Path(__file__).resolve().parents[2]

RELAXED_FILTER = {
    "stage": "filter", "min_words": 10, "min_stopwords": 0, "min_line_punct_ratio": None,
    "max_short_line_ratio": None, "min_alpha_words_ratio": 0.5, "max_top_2gram_frac": None,
    "max_top_3gram_frac": None, "max_top_4gram_frac": None, "max_dup_5gram_frac": None,
    "max_dup_10gram_frac": None, "max_dup_line_frac": None, "max_dup_para_frac": None,
    "max_dup_line_char_frac": None,
}


def recipe_dict(corpus: Path, workspace: Path, **filter_kw) -> dict:
    return {
        "workspace": str(workspace),
        "workers": 1,
        "stages": [
            {"stage": "ingest", "paths": [str(corpus)], "max_file_bytes": 10000, "shard_bytes": 2000},
            {"stage": "normalize"},
            {"stage": "score"},
            {**RELAXED_FILTER, **filter_kw},
            {"stage": "exact_dedup"},
        ],
    }


@pytest.fixture
def corpus(tmp_path):
    make_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, cwd: Path | None = None, check: bool = True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "slmforge", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"slmforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def parquet_bytes(workspace: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workspace)): p.read_bytes() for p in sorted(workspace.rglob("*.parquet"))}
