"""Write a Hugging Face causal LM + its tokenizer as GGUF, directly with the ``gguf`` package.

llama.cpp's converter script does not run against the PyPI ``gguf`` and rejects locally trained
BPE tokenizers, so we write the file ourselves:

1. architecture hyper-parameters (one small function per architecture: Llama, Qwen2, Gemma 3
   text; a Gemma 3 model whose settings GGUF cannot carry is refused, see ``_gemma3_kv``),
2. the tokenizer: byte-level BPE (``gpt2``: tokens, merges, the pre-tokenizer name llama.cpp
   expects, ``gpt-2``, never ``gpt2``) or Gemma's sentencepiece-style BPE (``llama``: tokens,
   scores, byte tokens, merges), token types, special token ids, and the chat template with its
   ``{% generation %}`` markers stripped,
3. tensors renamed with gguf's own name map; Llama's q/k projections permuted to llama.cpp's
   rotary layout; Gemma's norm weights stored as ``1 + weight``; tied output weights omitted; 2-D weights as F16 / Q8_0 (``gguf.quants``) / Q4_0 (same format, scale chosen
   by a small error search, see ``quantize_q4_0``, or blocks rounded by GPTQ and passed in, see
   ``train.q4_calibrate``); norms and biases in F32. Q4_0 files keep
   ``token_embd`` and ``output`` in Q8_0 (llama.cpp keeps the output at higher precision too; its
   Q6_K choice needs k-quants, which the numpy quantisers do not provide).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
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


def tokenizer_model(tokenizer: Any) -> str:
    """``tokenizer.ggml.model`` for the tokenizer: ``gpt2`` (byte-level BPE: Llama 3, Qwen2, tiny) or
    ``llama`` (sentencepiece-style BPE over ``▁``-spelled text with byte fallback: Gemma)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ConfigError("GGUF export supports BPE tokenizers only", received=f"tokenizer model {model.get('type')}",
                          fix="use a base model with a byte-level BPE (Llama 3, Qwen2, tiny) or Gemma tokenizer")
    norm = spec.get("normalizer") or {}
    if model.get("byte_fallback") and norm.get("type") == "Replace" and norm.get("content") == "\u2581":
        return "llama"
    return "gpt2"


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    if tokenizer_model(tokenizer) == "llama":
        return "default"  # sentencepiece vocabularies have no pre-tokenizer regex
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
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


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def tokenizer_metadata(tokenizer: Any, *, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, scores (sentencepiece style only), merges and the pre-tokenizer name, padded
    to the model's vocabulary size.

    Sentencepiece style (Gemma) is written the way llama.cpp's converter writes Gemma: ``<0xNN>`` byte
    tokens typed BYTE (score 0), control and user-defined tokens score -1000, runs of two or more ``▁``
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
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return {"model": kind, "tokens": tokens, "types": types, "scores": scores if kind == "llama" else None,
            "merges": merges, "pre": pre_tokenizer_name(tokenizer)}


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise ConfigError("GGUF export: rope scaling is not supported", received=rope_type,
                          fix="export a model without rope_scaling")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _block_kv(w, config: Any, *, head_dim: int) -> None:
    """The transformer-block sizes every supported architecture writes the same way."""
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(config.vocab_size)


def _common_kv(w, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    _block_kv(w, config, head_dim=head_dim)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_rope_dimension_count(head_dim)


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


def _gemma3_kv(w, config: Any) -> None:
    """Gemma 3 (text) hyper-parameters, as llama.cpp's converter writes them.

    GGUF has no field for several Gemma 3 settings; llama.cpp and transformers' GGUF reader assume
    Gemma 3's published values for them, so a model that differs is refused here rather than exported
    into a file that computes something else: the sliding/full layer pattern (every 6th layer full),
    the local rope base (10000), query_pre_attn_scalar (transformers assumes 256, llama.cpp head_dim),
    no logit soft-capping, gelu-tanh, causal attention.
    """
    params = getattr(config, "rope_parameters", None) or {}
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    pattern = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(config.num_hidden_layers)]
    checks = {
        "layer_types": (list(config.layer_types), pattern),
        "rope_parameters.full_attention.rope_type": (full.get("rope_type", "default"), "default"),
        "rope_parameters.sliding_attention.rope_type": (local.get("rope_type", "default"), "default"),
        "rope_parameters.sliding_attention.rope_theta": (float(local.get("rope_theta", 10000.0)), 10000.0),
        "query_pre_attn_scalar": (config.query_pre_attn_scalar, 256),
        "head_dim": (config.head_dim, config.query_pre_attn_scalar),
        "final_logit_softcapping": (config.final_logit_softcapping, None),
        "attn_logit_softcapping": (config.attn_logit_softcapping, None),
        "hidden_activation": (config.hidden_activation, "gelu_pytorch_tanh"),
        "attention_bias": (bool(config.attention_bias), False),
        "use_bidirectional_attention": (bool(getattr(config, "use_bidirectional_attention", False)), False),
    }
    for key, (value, expected) in checks.items():
        if value != expected:
            raise ConfigError(f"GGUF export (gemma3): {key} differs from what GGUF readers assume for Gemma 3",
                              received=value, expected=expected,
                              fix="export a model with Gemma 3's standard settings (GGUF has no field for this one)")
    _block_kv(w, config, head_dim=config.head_dim)
    w.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
    w.add_sliding_window(config.sliding_window)


def _gemma3_tensor(name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """Gemma's RMSNorm multiplies by ``1 + weight``; GGUF stores ``1 + weight`` (llama.cpp multiplies by
    the stored value, transformers' reader subtracts 1 again). The embedding scale sqrt(hidden_size)
    is applied by both readers, so token_embd stays as is."""
    if name.endswith("norm.weight"):
        return data + 1.0
    return data


#: model_type -> (gguf arch, hyper-parameter writer, per-tensor transform)
ARCHITECTURES: dict[str, tuple[str, Callable, Callable]] = {
    "llama": ("LLAMA", _common_kv, _llama_tensor),
    "qwen2": ("QWEN2", _common_kv, _identity_tensor),
    "gemma3_text": ("GEMMA3", _gemma3_kv, _gemma3_tensor),
}

FILE_TYPES = {"F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}


#: candidate divisors of a block's signed max-abs value for the Q4_0 scale search (the reference
#: quantiser uses only -8, mapping that value to the grid end)
_Q4_0_DIVISORS = np.concatenate([np.arange(-9.0, -5.99, 0.25), np.arange(6.0, 8.01, 0.25)]).astype(np.float32)


def q4_0_scales(blocks: np.ndarray) -> np.ndarray:
    """Per-block Q4_0 scale (float32 holding an fp16 value) of ``blocks`` (n x 32), chosen to minimise the
    block's squared rounding error: a grid of candidate scales, then the best one refined by least squares
    (``d = Σ q·x / Σ q²``, re-rounded)."""
    b = blocks.astype(np.float32)
    mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
    best_d = np.zeros(len(b), dtype=np.float32)
    best_err = np.full(len(b), np.inf, dtype=np.float32)

    def consider(d: np.ndarray) -> None:
        d = d.astype(np.float16).astype(np.float32)
        q = q4_0_round(b, d)
        err = ((q * d[:, None] - b) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best_d[better] = err[better], d[better]

    for div in _Q4_0_DIVISORS:
        consider(mx / div)
    for _ in range(2):  # least-squares refinement of the best scale for its own rounding
        q = q4_0_round(b, best_d)
        den = (q * q).sum(axis=1)
        consider(np.divide((q * b).sum(axis=1), den, out=best_d.copy(), where=den > 0))
    return best_d


def q4_0_round(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The signed 4-bit values (-8..7, as float) of ``blocks`` (n x 32) for the scales ``d`` (n)."""
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    return np.clip(np.round(blocks * inv[:, None]), -8, 7)


def pack_q4_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (n x 18 bytes: fp16 scale, then 32 values as nibbles, decoded ``(nibble - 8) * d``) from
    signed values ``q`` (n x 32, -8..7) and scales ``d`` (n)."""
    u = (q + 8).astype(np.uint8)
    out = np.empty((len(q), 18), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16)[:, None].view(np.uint8)
    out[:, 2:] = u[:, :16] | (u[:, 16:] << 4)
    return out


def quantize_q4_0(data: np.ndarray, *, chunk: int = 1 << 16) -> np.ndarray:
    """Q4_0 bytes with a per-block scale chosen to minimise the squared error.

    Same format as ``gguf.quants.quantize(..., Q4_0)`` (fp16 scale + 32 4-bit values per block,
    decoded as ``(q - 8) * d`` by every GGUF reader); only the choice of ``d`` differs: we try a
    grid of scales per block instead of always mapping the largest value to -8, then refine the best
    one by least squares (``q4_0_scales``), which lowers the rounding error (measured in
    tests/train/test_gguf_quant.py). Weighting the error by activation statistics (llama.cpp's
    imatrix) was tried on the demo model and moved its logit noise by < 1 %, so it is not done.
    This rounds each weight on its own (``q4_calibration: none``); the export's default,
    ``train.q4_calibrate``, rounds with GPTQ on train-split activations instead.
    """
    shape = data.shape
    blocks = data.reshape(-1, 32).astype(np.float32)
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    for start in range(0, len(blocks), chunk):
        b = blocks[start:start + chunk]
        d = q4_0_scales(b)
        out[start:start + chunk] = pack_q4_0(q4_0_round(b, d), d)
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


def _starts_with_bos(tokenizer: Any, template: str | None) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ids = (tokenizer.apply_chat_template(probe, chat_template=template, tokenize=True, return_dict=True)["input_ids"]
           if template else tokenizer("a")["input_ids"])
    return bool(ids) and int(ids[0]) == int(bos)


def write_gguf(model: Any, tokenizer: Any, path: Path, *, quant: str, name: str,
               chat_template: str | None = None, q4_0_weights: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``model`` (a merged, non-PEFT HF causal LM) + ``tokenizer`` to ``path``; returns a summary.

    ``q4_0_weights`` (Q4_0 files only): Q4_0 bytes already rounded (``train.q4_calibrate``), by state-dict
    name, in the model's row order; written instead of rounding those weights here. The architecture
    transforms only permute the rows of 2-D weights, so they apply to rows of blocks alike.
    """
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
        w.add_tokenizer_model(tok["model"])
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        if tok["scores"] is not None:
            w.add_token_scores(tok["scores"])
            w.add_add_space_prefix(False)
        w.add_token_merges(tok["merges"])
        for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                          ("pad_token_id", w.add_pad_token_id), ("unk_token_id", w.add_unk_token_id)):
            value = getattr(tokenizer, attr, None)
            if value is not None:
                add(int(value))
        # BOS rule (as on h-archs, train/gguf_tokenizer.starts_with_bos): llama.cpp adds BOS exactly when training
        # sequences start with it, i.e. when the template renders it first; llama.cpp drops the template's own BOS
        w.add_add_bos_token(_starts_with_bos(tokenizer, template))
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
            if quant == "Q4_0" and q4_0_weights and hf_name in q4_0_weights:
                data, qtype = transform(hf_name, q4_0_weights[hf_name], config), gguf.GGMLQuantizationType.Q4_0
            else:
                data = transform(hf_name, tensor.detach().float().cpu().numpy(), config)
                data, qtype = _encode_tensor(new, data, quant)
            w.add_tensor(new, data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"file": path.name, "bytes": path.stat().st_size, "tensor_types": counts, "pre_tokenizer": tok["pre"]}
