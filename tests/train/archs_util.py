"""Tiny tokenizers of each family, tiny models of each architecture, and llama.cpp as the judge.

Tokenizers are trained here on the sample runbooks with ``tokenizers`` (offline), in the shape of the
real families: GPT-2 byte-level, Llama 3 (byte-level + its split regex, header/eot specials), Qwen
(byte-level + Qwen's regex, ChatML, no BOS), Gemma (sentencepiece-style BPE, no space prefix) and
Llama 2 / Mistral / Phi-3 (transformers' own ``LlamaTokenizer``: sentencepiece-style BPE, ``▁`` prefix).
Models are built from a config (random weights, no downloads); llama.cpp runs the exported file
through ``llama_cpp`` on the same token ids.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tests.train.conftest import FACTS, ROOT
from train.chat import PARITY_PROBES, train_bpe_tokenizer, train_gemma_tokenizer

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim }}<|eot_id|>{% endgeneration %}"
    "{% else %}{{ m['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN_TEMPLATE = (  # ChatML without BOS, as Qwen's
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
    "{{ eos_token }}{% endgeneration %}{% else %}[INST] {{ m['content'] }}[/INST]{% endif %}{% endfor %}"
)
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }}<|end|>{% endgeneration %}\n{% else %}{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def texts() -> list[str]:
    return [f.read_text() for f in sorted((ROOT / "data/sample/runbooks").glob("*.md"))]


def _split_regex(name: str) -> str:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return GGUF_PRE_TOKENIZER_SPLITS[name]


def _byte_level(split: str, specials: list[str], *, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_split_regex(split)), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def _spm(specials: list[str], template: str, *, vocab_size: int):
    """transformers 5's LlamaTokenizer (Llama 2, Mistral <= v0.3, Phi-3) over a vocabulary trained here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.train_from_iterator(texts(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>", *specials] + [f"<0x{i:02X}>" for i in range(256)]))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return LlamaTokenizer(vocab=model["vocab"], merges=merges, chat_template=template,
                          additional_special_tokens=specials)


@lru_cache(maxsize=None)
def tokenizer(family: str, vocab_size: int = 600):
    """A tiny tokenizer of ``family``: gpt2, llama3, qwen, gemma, mistral, phi3."""
    from transformers import PreTrainedTokenizerFast

    if family == "gpt2":
        return train_bpe_tokenizer(texts(), vocab_size=vocab_size)
    if family == "gemma":
        return train_gemma_tokenizer(texts(), vocab_size=vocab_size)
    if family == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        return PreTrainedTokenizerFast(tokenizer_object=_byte_level("llama-bpe", specials, vocab_size=vocab_size),
                                       bos_token=specials[0], eos_token=specials[1], chat_template=LLAMA3_TEMPLATE,
                                       additional_special_tokens=specials[2:])
    if family == "qwen":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        return PreTrainedTokenizerFast(tokenizer_object=_byte_level("qwen2", specials, vocab_size=vocab_size),
                                       eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN_TEMPLATE,
                                       additional_special_tokens=specials[1:2])
    if family == "mistral":
        return _spm(["[INST]", "[/INST]"], MISTRAL_TEMPLATE, vocab_size=vocab_size)
    if family == "phi3":
        return _spm(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], PHI3_TEMPLATE, vocab_size=vocab_size)
    raise ValueError(family)


#: tiny shapes shared by every architecture
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, initializer_range=0.1)


def build_model(arch: str, tok, *, seed: int = 0, **overrides: Any):
    """A randomly initialised model of ``arch`` (a transformers config class name prefix) for ``tok``."""
    import torch
    import transformers

    config_cls = getattr(transformers, f"{arch}Config")
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    config = config_cls(**{**BASE, **ids, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms and biases away from their init, so a missing +1 or bias would show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def conversations() -> list[list[dict[str, str]]]:
    facts = [[{"role": "system", "content": "Answer from the runbooks."}, {"role": "user", "content": q + "?"},
              {"role": "assistant", "content": a}] for q, a in FACTS[:3]]
    return facts + [list(c) for c in PARITY_PROBES]


def open_llama(path: Path, *, n_ctx: int = 256):
    from llama_cpp import Llama

    return Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, verbose=False)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


def kld(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(reference || candidate) per position, from logits."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    p, q = log_softmax(reference), log_softmax(candidate)
    return (np.exp(p) * (p - q)).sum(-1)


def compare(model, llm, ids: list[int]) -> dict[str, float]:
    a, b = hf_logits(model, ids), llama_logits(llm, ids)
    k = kld(a, b)
    return {"kld_mean": float(k.mean()), "kld_max": float(k.max()), "max_abs": float(np.abs(a - b).max()),
            "top1": float((a.argmax(-1) == b.argmax(-1)).mean()), "logit_std": float(a.std())}


def chat_ids(tok, conv, *, generation_prompt: bool = False) -> tuple[str, list[int]]:
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=generation_prompt)
    ids = tok.apply_chat_template(conv, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt)
    return text, list(ids["input_ids"])
