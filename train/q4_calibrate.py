"""Calibrated Q4_0: GPTQ on train-split activations, with full-precision targets, layer by layer.

Round-to-nearest (``quantize_q4_0``) rounds each weight on its own. GPTQ (Frantar et al., 2023)
rounds the columns of a weight matrix one at a time and moves the not yet rounded weights of the
row to cancel the error each rounding makes on the layer's output, using ``H = Xᵀ X`` of the
layer's inputs ``X`` on calibration text. The file format does not change: the result is
ordinary Q4_0 blocks (fp16 scale + 32 4-bit values), which any GGUF reader decodes as before.

What is done here, top to bottom:

1. Calibration sequences: conversations of the dataset's *train* split rendered with the chat
   template (``calibration_sequences``); the held-out split that verification uses is never read.
2. The inputs of the first decoder layer and the keyword arguments every layer receives (rotary
   embeddings, masks) are captured once, with the layers' computation skipped.
3. Each decoder layer in turn, its linears in call order, grouped by shared input (q/k/v; o;
   gate/up; down), each group after the previous one is rounded ("true sequential"):
   a. inputs ``X`` come from the already rounded model (earlier layers and groups rounded), and
      full-precision inputs ``X_fp`` from the unrounded model;
   b. the weights are first corrected so that the rounded model's inputs reproduce the
      full-precision outputs, ``W' = argmin ‖X W'ᵀ − X_fp Wᵀ‖² + λ‖W' − W‖²``, i.e.
      ``W' = (W X_fpᵀ X + λW)(XᵀX + λI)⁻¹``: errors of earlier layers are compensated instead of
      only this layer's own (the asymmetric calibration of GPTAQ, Li et al., 2025, in closed form);
   c. GPTQ rounds ``W'`` with ``H = XᵀX + λI`` (λ = ``damp`` × mean of diag(XᵀX)), columns in
      order, Q4_0's 32-column blocks as GPTQ's groups: when the loop reaches a block, its per-row
      scale is chosen by ``q4_0_scales`` on the block's already error-updated weights.
4. The model's weights are restored; the result is the Q4_0 bytes of each calibrated weight.

The passes over a layer (``train.q4_passes``) do not recompute what cannot have changed: an attention or MLP
whose linears are all rounded is replayed from its last linear's recorded input or its kept output, so the
attention runs twice per layer (unrounded, and once with q/k/v rounded) and the MLP's gate/up twice. The
rounded bytes are those of running every pass in full (the same operations on the same tensors).

Tried on the demo model and not done, as they did not lower the held-out logit error further
(docs/train.md, "Q4_0 calibration"): act-order with static block scales, AWQ-style channel scaling
before GPTQ, least-squares rescaling of the blocks after it, correcting the output projection, and
tuning the norm weights or block scales end to end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import StageError
from train.gguf_export import pack_q4_0, q4_0_scales
from train.q4_passes import BLOCK, LayerState, capture, fp_pass, run_layer


def calibration_sequences(tokenizer, examples: Path, *, rows: int, max_length: int,
                          purpose: str = "calibrate the Q4_0 file with",
                          fix: str = "set q4_0_method: llama.cpp on the export step",
                          tokens: int | None = None) -> list[list[int]]:
    """Token ids of the first ``rows`` train-split conversations (by id), each cut to ``max_length``; with
    ``tokens``, no further conversation once those taken hold that many tokens."""
    from train.chat import encode_example
    from train.inputs import conversations, read_examples

    train = read_examples(examples, split="train")[:rows]
    if not train:
        raise StageError(f"export: no train-split rows to {purpose}", received=str(examples),
                         fix=f"give the dataset step train rows, or {fix}")
    out: list[list[int]] = []
    taken = 0
    for conv in conversations(train):
        if tokens is not None and taken >= tokens:
            break
        out.append(encode_example(tokenizer, conv, max_length=max_length)["input_ids"])
        taken += len(out[-1])
    return out


def _decoder_layers(model) -> Any:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise StageError("Q4_0 calibration: the model has no model.layers (decoder layers)",
                         received=type(model).__name__, fix="set q4_0_method: llama.cpp on the export step")
    return layers


def _batches(sequences: Sequence[list[int]], *, max_tokens: int) -> list[tuple[Any, Any]]:
    """(input ids, attention mask) batches, right-padded: sequences of similar length together (longest first,
    ties in input order), at most ``max_tokens`` padded tokens a batch (a longer sequence goes alone)."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    groups: list[list[int]] = []
    for i in order:
        # sorted longest first, so a batch's padded width is its first sequence's length
        if groups and (len(groups[-1]) + 1) * len(sequences[groups[-1][0]]) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for group in groups:
        width = len(sequences[group[0]])
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, :len(sequences[i])] = 1
        out.append((ids, mask))
    return out


def gptq_q4_0(weight, hinv) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ rounding of ``weight`` (rows x cols, float32 torch) to Q4_0, given ``hinv``, the upper Cholesky
    factor of the inverse of the inputs' damped second moment (row j: how column j's rounding error is
    spread over the later columns). Returns the signed values (rows x cols) and per-block scales
    (rows x cols/32), numpy. Columns are rounded left to right; a block's scales are searched when the
    loop reaches it, on its error-updated weights."""
    import torch

    w = weight.clone()
    rows, cols = w.shape
    q = np.empty((rows, cols), dtype=np.float32)
    d = np.empty((rows, cols // BLOCK), dtype=np.float32)
    hinv_np = hinv.numpy()
    for b0 in range(0, cols, BLOCK):
        b1 = b0 + BLOCK
        blk = w[:, b0:b1].numpy()
        scale = d[:, b0 // BLOCK] = q4_0_scales(blk)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)  # q4_0_round's, once a block
        # the block transposed (column j = row j, contiguous): numpy's per-column steps, where torch's overhead shows
        bt, qt, err = blk.T.copy(), np.empty((BLOCK, rows), dtype=np.float32), np.empty((BLOCK, rows), dtype=np.float32)
        h = hinv_np[b0:b1, b0:b1]
        for j in range(BLOCK):
            qj = qt[j] = np.clip(np.round(bt[j] * inv), -8, 7)
            e = err[j] = (bt[j] - qj * scale) / h[j, j]
            bt[j:] -= h[j, j:, None] * e
        q[:, b0:b1] = qt.T
        w[:, b1:] -= torch.from_numpy(np.ascontiguousarray(err.T)) @ hinv[b0:b1, b1:]
    return q, d


def _calibrated(weights: list, x, x_fp, *, damp: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """GPTQ with full-precision targets for weights sharing the input: corrected for the rounded model's inputs
    ``x`` (the unrounded model's are ``x_fp``), then rounded by ``gptq_q4_0``. Every row is corrected and rounded
    on its own, so the group's weights are stacked and done in one go, then split again."""
    import torch

    h = (x.T @ x).double()
    cross = (x_fp.T @ x).double()
    mean_diag = float(torch.diag(h).mean())
    lam = damp * mean_diag if mean_diag > 0 else 1.0
    h += lam * torch.eye(h.shape[0], dtype=h.dtype)
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    factor = torch.linalg.cholesky(h_inv, upper=True).float()  # the rounding loop runs in float32, as GPTQ's
    w = torch.cat(weights).double()
    w = ((w @ cross + lam * w) @ h_inv).float()
    # rows are independent: a share of them per thread (numpy's per-column steps run on one core otherwise)
    threads = torch.get_num_threads()
    chunks = torch.chunk(w, max(1, min(threads, len(w))))
    # each share's torch steps on one core: torch's own threads on top of ours oversubscribe the cores
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(lambda rows: gptq_q4_0(rows, factor), chunks))
    finally:
        torch.set_num_threads(threads)
    q, d = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    splits = np.cumsum([len(wt) for wt in weights])[:-1]
    return list(zip(np.split(q, splits), np.split(d, splits)))


def calibrate_q4_0(model, sequences: Sequence[list[int]], *, damp: float = 0.01, batch_tokens: int = 2048,
                   progress: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Q4_0 bytes (HF layout: rows x cols/32*18) of every decoder-layer linear whose width is a multiple of
    32, keyed by state-dict name, plus stats. ``model`` is left as it was (weights restored)."""
    import torch

    started = time.perf_counter()
    layers = _decoder_layers(model)
    names = {id(mod): name for name, mod in model.named_modules()}
    saved: dict[str, tuple[Any, Any]] = {}
    result: dict[str, np.ndarray] = {}
    try:
        batches = _batches(sequences, max_tokens=batch_tokens)
        valid = [mask.bool().to(model.device) for _, mask in batches]
        h_q, kwargs = capture(model, layers, batches)
        h_fp = h_q
        forward_s = rounding_s = 0.0
        for layer, kws in zip(layers, kwargs):
            state = LayerState(layer)  # what the passes over this layer share (train.q4_passes)
            t0 = time.perf_counter()
            # the groups, the full-precision inputs of every group (one pass of the unrounded layer) and its outputs
            groups, x_fp, h_fp = fp_pass(state, h_fp, kws, valid)
            forward_s += time.perf_counter() - t0
            for group in groups:
                first, module = group[0]
                t0 = time.perf_counter()
                x, _ = run_layer(state, h_q, kws, valid, {first: module}, stop=True)
                weights = [mod.weight.detach().cpu() for _, mod in group]
                t1 = time.perf_counter()
                rounded = _calibrated(weights, x[first], x_fp[first], damp=damp)
                forward_s, rounding_s = forward_s + t1 - t0, rounding_s + time.perf_counter() - t1
                for (name, mod), (q, d) in zip(group, rounded):
                    key = names[id(mod)] + ".weight"
                    saved[key] = (mod, mod.weight.detach().clone())
                    result[key] = pack_q4_0(q.reshape(-1, BLOCK), d.reshape(-1)).reshape(q.shape[0], -1)
                    with torch.no_grad():
                        mod.weight.copy_(torch.from_numpy(q * np.repeat(d, BLOCK, axis=1)).to(mod.weight))
                state.rounded.update(mod for _, mod in group)
                del x_fp[first]
            t0 = time.perf_counter()
            _, h_q = run_layer(state, h_q, kws, valid, {})
            forward_s += time.perf_counter() - t0
            if progress is not None:
                progress(1)
    finally:
        with torch.no_grad():
            for mod, weight in saved.values():
                mod.weight.copy_(weight)
    stats = {"method": "gptq", "sequences": len(sequences), "tokens": int(sum(len(s) for s in sequences)),
             "damp": damp, "tensors": len(result), "seconds": round(time.perf_counter() - started, 3),
             "forward_seconds": round(forward_s, 3), "rounding_seconds": round(rounding_s, 3)}
    return result, stats
