"""THE retrieval prompt format: rendering, citations, fingerprint and the parity check on load."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas.errors import ConfigError
from schemas.prompt_format import PromptFormat

PASSAGES = [{"source_id": "sql-alter", "text": "ALTER TABLE changes a table."},
            {"source_id": "sql-drop", "text": "DROP TABLE removes a table."}]


def test_open_and_closed_book_messages():
    fmt = PromptFormat()
    msgs = fmt.render_messages("How do I remove a table?", PASSAGES)
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == fmt.system
    assert "[1] (sql-alter) ALTER TABLE changes a table.\n\n[2] (sql-drop) DROP TABLE" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Question: How do I remove a table?")
    assert fmt.render_messages("How do I remove a table?", None) == [{"role": "user", "content": "How do I remove a table?"}]
    # braces in passage text or question are data, not placeholders
    odd = fmt.render_messages("what is {x}?", [{"source_id": "s", "text": "json {\"a\": 1}"}])
    assert '{"a": 1}' in odd[1]["content"] and "what is {x}?" in odd[1]["content"]


def test_citations_map_to_source_ids():
    fmt = PromptFormat()
    assert fmt.parse_citations("Use DROP TABLE [2], see also [1] and [2].", PASSAGES) == ["sql-drop", "sql-alter"]
    assert fmt.parse_citations("No source [7] [0].", PASSAGES) == []
    assert fmt.cited_numbers("[2][2][1]", 2) == [2, 1]


def test_changed_passage_template_changes_the_fingerprint():
    a, b = PromptFormat(), PromptFormat(passage_template="[{n}] {text} ({source_id})")
    assert a.fingerprint() != b.fingerprint() and len(a.fingerprint()) == 64
    assert a.fingerprint() == PromptFormat().fingerprint()


def test_bad_templates_are_refused():
    with pytest.raises(ValidationError, match="unknown placeholder"):
        PromptFormat(passage_template="[{n}] {body}")
    with pytest.raises(ValidationError, match=r"\{text\}"):
        PromptFormat(passage_template="[{n}] {source_id}")
    with pytest.raises(ValidationError, match="capturing group"):
        PromptFormat(citation_pattern=r"\[\d+\]")


def test_load_refuses_a_prompt_file_that_does_not_match(tmp_path):
    fmt = PromptFormat()
    path = fmt.save(tmp_path / "prompt_format.json")
    assert PromptFormat.load(path, expected_fingerprint=fmt.fingerprint()) == fmt
    raw = json.loads(path.read_text())
    raw["passage_template"] = "[{n}] {text}"
    path.write_text(json.dumps(raw))  # edited by hand: the recorded fingerprint no longer matches
    with pytest.raises(ConfigError, match="does not match the fingerprint recorded in the file"):
        PromptFormat.load(path)
    changed = PromptFormat(passage_template="[{n}] {text}")
    changed.save(path)  # a consistent file, but not the format the model was bundled with
    with pytest.raises(ConfigError, match="the model was bundled with"):
        PromptFormat.load(path, expected_fingerprint=fmt.fingerprint())
