"""The four-way evaluation (base vs tuned x closed-book vs open-book) with the tiny trained model and a real index."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.arrow import CHUNKS
from schemas.errors import ConfigError
from schemas.io import write_parquet
from schemas.prompt_format import PromptFormat
from tests.train.conftest import FACTS, make_ctx
from train.eval_openbook import CELLS, load_questions, same_page

KEYWORDS = ["8443", "400 days", "on-call lead", "5000", "vault", "midnight", "dead-letter", "incident commander"]
K = 2


def build_index(root: Path) -> Path:
    """One chunk per fact, id = the dataset rows' source id, so held-out rows map to their page."""
    from curation.index.config import IndexConfig
    from curation.index.stage import IndexStage

    rows = []
    for d, (q, a) in enumerate(FACTS):
        text = f"{q.rstrip('?')}: {a}"
        rows.append({"id": f"doc{d}", "doc_id": f"doc{d}", "text": text, "source": f"runbooks/doc{d}.md",
                     "span_start": 0, "span_end": len(text), "heading": None, "position": 0, "parent_ids": [f"doc{d}"]})
    write_parquet(pa.Table.from_pylist(rows, schema=CHUNKS), root / "chunk" / "part-00000.parquet")
    IndexStage(IndexConfig()).run(make_ctx(root, "index", {"chunk": root / "chunk"}))
    return root / "index"


def question_file(path: Path) -> Path:
    lines = [json.dumps({"id": f"q{d}", "question": f"{q}?", "reference": a, "keywords": [[KEYWORDS[d]]],
                         "page": f"doc{d}.html"}) for d, (q, a) in enumerate(FACTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def four_way(pipeline, tmp_path_factory):
    from train.config import EvalConfig
    from train.evaluate import EvalStage

    root = tmp_path_factory.mktemp("openbook")
    index = build_index(root)
    questions = question_file(root / "questions.jsonl")
    cfg = EvalConfig(max_examples=8, max_new_tokens=16, threads=2,
                     open_book={"k": K, "questions": str(questions)})
    stats = EvalStage(cfg).run(make_ctx(root, "eval", {"dataset": pipeline["dataset"], "base": pipeline["base"],
                                                      "train": pipeline["train"], "index": index}))
    return root, index, stats, json.loads((root / "eval" / "eval.json").read_text())


def test_four_way_table_is_computed_into_the_card(four_way):
    from curation.index import open_index

    root, index, stats, report = four_way
    results = report["open_book"]["results"]
    assert list(results) == ["held-out test split", "questions questions.jsonl"]
    qs = results["questions questions.jsonl"]
    assert set(qs["cells"]) == {f"{w}_{b}" for w, b in CELLS} and qs["questions"] == len(FACTS)
    samples = [json.loads(x) for x in (root / "eval" / "open_book_samples.jsonl").read_text().splitlines()]
    file_samples = [s for s in samples if s["set"] == "questions questions.jsonl"]
    # every number is recomputed from the stored answers (not a constant)
    for w, b in CELLS:
        answers = [s[f"{w}_{b}"] for s in file_samples]
        correct = sum(KEYWORDS[int(s["id"][1:])].lower() in a.lower() for s, a in zip(file_samples, answers)) / len(FACTS)
        assert qs["cells"][f"{w}_{b}"]["correct"] == {"value": pytest.approx(correct), "n": len(FACTS)}
        assert 0 <= qs["cells"][f"{w}_{b}"]["token_f1"]["value"] <= 1
        assert (qs["cells"][f"{w}_{b}"]["citation_accuracy"]["value"] is None) == (b == "closed")
    # the tiny model was tuned closed-book on these facts: tuned closed-book beats base closed-book
    assert qs["cells"]["tuned_closed"]["correct"]["value"] > qs["cells"]["base_closed"]["correct"]["value"]
    # recall@k from the index itself
    idx = open_index(index)
    expected = sum(any(same_page(h.source_id, f"doc{d}.html") for h in idx.search(f"{q}?", k=K))
                   for d, (q, _) in enumerate(FACTS)) / len(FACTS)
    assert qs["recall_at_k"] == {"value": pytest.approx(expected), "n": len(FACTS)}
    assert all(len(s["passages"]) <= K for s in samples)
    md = (root / "eval" / "eval.md").read_text()
    assert "| metric | base closed-book | base open-book | tuned closed-book | tuned open-book |" in md
    assert f"| retrieval recall@{K} (page) |" in md and "![four-way evaluation](eval.png)" in md
    assert (root / "eval" / "eval.png").stat().st_size > 10_000
    held = results["held-out test split"]
    assert held["questions"] >= 1 and held["cells"]["tuned_open"]["correct"]["n"] == 0  # no keywords on synth rows
    assert held["recall_at_k"]["n"] == held["questions"]  # every held-out row's source chunk is in the index


def test_question_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "ok?"}\n{"id": 2, "question": \n')
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        load_questions(bad)
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ConfigError, match="line 1: no non-empty string 'question'"):
        load_questions(bad)
    bad.write_text('{"id": 1, "question": "a?", "keywords": ["x"]}\n')
    with pytest.raises(ConfigError, match="keyword groups"):
        load_questions(bad)
    bad.write_text("\n")
    with pytest.raises(ConfigError, match="holds no questions"):
        load_questions(bad)
    assert [q.page for q in load_questions(question_file(tmp_path / "q.jsonl"))][:2] == ["doc0.html", "doc1.html"]


def test_open_book_refuses_another_prompt_format(pipeline, tmp_path):
    from train.eval_openbook import check_prompt_format

    rows = [{"meta": json.dumps({"prompt_format": PromptFormat().fingerprint()})}]
    check_prompt_format(rows, PromptFormat())
    with pytest.raises(ConfigError, match="prompt format differs"):
        check_prompt_format(rows, PromptFormat(passage_template="<{n}> {text}"))


def test_slmforge_eval_questions_cli(pipeline, four_way, tmp_path):
    from typer.testing import CliRunner

    from slmforge.cli import app

    root, index, _, _ = four_way
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", "--dataset", str(pipeline["dataset"]), "--base-model", str(pipeline["base"]),
                                   "--adapter", str(pipeline["train"]), "--out", str(out), "--index", str(index),
                                   "--questions", str(root / "questions.jsonl"), "-k", "1", "--max-examples", "2",
                                   "--set", "max_new_tokens=4"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval.json").read_text())["open_book"]
    assert report["k"] == 1 and report["results"]["questions questions.jsonl"]["questions"] == len(FACTS)
    res = CliRunner().invoke(app, ["eval", "--dataset", str(pipeline["dataset"]), "--base-model", str(pipeline["base"]),
                                   "--adapter", str(pipeline["train"]), "--out", str(tmp_path / "ev2"),
                                   "--questions", str(root / "questions.jsonl")])
    assert res.exit_code == 2 and "--index DIR" in res.output and "Loading weights" not in res.output


def test_quote_in_the_eval_stage_answers_with_cited_spans(pipeline):
    """``open_book.quote``'s decoding in transformers: every open-book answer is a span of one of its passages (from a
    word start) followed by ``[n]`` naming a passage that holds it; without passages nothing is constrained."""
    import re

    from train.evaluate import generate_answers
    from train.inputs import load_model, load_tokenizer

    tok = load_tokenizer(pipeline["base"] / "model")
    model = load_model(pipeline["base"] / "model")
    fmt = PromptFormat()
    passages = [[f"{q.rstrip('?')}: {a}" for q, a in (FACTS[d], FACTS[(d + 1) % len(FACTS)])] for d in range(4)]
    prompts = [fmt.render_messages(f"{FACTS[d][0]}?", [{"source_id": f"doc{d}", "text": t} for t in passages[d]])
               for d in range(4)]
    copied = generate_answers(model, tok, prompts, max_new_tokens=12, passages=passages)
    free = generate_answers(model, tok, prompts, max_new_tokens=12)
    for answer, texts in zip(copied, passages):
        m = re.fullmatch(r"(.*\S) \[(\d)\]", answer, flags=re.DOTALL)
        assert m, answer
        span = " ".join(m.group(1).split())
        assert span in " ".join(texts[int(m.group(2)) - 1].split()), (answer, texts)
    assert copied != free
