"""bench/raft/score_answers.py: the served-path scorer, on hand-made answers (no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from schemas.prompt_format import PromptFormat
from train.eval_openbook import Question

ROOT = Path(__file__).resolve().parents[2]


def _scorer():
    spec = importlib.util.spec_from_file_location("score_answers", ROOT / "bench/raft/score_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_answer_in_passages_separates_retrieval_misses_from_reading_misses():
    sa = _scorer()
    questions = [Question("q1", "How do I undo a transaction?", None, [["ROLLBACK"]], "sql-rollback.html"),
                 Question("q2", "What does VACUUM FULL lock?", None, [["exclusive"]], "sql-vacuum.html"),
                 Question("q3", "Which command renames a table?", None, [["RENAME"]], "sql-altertable.html")]
    chunks = {"c1": "ROLLBACK aborts the current transaction.", "c2": "VACUUM FULL takes an exclusive lock.",
              "c3": "CREATE TABLE defines a new table."}
    answers = {  # q1 read right; q2 answer in the passage but not stated; q3 answer not retrieved at all
        "q1": {"answer": "Use ROLLBACK [1]", "citations": ["corpus/sql-rollback.md"], "closed_book": False,
               "passages": [{"n": 1, "source_id": "corpus/sql-rollback.md", "chunk_id": "c1"}]},
        "q2": {"answer": "It reclaims space [1]", "citations": ["corpus/sql-vacuum.md"], "closed_book": False,
               "passages": [{"n": 1, "source_id": "corpus/sql-vacuum.md", "chunk_id": "c2"}]},
        "q3": {"answer": "CREATE TABLE [1]", "citations": ["corpus/sql-createtable.md"], "closed_book": False,
               "passages": [{"n": 1, "source_id": "corpus/sql-createtable.md", "chunk_id": "c3"}]},
    }
    m = sa.score(questions, answers, fmt=PromptFormat(), chunks=chunks)["metrics"]
    assert (m["correct"]["value"], m["correct"]["n"]) == (1 / 3, 3)
    assert (m["answer_in_passages"]["value"], m["answer_in_passages"]["n"]) == (2 / 3, 3)
    assert (m["correct_when_in_passages"]["value"], m["correct_when_in_passages"]["n"]) == (0.5, 2)
    assert m["citation_accuracy"]["value"] == 2 / 3 and m["recall_at_k"]["value"] == 2 / 3
    assert m["answer_chars"] == {"value": len("Use ROLLBACK"), "n": 3, "median": True}  # 12, 17, 12: citations removed
    # without the bundle's chunks the two columns are absent, the rest unchanged
    plain = sa.score(questions, answers, fmt=PromptFormat())["metrics"]
    assert plain["answer_in_passages"]["n"] == 0 and plain["correct"] == m["correct"]
    with pytest.raises(SystemExit, match="not in --bundle's index"):
        sa.score(questions, answers, fmt=PromptFormat(), chunks={"c1": chunks["c1"]})
