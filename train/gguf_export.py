"""Write a Hugging Face causal LM + its tokenizer as GGUF, directly with the ``gguf`` package.

llama.cpp's converter script does not run against the PyPI ``gguf`` and rejects locally trained
BPE tokenizers, so we write the file ourselves:

1. architecture hyper-parameters (one small function per architecture: Llama, Qwen2; Gemma 3
   would add its own function plus an entry in ``ARCHITECTURES``),
2. the tokenizer: byte-level BPE tokens, merges, token types, special token ids, the
   pre-tokenizer name llama.cpp expects (``gpt-2``, never ``gpt2``), and the chat template with
   its ``{% generation %}`` markers stripped,
3. tensors renamed with gguf's own name map; Llama's q/k projections permuted to llama.cpp's
   rotary layout; 2-D weights as F16 / Q8_0 (``gguf.quants``) / Q4_0 (same format, scale chosen
   by a small error search, see ``quantize_q4_0``); norms and biases in F32. Q4_0 files keep
   ``token_embd`` and ``output`` in Q8_0 (llama.cpp keeps the output at higher precision too; its
   Q6_K choice needs k-quants, which the numpy quantisers do not provide).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import ConfigError
from schemas.io import atomic_path
from train.chat import strip_generation_markers

def _known_splits() -> dict[str, str]:
    """regex of a tokenizer.json Split pre-tokenizer -> llama.cpp pre-tokenizer name."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names = {}
    for name in ("qwen2", "llama-bpe"):  # the names llama.cpp uses for these two families
        names[GGUF_PRE_TOKENIZER_SPLITS[name]] = name
    return names


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {}).get("type")
    if model != "BPE":
        raise ConfigError("GGUF export supports byte-level BPE tokenizers only", received=f"tokenizer model {model}",
                          fix="use a base model with a byte-level BPE tokenizer (Llama 3, Qwen2, or tiny)")
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name; "gpt2" is rejected
    for part in parts:
        if part.get("type") == "Split":
            regex = part.get("pattern", {}).get("Regex")
            if regex in _known_splits():
                return _known_splits()[regex]
    raise ConfigError("GGUF export: unknown pre-tokenizer", received=json.dumps(pre)[:300],
                      expected="GPT-2 byte-level, Llama-3 or Qwen2 splitting",
                      fix="add its llama.cpp name to _known_splits() in train/gguf_export.py")


def tokenizer_metadata(tokenizer: Any, *, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, merges and special ids, padded to the model's vocabulary size."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_tokens)
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in special or (tok in added and added[tok].special):
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL)
        elif tok in added:
            tokens.append(tok)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_tokenizer_name(tokenizer)}


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise ConfigError("GGUF export: rope scaling is not supported", received=rope_type,
                          fix="export a model without rope_scaling")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _common_kv(w, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(config.vocab_size)


def _permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half layout -> llama.cpp's interleaved layout (as convert_hf_to_gguf.py does)."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _llama_tensor(name: str, data: np.ndarray, config: Any) -> np.ndarray:
    if name.endswith("self_attn.q_proj.weight"):
        return _permute_qk(data, config.num_attention_heads)
    if name.endswith("self_attn.k_proj.weight"):
        return _permute_qk(data, config.num_key_value_heads)
    return data


def _identity_tensor(name: str, data: np.ndarray, config: Any) -> np.ndarray:
    return data


#: model_type -> (gguf arch, hyper-parameter writer, per-tensor transform)
ARCHITECTURES: dict[str, tuple[str, Callable, Callable]] = {
    "llama": ("LLAMA", _common_kv, _llama_tensor),
    "qwen2": ("QWEN2", _common_kv, _identity_tensor),
}

FILE_TYPES = {"F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}


#: candidate divisors of a block's signed max-abs value for the Q4_0 scale search (the reference
#: quantiser uses only -8, mapping that value to the grid end)
_Q4_0_DIVISORS = np.concatenate([np.arange(-9.0, -5.99, 0.25), np.arange(6.0, 8.01, 0.25)]).astype(np.float32)


def quantize_q4_0(data: np.ndarray, *, chunk: int = 1 << 16) -> np.ndarray:
    """Q4_0 bytes with a per-block scale chosen to minimise squared error.

    Same format as ``gguf.quants.quantize(..., Q4_0)`` (fp16 scale + 32 4-bit values per block,
    decoded as ``(q - 8) * d`` by every GGUF reader); only the choice of ``d`` differs: we try a
    grid of scales per block instead of always mapping the largest value to -8, which lowers the
    rounding error (measured in tests/train/test_gguf_quant.py).
    """
    shape = data.shape
    blocks = data.reshape(-1, 32).astype(np.float32)
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    for start in range(0, len(blocks), chunk):
        b = blocks[start:start + chunk]
        mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
        best_d = np.zeros(len(b), dtype=np.float32)
        best_err = np.full(len(b), np.inf, dtype=np.float32)
        for div in _Q4_0_DIVISORS:
            d = (mx / div).astype(np.float16).astype(np.float32)
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
            q = np.clip(np.round(b * inv[:, None]), -8, 7)
            err = ((q * d[:, None] - b) ** 2).sum(axis=1)
            better = err < best_err
            best_err[better], best_d[better] = err[better], d[better]
        inv = np.divide(1.0, best_d, out=np.zeros_like(best_d), where=best_d != 0)
        q = (np.clip(np.round(b * inv[:, None]), -8, 7) + 8).astype(np.uint8)
        out[start:start + chunk, :2] = best_d.astype(np.float16)[:, None].view(np.uint8)
        out[start:start + chunk, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.reshape(*shape[:-1], shape[-1] // 32 * 18)


def _encode_tensor(name: str, data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """(array, raw dtype) of one tensor: 1-D in F32; 2-D in the file's type (Q4_0 files keep the
    output projection in Q8_0, as llama.cpp does when k-quants are unavailable); rows that are not a
    multiple of the 32-value block fall back to F16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if data.ndim == 1:
        return data.astype(np.float32), Q.F32
    qtype = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0}[quant]
    if quant == "Q4_0" and name in ("output.weight", "token_embd.weight"):
        qtype = Q.Q8_0
    if qtype == Q.F16:
        return data.astype(np.float16), Q.F16
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), Q.F16
    if qtype == Q.Q4_0:
        return quantize_q4_0(data), qtype
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(model: Any, tokenizer: Any, path: Path, *, quant: str, name: str,
               chat_template: str | None = None) -> dict[str, Any]:
    """Write ``model`` (a merged, non-PEFT HF causal LM) + ``tokenizer`` to ``path``; returns a summary."""
    import gguf

    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise ConfigError("GGUF export: unsupported architecture", received=config.model_type,
                          expected=", ".join(ARCHITECTURES),
                          fix="add a hyper-parameter writer for it to ARCHITECTURES in train/gguf_export.py")
    arch_name, write_kv, transform = ARCHITECTURES[config.model_type]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    tensor_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tok = tokenizer_metadata(tokenizer, vocab_size=config.vocab_size)
    template = chat_template if chat_template is not None else tokenizer.chat_template

    counts: dict[str, int] = {}
    with atomic_path(path, suffix=".gguf") as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        w.add_name(name)
        w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
        write_kv(w, config)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                          ("pad_token_id", w.add_pad_token_id), ("unk_token_id", w.add_unk_token_id)):
            value = getattr(tokenizer, attr, None)
            if value is not None:
                add(int(value))
        w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
        w.add_add_eos_token(False)
        if template:
            w.add_chat_template(strip_generation_markers(template))
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp ties output to token_embd when output.weight is absent
            new = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new is None:
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                raise ConfigError("GGUF export: no GGUF name for a tensor", received=hf_name,
                                  fix="extend the architecture entry in train/gguf_export.py")
            data = transform(hf_name, tensor.detach().float().cpu().numpy(), config)
            data, qtype = _encode_tensor(new, data, quant)
            w.add_tensor(new, data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"file": path.name, "bytes": path.stat().st_size, "tensor_types": counts, "pre_tokenizer": tok["pre"]}
