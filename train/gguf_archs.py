"""Architecture hyper-parameters and tensor layouts for GGUF, one small entry per Hugging Face ``model_type``.

Each entry names the GGUF architecture llama.cpp runs the model as, writes the hyper-parameters llama.cpp
reads for it (as llama.cpp's own converter writes them), transforms tensors whose layout differs, and
adds the tensors llama.cpp derives rope scaling from. A setting llama.cpp cannot carry is refused with
the setting named, never exported into a file that computes something else (each checked against
llama.cpp's logits in tests/train/test_archs.py):

* ``llama`` / ``mistral`` -> ``llama``: q/k rows permuted to llama.cpp's rotary layout; rope scaling
  ``linear`` and ``llama3`` written as per-dimension ``rope_freqs`` (the ratio of transformers' own
  unscaled to scaled inverse frequencies); tied or untied output. llama.cpp's ``llama`` has no sliding
  window: a Mistral window shorter than the context is written as the context length (within it, full
  attention is the window).
* ``qwen2`` (q/k/v biases), ``qwen3`` (q/k RMS norms): rotate-half rope, nothing permuted.
* ``gemma2`` / ``gemma3_text``: norms stored as ``1 + w``; soft-capping, sliding window and the layer
  pattern written; llama.cpp scales queries by ``1/sqrt(head_dim)`` (``n_embd/n_head`` for the 27B
  shapes), so ``query_pre_attn_scalar`` must match that.
* ``phi3``: fused ``qkv_proj`` / ``gate_up_proj`` kept fused (llama.cpp's layout); ``longrope``/``su``
  written as ``rope_factors_long``/``_short`` + the attention factor. llama.cpp disables Phi-3's sliding
  window, so, as for Mistral, a shorter window becomes the context length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import ConfigError


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_params(config: Any) -> dict[str, Any]:
    """transformers 5's ``rope_parameters`` (per layer type for Gemma) of the full-attention layers."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    return dict(params.get("full_attention", params))


def _refuse(arch: str, key: str, value: Any, expected: Any, why: str) -> ConfigError:
    return ConfigError(f"GGUF export ({arch}): {key} cannot be carried into llama.cpp ({why})",
                       received=value, expected=expected,
                       fix="export a model with that setting, or add its llama.cpp equivalent in train/gguf_archs.py")


def _inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def context_length(config: Any) -> tuple[int, str | None]:
    """The context length to declare, and why it is shorter than ``max_position_embeddings`` (or None).

    Used for architectures whose llama.cpp graph has no sliding window (``llama``; ``phi3``, where llama.cpp
    turns it off): full attention over at most ``sliding_window`` tokens is exactly the window."""
    window = getattr(config, "sliding_window", None)
    ctx = int(config.max_position_embeddings)
    if getattr(config, "use_sliding_window", True) and window and int(window) < ctx:
        return int(window), (f"sliding_window {window} < max_position_embeddings {ctx}: llama.cpp runs this "
                             "architecture with full attention, which equals the window up to that length")
    return ctx, None


def _block_kv(w, config: Any, *, ctx: int | None = None) -> None:
    """Hyper-parameters every supported architecture writes the same way."""
    hd = head_dim(config)
    w.add_context_length(ctx or config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(config.vocab_size)


def _rope_kv(w, config: Any, arch: str, *, allowed: tuple[str, ...]) -> None:
    params = rope_params(config)
    kind = params.get("rope_type") or "default"
    if kind not in allowed:
        raise _refuse(arch, "rope_parameters.rope_type", kind, " or ".join(allowed), "no equivalent written here")
    rot = int(head_dim(config) * float(params.get("partial_rotary_factor", 1.0)))
    w.add_rope_freq_base(float(params.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(rot)
    if kind == "linear" and arch != "llama":  # llama writes rope_freqs instead (below)
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(params["factor"]))


def _llama_kv(w, config: Any) -> None:
    ctx, _ = context_length(config)
    _block_kv(w, config, ctx=ctx)
    _rope_kv(w, config, "llama", allowed=("default", "linear", "llama3"))


def _llama_extra(config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """``rope_freqs``: per rotary dimension pair, unscaled / scaled inverse frequency -- llama.cpp divides its
    rotation angle by it. Taken from transformers' own rope functions, so it is what the model computed."""
    params = rope_params(config)
    kind = params.get("rope_type") or "default"
    if kind == "default":
        return
    if kind not in ("linear", "llama3"):
        raise _refuse("llama", "rope_parameters.rope_type", kind, "default, linear or llama3", "no equivalent written here")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, attention = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    if abs(float(attention) - 1.0) > 1e-6:
        raise _refuse("llama", "rope attention scaling", attention, 1.0, "llama.cpp's llama graph has none")
    base = _inv_freq(float(params.get("rope_theta", 10000.0)), head_dim(config))
    yield "rope_freqs.weight", (base / scaled.double().numpy()).astype(np.float32)


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


def _not_qk(name: str) -> bool:
    return not name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight"))


def _identity_tensor(name: str, data: np.ndarray, config: Any) -> np.ndarray:
    return data


def _no_extra(config: Any) -> Iterator[tuple[str, np.ndarray]]:
    return iter(())


def _qwen_kv(arch: str) -> Callable:
    def write(w, config: Any) -> None:
        if getattr(config, "use_sliding_window", False):
            raise _refuse(arch, "use_sliding_window", True, False, "llama.cpp's qwen graphs have no sliding window")
        _block_kv(w, config)
        _rope_kv(w, config, arch, allowed=("default", "linear"))
    return write


def _gemma_checks(config: Any, arch: str) -> None:
    """Settings llama.cpp's gemma graphs hard-code (``src/models/gemma2.cpp``, ``gemma3.cpp``)."""
    scalar = config.hidden_size / config.num_attention_heads if config.num_hidden_layers in (46, 62) else head_dim(config)
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention") or {}
    checks = {
        "query_pre_attn_scalar": (config.query_pre_attn_scalar, scalar),
        "hidden_activation": (config.hidden_activation, "gelu_pytorch_tanh"),
        "attention_bias": (bool(config.attention_bias), False),
        "use_bidirectional_attention": (bool(getattr(config, "use_bidirectional_attention", False)), False),
        "rope_parameters.sliding_attention.rope_type": (local.get("rope_type", "default"), "default"),
    }
    if arch == "gemma3":
        checks["attn_logit_softcapping"] = (config.attn_logit_softcapping, None)
    for key, (value, expected) in checks.items():
        if value != expected:
            raise _refuse(arch, key, value, expected, "llama.cpp hard-codes it for this architecture")


def _swa_pattern(w, config: Any) -> None:
    w.add_sliding_window(int(config.sliding_window))
    w.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])


def _gemma2_kv(w, config: Any) -> None:
    _gemma_checks(config, "gemma2")
    _block_kv(w, config)
    _rope_kv(w, config, "gemma2", allowed=("default",))
    w.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
    w.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
    _swa_pattern(w, config)


def _gemma3_kv(w, config: Any) -> None:
    """Gemma 3 (text): the per-layer sliding/full pattern and the local rope base are written (llama.cpp
    reads both), besides what llama.cpp's converter writes."""
    _gemma_checks(config, "gemma3")
    params = getattr(config, "rope_parameters", None) or {}
    full, local = params.get("full_attention") or params, params.get("sliding_attention") or {}
    if (full.get("rope_type") or "default") not in ("default", "linear"):
        raise _refuse("gemma3", "rope_parameters.full_attention.rope_type", full.get("rope_type"), "default or linear",
                      "no equivalent written here")
    _block_kv(w, config)
    w.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
    if (full.get("rope_type") or "default") == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(full["factor"]))
    w.add_rope_freq_base_swa(float(local.get("rope_theta", 10000.0)))
    if config.final_logit_softcapping:
        w.add_final_logit_softcapping(float(config.final_logit_softcapping))
    _swa_pattern(w, config)


def _gemma_tensor(name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """Gemma's RMSNorm multiplies by ``1 + weight``; GGUF stores ``1 + weight`` (llama.cpp multiplies by the
    stored value, transformers' reader subtracts 1 again). The embedding scale sqrt(hidden_size) is applied
    by both readers, so token_embd stays as is."""
    if name.endswith("norm.weight"):
        return data + 1.0
    return data


def _phi3_kv(w, config: Any) -> None:
    params = rope_params(config)
    kind = params.get("rope_type") or "default"
    ctx, _ = context_length(config)
    _block_kv(w, config, ctx=ctx)
    _rope_kv(w, config, "phi3", allowed=("default", "longrope", "su"))
    original = params.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", None)
    w.add_rope_scaling_orig_ctx_len(int(original or config.max_position_embeddings))
    if kind in ("longrope", "su"):
        scale = config.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
    w.add_sliding_window(0)  # llama.cpp disables Phi-3's window; the context length carries it (above)


def _phi3_extra(config: Any) -> Iterator[tuple[str, np.ndarray]]:
    params = rope_params(config)
    if (params.get("rope_type") or "default") in ("longrope", "su"):
        if params.get("attention_factor") is not None:
            raise _refuse("phi3", "rope_parameters.attention_factor", params["attention_factor"], None,
                          "llama.cpp derives it from the context lengths")
        yield "rope_factors_long.weight", np.asarray(params["long_factor"], dtype=np.float32)
        yield "rope_factors_short.weight", np.asarray(params["short_factor"], dtype=np.float32)


@dataclass(frozen=True)
class Arch:
    gguf: str  #: gguf.MODEL_ARCH member name
    write_kv: Callable[[Any, Any], None]
    transform: Callable[[str, np.ndarray, Any], np.ndarray]
    extra: Callable[[Any], Iterator[tuple[str, np.ndarray]]] = _no_extra
    #: whether ``transform`` of a block of rows is that block of the transformed tensor (so big tensors can be
    #: converted a block of rows at a time); False for Llama's q/k, whose rows are permuted across heads
    row_local: Callable[[str], bool] = lambda name: True


#: Hugging Face model_type -> how it is written
ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("LLAMA", _llama_kv, _llama_tensor, _llama_extra, _not_qk),
    "mistral": Arch("LLAMA", _llama_kv, _llama_tensor, _llama_extra, _not_qk),
    "qwen2": Arch("QWEN2", _qwen_kv("qwen2"), _identity_tensor),
    "qwen3": Arch("QWEN3", _qwen_kv("qwen3"), _identity_tensor),
    "gemma2": Arch("GEMMA2", _gemma2_kv, _gemma_tensor),
    "gemma3_text": Arch("GEMMA3", _gemma3_kv, _gemma_tensor),
    "phi3": Arch("PHI3", _phi3_kv, _identity_tensor, _phi3_extra),
}


def architecture(config: Any) -> Arch:
    if config.model_type not in ARCHITECTURES:
        raise ConfigError("GGUF export: unsupported architecture", received=config.model_type,
                          expected=", ".join(ARCHITECTURES),
                          fix="add an entry for it to ARCHITECTURES in train/gguf_archs.py")
    return ARCHITECTURES[config.model_type]
