"""Generation controls without a model: the loop guard's rule, the answer-length quantile, the overrides' checks."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from train.generation import Generation, answer_lengths, loop_start, quantile


def _first_loop(tokens, n):
    seen, out = {}, []
    for t in tokens:
        out.append(t)
        cut = loop_start(out, n, seen)
        if cut is not None:
            return cut, len(out)
    return None


def test_loop_guard_cuts_where_the_repeat_began():
    sentence = list(range(10, 20))  # a 10-token "sentence" the model then repeats
    assert _first_loop(sentence + sentence + sentence, 4) == (10, 14)  # cut after the first copy, seen 4 tokens in
    assert _first_loop([1, 2, 3] + [7] * 20, 5) == (4, 9)  # a one-token loop keeps one of it
    assert _first_loop(list(range(100)), 2) is None  # nothing repeats
    assert _first_loop([1, 2, 3, 9, 1, 2, 4], 3) is None  # a shared 2-gram is no 3-gram loop
    assert _first_loop(sentence * 3, 0) is None  # 0: off


def test_quantile_is_nearest_rank_and_lengths_count_the_end_of_turn():
    assert quantile(list(range(1, 101)), 0.99) == 99 and quantile(list(range(1, 101)), 1.0) == 100
    assert quantile([5], 0.99) == 5 and quantile([3, 1, 2], 0.5) == 2
    assert answer_lengths(["  a b c ", "d"], str.split) == [4, 2]


def test_overrides_are_checked_and_none_keeps_the_bundle_setting():
    g = Generation.from_manifest({"max_new_tokens": 137, "repeat_penalty": 1.0, "loop_ngram": 16})
    assert g.override() == g and g.override(max_tokens=8).max_tokens == 8 and g.override(loop_ngram=0).loop_ngram == 0
    # a bundle written before the controls were recorded: max tokens as recorded, no penalty, no guard
    assert Generation.from_manifest({"max_new_tokens": 256}) == Generation(max_tokens=256, repeat_penalty=1.0, loop_ngram=0)
    for bad, match in (({"max_tokens": 0}, "at least 1"), ({"repeat_penalty": 3.0}, "repeat penalty"),
                       ({"loop_ngram": 1}, "0 \\(off\\) or 2-64"), ({"loop_ngram": 65}, "n-gram")):
        with pytest.raises(ConfigError, match=match):
            g.override(**bad)


def test_bundle_config_refuses_a_one_token_loop_guard():
    from pydantic import ValidationError

    from train.bundle_config import BundleConfig

    with pytest.raises(ValidationError, match="1-token loop guard"):
        BundleConfig(loop_ngram=1)


def test_span_copier_keeps_the_answer_a_span_of_a_passage_and_cites_it():
    """The copier takes the model's best-ranked token that keeps the answer a span of a passage (from a word start,
    whitespace runs as one space), ends the span where the model ranks an end or a citation first, and cites the
    first passage that holds it."""
    from train.copying import SpanCopier

    vocab = {0: "<eos>", 1: "Drop", 2: " the", 3: "  table", 4: " view", 5: " [", 6: "rop", 7: " tables", 8: "\n",
             9: "", 10: "Cascade"}
    passages = ["Use RESTRICT to refuse.", "To DROP a thing: Drop the\ntable first, then the view."]
    c = SpanCopier(passages, piece=vocab.__getitem__, is_end=lambda t: t == 0)
    assert c.choose([0, 5, 9, 6, 10, 1]) == 1  # no end, citation, empty piece or mid-word start before a first word
    c.advance(1)
    assert c.choose([4, 2]) == 2  # " view" does not follow "Drop" in any passage
    c.advance(2)
    assert c.choose([7, 3]) == 3  # "\ntable" in the passage matches "  table": whitespace runs compare as one space
    c.advance(3)
    assert c.text == "Drop the table" and c.holds(c.text) == [2]
    assert c.choose([5, 0]) is None  # the model prefers to cite: the span ends
    assert c.choose([4, 7]) is None  # nothing ranked continues the span
    assert c.citation() == 2
    ws = SpanCopier(passages, piece=vocab.__getitem__, is_end=lambda t: t == 0)
    ws.advance(1), ws.advance(8)
    assert ws.text == "Drop " and ws.choose([8, 2]) == 2  # whitespace after whitespace adds nothing (it would loop)
    # nothing copied yet: an end or a citation is not taken, and a passage of which no ranked token is a span ends it
    empty = SpanCopier(passages, piece=vocab.__getitem__, is_end=lambda t: t == 0)
    assert empty.choose([0, 5, 6]) is None and empty.citation() is None
    top = SpanCopier(passages, piece=vocab.__getitem__, is_end=lambda t: t == 0, top=2)
    assert top.choose([10, 6, 1]) is None and empty.choose([10, 6, 1]) == 1  # only the top 2 are tried


def test_quote_is_a_generation_setting_the_call_overrides():
    g = Generation.from_manifest({"max_new_tokens": 64, "quote": True})
    assert g.quote and not g.override(quote=False).quote and g.override().quote
    assert not Generation.from_manifest({"max_new_tokens": 64}).quote
