"""Bad input before any model is loaded: question files, the serve key, a recipe without export."""

from __future__ import annotations

import os
import stat

import pytest

from schemas.errors import ConfigError


def test_question_file_with_broken_lines_names_every_line(tmp_path):
    from train.answer import read_questions

    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "Which port?"}\n{"id": "b", "question": \n\n'
                    '{"id": "c"}\n{"id": "a", "question": "again"}\n{"question": "no id"}\n')
    with pytest.raises(ConfigError) as err:
        read_questions(path)
    msg = str(err.value)
    assert "3 broken line(s), nothing was answered" in msg
    assert "line 2: not JSON" in msg and "line 4: no non-empty string 'question'" in msg and "line 5: id 'a' repeats line 1" in msg
    path.write_text('{"id": "a", "question": "Which port?", "keywords": [["8443"]]}\n\n{"question": "no id"}\n')
    assert read_questions(path) == [{"id": "a", "question": "Which port?"}, {"id": "line-3", "question": "no id"}]
    with pytest.raises(ConfigError, match="not found"):
        read_questions(tmp_path / "missing.jsonl")


def test_api_key_is_made_once_and_kept_private(tmp_path):
    from slmforge.serve import api_key

    key, path, created = api_key(tmp_path / "state")
    assert created and len(key) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, _, created_again = api_key(tmp_path / "state")
    assert again == key and not created_again
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="can be read by other users"):
        api_key(tmp_path / "state")


def _recipe(tmp_path, bundle: dict):
    return {"workspace": str(tmp_path / "ws"), "stages": [
        {"stage": "ingest", "paths": ["data/sample"]}, {"stage": "chunk"}, bundle]}


def test_plan_rejects_a_bundle_without_export(tmp_path):
    from slmforge.plan import plan
    from slmforge.stages import recipe_from_dict

    with pytest.raises(ConfigError, match="step 'bundle' needs 'export' among its inputs") as err:
        plan(recipe_from_dict(_recipe(tmp_path, {"stage": "bundle", "inputs": ["ingest"]})))
    assert "ingest (nothing it uses)" in str(err.value)
    with pytest.raises(ConfigError, match="needs 'export'"):
        plan(recipe_from_dict(_recipe(tmp_path, {"stage": "bundle"})))  # default input: the step before (chunk)
