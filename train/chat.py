"""One chat template, everywhere: tokenizer building, rendering with an assistant mask, the
end-of-turn check, and the probe conversations every tokenizer check renders (train/verify.py: in llama.cpp).

The template wraps each assistant turn *and its end-of-turn token* in ``{% generation %}``
markers, so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks exactly the
tokens the model must learn to produce, including the token that stops generation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.errors import ConfigError, StageError

BOS = "<s>"
PAD = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, IM_END]

#: ChatML with generation markers around the assistant content and its end-of-turn token.
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Gemma's turn format (``<start_of_turn>user`` / ``<start_of_turn>model``) with generation markers around the
#: answer and its end-of-turn tokens; the tiny ``gemma3`` base model uses it (a real Gemma base sets its own).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\\n' }}{% generation %}{{ message['content'] | trim }}{{ '<end_of_turn>' }}{{ eos_token }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>user\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

_GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")

#: conversations with awkward text (unicode, digits, whitespace runs, template-like braces) that
#: conversations the tokenizer check in llama.cpp (train/verify.py) renders besides held-out rows
PARITY_PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"}],
    [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "  Größe: 42 °C?\tTabs\n\nand   spaces  "},
        {"role": "assistant", "content": "Café — naïve {{ braces }} 1234567 😀 done."},
    ],
]


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and "{% generation %}" in re.sub(r"\{%-?\s*generation\s*-?%\}", "{% generation %}", template)


def strip_generation_markers(template: str) -> str:
    """The template without ``{% generation %}``/``{% endgeneration %}`` (for GGUF, Ollama, llama.cpp)."""
    return _GENERATION_TAG.sub("", template)


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int, chat_template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer (GPT-2 pre-tokenizer) trained on ``texts``, with ChatML specials.

    The GPT-2 pre-tokenizer is what a GGUF with ``tokenizer.ggml.pre = "gpt-2"`` is rebuilt with
    (by llama.cpp and by transformers), so the exported tokenizer tokenizes identically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
        additional_special_tokens=[IM_START], chat_template=chat_template,
    )


def train_gemma_tokenizer(texts: Iterable[str], *, vocab_size: int, chat_template: str = GEMMA_TEMPLATE):
    """A Gemma-style tokenizer trained on ``texts``: sentencepiece-like BPE over ``▁``-spelled text with
    byte fallback (``<0x00>``..``<0xFF>``), Gemma's special tokens at ids 0-6, wrapped in transformers'
    ``GemmaTokenizer`` -- the same shape as the real Gemma 3 tokenizer, so the GGUF path of a real Gemma
    base model (``tokenizer.ggml.model = llama``) is exercised by tiny models too.
    """
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    # merges stay inside "▁word" pieces, as sentencepiece learns them
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=GEMMA_SPECIAL_TOKENS + byte_tokens)
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges, chat_template=chat_template,
                          additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def check_template(tokenizer: Any, *, where: str) -> None:
    """Fail early unless the template marks assistant turns (``{% generation %}``)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(f"{where}: the tokenizer has no chat template",
                          fix="set 'chat_template:' on the base_model step (with {% generation %} markers)")
    if not has_generation_markers(template):
        raise ConfigError(
            f"{where}: the chat template has no {{% generation %}} markers, so assistant tokens cannot be masked",
            received=template[:200] + ("…" if len(template) > 200 else ""),
            expected="assistant content and end-of-turn token wrapped in {% generation %}...{% endgeneration %}",
            fix="set 'chat_template:' on the base_model step to a template with generation markers",
        )


def _trained_turn(tokenizer: Any) -> list[int]:
    """The trained (``{% generation %}``) token ids of a one-letter assistant turn."""
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    enc = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Every token that may end an assistant turn: the special tokens the template writes after the answer
    (Gemma: ``<end_of_turn>`` and ``<eos>``; ChatML: ``<|im_end|>``), including added tokens marked special, and EOS."""
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    special = set(tokenizer.all_special_ids) | added
    return {i for i in _trained_turn(tokenizer) if i in special} | (
        {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set())


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: the first special token of the rendered assistant turn's tail."""
    trained = _trained_turn(tokenizer)
    special = set(tokenizer.all_special_ids)
    tail = [i for i in trained if i in special]
    if tail:
        return tail[-1]
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ConfigError("cannot tell the end-of-turn token: the template's generation block has no special token",
                      fix="put the end-of-turn token (e.g. <|im_end|>) inside {% generation %}...{% endgeneration %}")


def encode_example(tokenizer: Any, messages: Sequence[dict[str, str]], *, max_length: int) -> dict[str, Any]:
    """input_ids + labels (-100 outside assistant turns), truncated to ``max_length``."""
    enc = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    truncated = len(ids) > max_length
    ids, mask = ids[:max_length], mask[:max_length]
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def check_end_of_turn_trained(encoded: Sequence[dict[str, Any]], *, eot_id: int, tokenizer: Any) -> int:
    """Every untruncated example must train its end-of-turn token; returns how many rows were checked."""
    checked = 0
    for row in encoded:
        if row["truncated"]:
            continue
        checked += 1
        if eot_id not in row["labels"]:
            raise StageError(
                "the end-of-turn token is not among the trained tokens, so the tuned model would never stop",
                received=f"trained tokens end with {tokenizer.convert_ids_to_tokens([t for t in row['labels'] if t != -100][-3:])}",
                expected=f"{tokenizer.convert_ids_to_tokens([eot_id])[0]!r} inside the {{% generation %}} block",
                fix="move the end-of-turn token inside {% generation %}...{% endgeneration %} in the chat template",
            )
    return checked


def prompt_and_reference(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """Split a conversation at its last assistant turn: (prompt messages, reference answer)."""
    msgs = list(messages)
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i]["role"] == "assistant":
            return msgs[:i], msgs[i]["content"]
    return None
