"""Exact per-channel rescaling of the merged model before it is written as GGUF (SmoothQuant, Xiao et al. 2023,
with AWQ's per-layer search of the exponent, Lin et al. 2024), so that llama.cpp's 8-bit rounding costs less.

llama.cpp multiplies a Q8_0 weight by its input rounded to 8 bits per 32 values (CPU: ``vec_dot_type`` Q8_0), so
a few large input channels widen the rounding step of every block they sit in. For each linear input that comes
out of a norm or out of another linear, dividing channel ``j`` of the input by ``s_j`` and multiplying column ``j``
of the weight by ``s_j`` changes nothing in exact arithmetic, and moves the outliers from the input into the
weight, where a rounding step is shared by fewer large values. Four places per decoder layer, each folded into
the tensor before it, so the file holds the same tensors and llama.cpp runs the same graph:

* q/k/v input: the attention norm's gain divided by ``s``, q/k/v columns multiplied;
* o input: v's rows divided by ``s`` (attention is linear in v; a kv head's scale is shared by its query heads);
* gate/up input: the MLP norm's gain divided, gate/up columns multiplied;
* down input: up's rows divided (``act(gate) * up`` is linear in up), down's columns multiplied.

``s_j = max|x_j|^a / max|W_:j|^(1-a)`` (SmoothQuant); per place, ``a`` is chosen from 0, 0.1, ..., 1 -- or no
scaling -- by the smallest squared error of the simulated Q8_0 product (weight and input both rounded as llama.cpp
rounds them) against the full-precision one, on train-split activations. The verification still judges every file
against the merged model itself, so a bad scale shows in the KLD table. The output layer is not rescaled: its
weight is the (tied) token embedding, whose columns feed the residual stream directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.errors import ConfigError

#: exponents tried per place; ``None`` (no scaling) is always a candidate too
GRID = tuple(i / 10 for i in range(11))
BLOCK = 32


@dataclass
class Smoothing:
    """Per-tensor scale vectors (float32, by state-dict name) and what the search chose."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)  # weight columns multiplied by
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # weight rows divided by
    gains: dict[str, np.ndarray] = field(default_factory=dict)  # norm gains divided by
    one_plus: bool = False  # the norm multiplies by 1 + weight (Gemma)
    chosen: dict[str, float | None] = field(default_factory=dict)  # place -> exponent (None: not scaled)
    error_ratio: dict[str, float] = field(default_factory=dict)  # place -> simulated error, chosen / unscaled
    tokens: int = 0
    check: dict[str, Any] | None = None  # whole-model check: rows, simulated Q8_0 KLD plain / smoothed
    kept: bool = True  # False: the check found the smoothed model no closer, so the file is written unscaled

    def apply(self, hf_name: str, block: np.ndarray, start: int) -> np.ndarray:
        """``block``: rows ``start:start + len(block)`` of tensor ``hf_name`` (float32, HF layout); returns it
        rescaled (a new array when anything changes)."""
        if hf_name in self.gains:
            g = self.gains[hf_name]
            return ((1.0 + block) / g - 1.0 if self.one_plus else block / g).astype(np.float32)
        out = block
        if hf_name in self.columns:
            out = out * self.columns[hf_name][None, :]
        if hf_name in self.rows:
            r = self.rows[hf_name][start:start + len(block)]
            out = out / (r if block.ndim == 1 else r[:, None])
        return out.astype(np.float32, copy=False)

    def summary(self) -> dict[str, Any]:
        kept = [a for a in self.chosen.values() if a is not None]
        ratios = list(self.error_ratio.values())
        return {"places": len(self.chosen), "scaled": len(kept), "tokens": self.tokens,
                "exponent_median": float(np.median(kept)) if kept else None,
                "simulated_error_ratio_median": float(np.median(ratios)) if ratios else None,
                "check": self.check, "kept": self.kept}


def q8_0(x):
    """``x`` (torch, last dim a multiple of 32) rounded as llama.cpp's Q8_0: per 32 values, scale max|x|/127 kept
    in fp16, values rounded to integers."""
    import torch

    b = x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
    return (torch.round(b / d.clamp(min=1e-30)) * d).reshape(x.shape)


def _scale(act, wmax, a: float):
    return (act.clamp(min=1e-5).pow(a) / wmax.clamp(min=1e-5).pow(1 - a)).clamp(min=1e-2, max=1e2)


def search_scale(x, weight, act, wmax, expand=None) -> tuple[Any, float | None, float]:
    """The scale (or None) with the smallest simulated Q8_0 error of ``x @ weight.T``; returns (scale, exponent,
    error ratio to the unscaled product). ``expand`` maps a scale to the weight's columns (GQA)."""
    ref = x @ weight.T

    def err(s) -> float:
        se = 1 if s is None else (s if expand is None else expand(s))
        return float(((q8_0(x / se) @ q8_0(weight * se).T - ref) ** 2).mean())

    base = err(None)
    best = (base, None, None)
    for a in GRID:
        s = _scale(act, wmax, a)
        e = err(s)
        if e < best[0]:
            best = (e, a, s)
    return best[2], best[1], (best[0] / base if base > 0 else 1.0)


def _places(model) -> list[dict[str, Any]]:
    """Per decoder layer: its norms and linears, or a ConfigError naming what is missing."""
    config = model.config
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError("export smooth: the model has no model.layers (decoder layers)",
                          received=type(model).__name__, fix="set smooth: false on the export step")
    out = []
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ffn_norm = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)
        need = {"self_attn.q_proj/k_proj/v_proj/o_proj": attn is not None and all(
                    hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
                "mlp.gate_proj/up_proj/down_proj": mlp is not None and all(
                    hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")),
                "input_layernorm": hasattr(layer, "input_layernorm"), "the MLP's norm": ffn_norm is not None}
        missing = [k for k, ok in need.items() if not ok]
        if missing:
            raise ConfigError(f"export smooth: {config.model_type} layers have no {', '.join(missing)} "
                              "(fused projections are not supported)",
                              received=config.model_type, fix="set smooth: false on the export step")
        out.append({"attn": attn, "mlp": mlp, "attn_norm": layer.input_layernorm, "ffn_norm": ffn_norm})
    return out


def smooth_for_q8(model, sequences: Sequence[Sequence[int]], *, max_tokens: int = 1024,
                  progress=None) -> Smoothing:
    """Search the scales on ``sequences`` (train-split token ids) run through ``model``'s decoder (not its output
    layer); ``max_tokens`` evenly spaced positions per place are kept for the search. ``progress(1)`` is called
    per decoder layer searched (the stage's progress bar)."""
    import torch

    places = _places(model)
    config = model.config
    names = {id(m): n for n, m in model.named_modules()}
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    total = sum(len(s) for s in sequences)
    stride = max(1, math.ceil(total / max_tokens))
    amax: dict[tuple[int, str], Any] = {}
    rows: dict[tuple[int, str], list] = {}

    def hook(key):
        def record(_module, inputs):
            flat = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            m = flat.abs().amax(0)
            amax[key] = torch.maximum(amax[key], m) if key in amax else m
            rows.setdefault(key, []).append(flat[::stride].clone())
        return record

    handles = []
    for i, p in enumerate(places):
        handles += [p["attn"].q_proj.register_forward_pre_hook(hook((i, "qkv"))),
                    p["attn"].o_proj.register_forward_pre_hook(hook((i, "o"))),
                    p["mlp"].gate_proj.register_forward_pre_hook(hook((i, "gate_up"))),
                    p["mlp"].down_proj.register_forward_pre_hook(hook((i, "down")))]
    try:
        with torch.no_grad():
            for ids in sequences:
                model.model(input_ids=torch.tensor([list(ids)]))
    finally:
        for h in handles:
            h.remove()

    sm = Smoothing(one_plus=config.model_type.startswith("gemma"), tokens=sum(len(r) for r in rows[(0, "qkv")]))
    w = lambda mod: names[id(mod)] + ".weight"  # noqa: E731

    def divide_rows(mod, s) -> None:  # the output channels of ``mod``: its weight's rows and its bias
        sm.rows[w(mod)] = s
        if getattr(mod, "bias", None) is not None:
            sm.rows[names[id(mod)] + ".bias"] = s
    group = heads // kv
    expand = lambda s: s.view(kv, 1, head_dim).expand(kv, group, head_dim).reshape(-1)  # noqa: E731
    with torch.no_grad():
        for i, p in enumerate(places):
            a, m = p["attn"], p["mlp"]
            x = lambda key: torch.cat(rows.pop((i, key)))  # noqa: E731
            # q/k/v: columns x s, the attention norm's gain / s
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).float()
            s = _search(sm, f"{i}.qkv", x("qkv"), qkv, amax[(i, "qkv")], qkv.abs().amax(0))
            if s is not None:
                for mod in (a.q_proj, a.k_proj, a.v_proj):
                    sm.columns[w(mod)] = s
                sm.gains[w(p["attn_norm"])] = s
            # o: columns x s (per kv channel, shared by its query heads), v's rows / s
            o = a.o_proj.weight.float()
            if o.shape[1] == heads * head_dim and a.v_proj.weight.shape[0] == kv * head_dim:
                act = amax[(i, "o")].view(kv, group, head_dim).amax(1).reshape(-1)
                wmax = o.abs().amax(0).view(kv, group, head_dim).amax(1).reshape(-1)
                s = _search(sm, f"{i}.o", x("o"), o, act, wmax, expand)
                if s is not None:
                    sm.columns[w(a.o_proj)] = expand(s).numpy()
                    divide_rows(a.v_proj, s.numpy())
            # gate/up: columns x s, the MLP norm's gain / s
            gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]).float()
            s = _search(sm, f"{i}.gate_up", x("gate_up"), gu, amax[(i, "gate_up")], gu.abs().amax(0))
            if s is not None:
                sm.columns[w(m.gate_proj)] = sm.columns[w(m.up_proj)] = s
                sm.gains[w(p["ffn_norm"])] = s
            # down: columns x s, up's rows / s
            down = m.down_proj.weight.float()
            s = _search(sm, f"{i}.down", x("down"), down, amax[(i, "down")], down.abs().amax(0))
            if s is not None:
                sm.columns[w(m.down_proj)] = s
                divide_rows(m.up_proj, s)
            if progress is not None:
                progress(1)  # one decoder layer searched
    sm.columns = {k: np.asarray(v, dtype=np.float32) for k, v in sm.columns.items()}
    sm.rows = {k: np.asarray(v, dtype=np.float32) for k, v in sm.rows.items()}
    sm.gains = {k: np.asarray(v, dtype=np.float32) for k, v in sm.gains.items()}
    return sm


def smooth_checked(model, sequences: Sequence[Sequence[int]], *, check_rows: int, max_tokens: int = 1024,
                   progress=None) -> Smoothing:
    """``smooth_for_q8`` on all but the last ``check_rows`` sequences, then the whole-model check on those: the
    scales are kept only if the simulated Q8_0 model (``simulated_q8_klds``) is closer to the model with them than
    without. Each place's search only sees its own product; errors interact across layers (e.g. a rounded token
    embedding with a rescaled q/k/v input), so a search can lower every place's error and still lose overall."""
    fit = list(sequences[:-check_rows]) if check_rows else list(sequences)
    if not fit:
        raise ConfigError(f"export smooth: {len(sequences)} train conversations leave none to choose the scales on "
                          f"after the {check_rows} check rows", received=len(sequences),
                          fix="lower smooth_check_rows (0: no check), or give the dataset step more train rows")
    sm = smooth_for_q8(model, fit, max_tokens=max_tokens, progress=progress)
    if check_rows:
        check = list(sequences[-check_rows:])
        plain, smoothed = simulated_q8_klds(model, check, [None, sm])
        sm.check = {"rows": len(check), "tokens": sum(len(c) for c in check), "kld_plain": plain, "kld_smoothed": smoothed}
        sm.kept = smoothed < plain
    return sm


def _search(sm: Smoothing, place: str, x, weight, act, wmax, expand=None):
    if x.shape[1] % BLOCK:  # llama.cpp's Q8_0 needs rows of whole blocks; the file keeps such a tensor as is
        sm.chosen[place] = None
        return None
    s, a, ratio = search_scale(x, weight, act, wmax, expand)
    sm.chosen[place] = a
    sm.error_ratio[place] = ratio
    return s


def simulated_q8_klds(model, sequences: Sequence[Sequence[int]], variants: Sequence[Smoothing | None], *,
                      cache_params: int = 1_000_000_000) -> list[float]:
    """Per variant, the mean KL divergence (per position, nats) of ``model`` from itself with every matrix product
    done as llama.cpp does it for a Q8_0 file -- weight and input each rounded to 8 bits per 32 values, the token
    embedding's rows rounded too -- with that ``Smoothing``'s column scales (None: unscaled; its row scales only
    rescale a whole row, which Q8_0's per-block scale follows). The reference runs once per sequence for all
    variants. Rounded weights are kept for the call when the variants' copies together stay within
    ``cache_params`` parameters, else rounded again for each sequence, so a large model is not copied."""
    import torch
    import torch.nn.functional as F

    from train.verify import reference_logp

    caching = sum(p.numel() for p in model.parameters()) * len(variants) <= cache_params
    caches: list[dict[str, Any]] = [{} for _ in variants]

    def linear(name, c, cache):
        def run(mod, inputs, out):
            x = inputs[0].float() if c is None else inputs[0].float() / c
            w = cache.get(name)
            if w is None:
                w = q8_0(mod.weight.float() if c is None else mod.weight.float() * c)
                if caching:
                    cache[name] = w
            return F.linear(q8_0(x), w, None if mod.bias is None else mod.bias.float()).to(out.dtype)
        return run

    def hooked(smoothing, cache) -> list:
        columns = {k.removesuffix(".weight"): torch.from_numpy(v) for k, v in (smoothing.columns if smoothing else {}).items()}
        handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and mod.in_features % BLOCK == 0:
                handles.append(mod.register_forward_hook(linear(name, columns.get(name), cache)))
            elif isinstance(mod, torch.nn.Embedding) and mod.embedding_dim % BLOCK == 0:
                handles.append(mod.register_forward_hook(lambda _m, _i, out: q8_0(out.float()).to(out.dtype)))
        return handles

    totals, n = [0.0] * len(variants), 0
    with torch.no_grad():
        for ids in sequences:
            ref = reference_logp(model, ids)
            p = ref.exp()
            for i, (smoothing, cache) in enumerate(zip(variants, caches)):
                handles = hooked(smoothing, cache)
                try:
                    lp = torch.log_softmax(model(input_ids=torch.tensor([list(ids)])).logits[0].float(), -1)
                finally:
                    for h in handles:
                        h.remove()
                totals[i] += float((p * (ref - lp)).sum(-1).sum())
            n += len(ids)
    return [t / max(n, 1) for t in totals]
