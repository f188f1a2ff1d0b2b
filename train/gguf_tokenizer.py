"""The tokenizer part of a GGUF: vocabulary, merges, the names llama.cpp picks its tokenizer by, special
tokens, the BOS rule and the chat template.

Tokenizer types (``tokenizer.ggml.model``):

* ``gpt2``: byte-level BPE (GPT-2, Llama 3, Qwen2/3, tiny); ``tokenizer.ggml.pre`` names llama.cpp's
  pre-tokenizer regex: ``gpt-2`` (never ``gpt2``, which llama.cpp rejects), ``llama-bpe``, ``qwen2``.
* ``llama``: sentencepiece-style BPE over ``▁``-spelled text with byte fallback (Gemma; Llama 2,
  Mistral <= v0.3, Phi-3). ``add_space_prefix`` says whether llama.cpp puts ``▁`` in front of text
  (it does so at the start and after every special token, like transformers' ``prepend_scheme:
  always``). transformers 5 rebuilds Llama-2-style tokenizers with ``prepend_scheme: first`` (only
  text at the very start of a string): a chat prompt starts with a special token, so that is written
  as ``false`` (chat prompts tokenize identically); plain text then lacks the leading ``▁`` in
  llama.cpp (tested; docs/train.md).

The BOS rule: ``add_bos_token`` is true exactly when training sequences start with BOS, i.e. when the
chat template renders BOS first. llama.cpp then adds BOS itself (plain text, llama-server strips the
template's own leading BOS, Ollama's TEMPLATE leaves it out), so every path sees BOS once.
"""

from __future__ import annotations

import json
import re
from typing import Any

from schemas.errors import ConfigError
from train.chat import strip_generation_markers


_parsed: dict[str, Any] = {}


def _spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's tokenizer.json, parsed (read only: the last text parsed is kept, as the writer reads it
    several times per file and a 262k-token vocabulary takes a second to parse)."""
    text = tokenizer.backend_tokenizer.to_str()
    if text not in _parsed:
        _parsed.clear()
        _parsed[text] = json.loads(text)
    return _parsed[text]


def _known_splits() -> dict[str, str]:
    """regex of a tokenizer.json Split pre-tokenizer -> llama.cpp pre-tokenizer name."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return {GGUF_PRE_TOKENIZER_SPLITS[name]: name for name in ("qwen2", "llama-bpe")}


def _parts(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not node:
        return []
    return list(node.get("pretokenizers") or node.get("normalizers") or []) if node.get("type") == "Sequence" else [node]


def _spm_prefix(spec: dict[str, Any]) -> bool | None:
    """For a sentencepiece-style BPE: whether llama.cpp must put ``▁`` in front of text (``add_space_prefix``);
    None when the tokenizer is not of that kind."""
    norm = _parts(spec.get("normalizer"))
    pre = _parts(spec.get("pre_tokenizer"))
    replaces = any(n.get("type") == "Replace" and n.get("content") == "\u2581" for n in norm)
    prepends = any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in norm)
    metaspace = next((p for p in pre if p.get("type") == "Metaspace"), None)
    if replaces:  # Gemma (no prefix) or the legacy Llama-2 normalizer (prefix on every piece of text)
        return prepends
    if metaspace is not None and metaspace.get("replacement") == "\u2581":
        return metaspace.get("prepend_scheme", "always") == "always"
    return None


def tokenizer_model(tokenizer: Any) -> str:
    """``tokenizer.ggml.model``: ``gpt2`` (byte-level BPE) or ``llama`` (sentencepiece-style BPE)."""
    spec = _spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ConfigError("GGUF export supports BPE tokenizers only", received=f"tokenizer model {model.get('type')}",
                          fix="use a base model with a byte-level BPE (Llama 3, Qwen) or sentencepiece-style BPE "
                              "(Gemma, Mistral, Phi-3) tokenizer")
    if model.get("byte_fallback") and _spm_prefix(spec) is not None:
        return "llama"
    return "gpt2"


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    if tokenizer_model(tokenizer) == "llama":
        return "default"  # sentencepiece vocabularies have no pre-tokenizer regex
    pre = _spec(tokenizer).get("pre_tokenizer") or {}
    parts = _parts(pre)
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name; "gpt2" is rejected
    for part in parts:
        if part.get("type") == "Split":
            regex = part.get("pattern", {}).get("Regex")
            if regex in _known_splits():
                return _known_splits()[regex]
    raise ConfigError("GGUF export: unknown pre-tokenizer", received=json.dumps(pre)[:300],
                      expected="GPT-2 byte-level, Llama-3 or Qwen2 splitting",
                      fix="add its llama.cpp name to _known_splits() in train/gguf_tokenizer.py")


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def tokenizer_metadata(tokenizer: Any, *, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, scores (sentencepiece style only), merges and the pre-tokenizer name, padded
    to the model's vocabulary size.

    Sentencepiece style is written the way llama.cpp's converter writes Gemma: ``<0xNN>`` byte tokens
    typed BYTE (score 0), control and user-defined tokens score -1000, runs of two or more ``▁``
    spelled as real spaces and typed USER_DEFINED (transformers' Gemma reader respells them back), and
    normal tokens score ``-id`` (BPE ids follow merge order, the priority llama.cpp merges by). The
    merges are written too, so transformers rebuilds exactly the training tokenizer instead of deriving
    merges from the vocabulary (llama.cpp ignores them for this tokenizer type).
    """
    import gguf

    kind = tokenizer_model(tokenizer)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_tokens)
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        score = -1000.0
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in special or (tok in added and added[tok].special):
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL)
        elif tok in added:
            tokens.append(tok)
            types.append(gguf.TokenType.USER_DEFINED)
        elif kind == "llama" and _BYTE_TOKEN.match(tok):
            tokens.append(tok)
            types.append(gguf.TokenType.BYTE)
            score = 0.0
        elif kind == "llama" and len(tok) > 1 and set(tok) == {"\u2581"}:
            tokens.append(" " * len(tok))
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
            score = -float(i)
        scores.append(score)
    spec = _spec(tokenizer)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"model": kind, "tokens": tokens, "types": types, "scores": scores if kind == "llama" else None,
            "merges": merges, "pre": pre_tokenizer_name(tokenizer),
            "add_space_prefix": bool(_spm_prefix(spec)) if kind == "llama" else None}


_PROBE = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def starts_with_bos(tokenizer: Any, template: str | None) -> bool:
    """Whether training sequences start with BOS: the chat template renders it first (or, with no template,
    the tokenizer adds it to plain text). This is ``tokenizer.ggml.add_bos_token``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    if template:
        ids = tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer("a")["input_ids"]
    return bool(ids) and int(ids[0]) == int(bos)


def end_of_turn_token(tokenizer: Any, template: str | None) -> int | None:
    """The first special token after an assistant message in the rendered template (``<|im_end|>``,
    ``<end_of_turn>``, ``<|eot_id|>``, ``<|end|>``): ``tokenizer.ggml.eot_token_id``, which llama.cpp stops at."""
    if not template:
        return None
    sentinel = "zqxsentinelzqx"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": sentinel}],
                                         chat_template=template, tokenize=False)
    tail = text[text.rindex(sentinel) + len(sentinel):]
    special = set(tokenizer.all_special_ids)
    return next((i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special), None)


def check_name(name: str, tokenizer: Any) -> None:
    """llama.cpp changes tokenization by ``general.name``: a name containing ``phi3``/``phi-3`` makes it strip
    whitespace after every special token but ``<unk>``/``<s>``/``<|endoftext|>`` (what Phi-3's own tokenizer
    does) and requires ``<|endoftext|>`` (``llama-vocab.cpp``). Refuse such a name unless the tokenizer does
    exactly that, so the file never tokenizes differently from training."""
    lowered = name.lower()
    if "phi3" not in lowered and "phi-3" not in lowered:
        return
    keep = {"<unk>", "<s>", "<|endoftext|>"}
    special = [t for t in tokenizer.added_tokens_decoder.values() if t.special]
    wrong = [t.content for t in special if bool(t.rstrip) != (t.content not in keep)]
    if "<|endoftext|>" not in tokenizer.get_vocab() or wrong:
        raise ConfigError("GGUF export: llama.cpp tokenizes a model named like Phi-3 differently (it strips whitespace "
                          "after special tokens), and this tokenizer does not",
                          received=f"name {name!r}; special tokens without that stripping: {wrong[:5]}",
                          fix="choose a model_name without 'phi3' / 'phi-3'")


def write_tokenizer(w, tokenizer: Any, *, vocab_size: int, template: str | None) -> dict[str, Any]:
    """Every ``tokenizer.*`` key; returns what was decided (pre-tokenizer, BOS rule, end of turn)."""
    tok = tokenizer_metadata(tokenizer, vocab_size=vocab_size)
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if tok["scores"] is not None:
        w.add_token_scores(tok["scores"])
        w.add_add_space_prefix(tok["add_space_prefix"])
    w.add_token_merges(tok["merges"])
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("pad_token_id", w.add_pad_token_id), ("unk_token_id", w.add_unk_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    add_bos = starts_with_bos(tokenizer, template)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    eot = end_of_turn_token(tokenizer, template)
    if eot is not None and eot != tokenizer.eos_token_id:
        w.add_eot_token_id(int(eot))
    if template:
        w.add_chat_template(strip_generation_markers(template))
    return {"pre_tokenizer": tok["pre"], "tokenizer_model": tok["model"], "add_bos_token": add_bos,
            "add_space_prefix": tok["add_space_prefix"], "end_of_turn_token_id": eot}
