"""One chat template: assistant-only labels, the end-of-turn check, the stripped template."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError, StageError
from train.chat import (CHATML_TEMPLATE, IM_END, check_end_of_turn_trained, check_template, encode_example,
                        end_of_turn_id, strip_generation_markers, train_bpe_tokenizer)

TEXTS = ["The tracking API listens on port 8443.", "Rotate the key in the vault, then redeploy the gateway."] * 20
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which port?"},
        {"role": "assistant", "content": "Port 8443."}, {"role": "user", "content": "And TLS?"},
        {"role": "assistant", "content": "Yes, TLS."}]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=400)


def test_labels_cover_exactly_the_assistant_turns_and_their_end_of_turn(tok):
    enc = encode_example(tok, CONV, max_length=10_000)
    trained = tok.decode([t for t in enc["labels"] if t != -100])
    assert trained == "Port 8443.<|im_end|>Yes, TLS.<|im_end|>"
    eot = end_of_turn_id(tok)
    assert tok.convert_ids_to_tokens([eot]) == [IM_END]
    assert check_end_of_turn_trained([enc], eot_id=eot, tokenizer=tok) == 1


def test_end_of_turn_outside_the_generation_block_is_caught(tok):
    bad = CHATML_TEMPLATE.replace("{{ '<|im_end|>' }}{% endgeneration %}", "{% endgeneration %}{{ '<|im_end|>' }}")
    assert bad != CHATML_TEMPLATE
    tok2 = train_bpe_tokenizer(TEXTS, vocab_size=400, chat_template=bad)
    enc = encode_example(tok2, CONV, max_length=10_000)
    eot = tok2.convert_tokens_to_ids(IM_END)
    with pytest.raises(StageError, match="end-of-turn token is not among the trained tokens"):
        check_end_of_turn_trained([enc], eot_id=eot, tokenizer=tok2)


def test_template_without_generation_markers_is_rejected(tok):
    tok2 = train_bpe_tokenizer(TEXTS, vocab_size=400, chat_template=strip_generation_markers(CHATML_TEMPLATE))
    with pytest.raises(ConfigError, match="no \\{% generation %\\} markers"):
        check_template(tok2, where="test")


def test_stripped_template_renders_identically(tok):
    tok2 = train_bpe_tokenizer(TEXTS, vocab_size=400, chat_template=strip_generation_markers(CHATML_TEMPLATE))
    assert "{% generation %}" not in tok2.chat_template and "endgeneration" not in tok2.chat_template
    for msgs, gen in ((CONV, False), (CONV[:-1], True)):
        ids = [t.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)["input_ids"]
               for t in (tok, tok2)]
        assert ids[0] == ids[1]
