"""Our Q4_0 quantiser writes the standard format and has lower error than the reference one."""

from __future__ import annotations

import numpy as np


def test_q4_0_search_is_format_compatible_and_more_accurate():
    import gguf

    from train.gguf_export import quantize_q4_0

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    w[3, 7] = 0.9  # an outlier block
    Q = gguf.GGMLQuantizationType.Q4_0
    ours = quantize_q4_0(w)
    ref = gguf.quants.quantize(w, Q)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    back_ours = gguf.quants.dequantize(ours, Q)  # decoded by the gguf package's own reader
    back_ref = gguf.quants.dequantize(ref, Q)
    err_ours = float(((back_ours - w) ** 2).mean())
    err_ref = float(((back_ref - w) ** 2).mean())
    assert err_ours < 0.95 * err_ref, (err_ours, err_ref)  # measured: 0.89x
    zeros = quantize_q4_0(np.zeros((2, 32), dtype=np.float32))
    assert np.all(gguf.quants.dequantize(zeros, Q) == 0)


def test_tie_aware_agreement_only_forgives_near_ties_of_the_reference():
    import torch

    from train.export import compare_logits

    ref = [torch.tensor([[0.0, 3.00, 2.97, 0.0], [0.0, 3.0, 1.0, 0.0]])]
    items = [{"prompt_ends": [0, 1], "positions": [0, 1]}]
    near_tie_flip = [torch.tensor([[0.0, 2.95, 2.99, 0.0], [0.0, 3.0, 1.0, 0.0]])]
    real_flip = [torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 1.0, 3.0, 0.0]])]
    r = compare_logits(ref, near_tie_flip, items, tie_tolerance=0.1)
    assert r["answer_top1_agreement"] == 0.5 and r["answer_top1_agreement_tie_aware"] == 1.0
    r = compare_logits(ref, real_flip, items, tie_tolerance=0.1)
    assert r["answer_top1_agreement"] == 0.5 and r["answer_top1_agreement_tie_aware"] == 0.5
    r = compare_logits(ref, near_tie_flip, items, tie_tolerance=0.0)
    assert r["answer_top1_agreement_tie_aware"] == 0.5


def test_wilson_interval_of_prompt_agreement():
    import pytest

    from train.export import wilson_interval

    # reference values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(36, 39) == pytest.approx((0.79679, 0.97349), abs=1e-4)
    assert wilson_interval(39, 39) == pytest.approx((0.91033, 1.0), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-4)


def test_reference_logits_recomputed_beyond_the_budget_compare_the_same():
    """The export keeps the merged model's logits only up to logits_memory_mb; beyond it they are recomputed.
    Either way, and streamed or all at once, the comparison is the same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.export import ReferenceLogits, all_logits, compare_logits, logits_bytes, verify_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    model, other = LlamaForCausalLM(cfg).eval(), LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    items = [{"input_ids": torch.randint(0, 64, (n,), generator=g).tolist(), "prompt_ends": [2], "positions": [2, 3, 4]}
             for n in (6, 9, 7)]
    kept = ReferenceLogits(model, items, budget_bytes=1 << 20)
    partly = ReferenceLogits(model, items, budget_bytes=logits_bytes(items[0], 64))
    none = ReferenceLogits(model, items, budget_bytes=0)
    assert (len(kept.cached), len(partly.cached), len(none.cached)) == (3, 1, 0)
    expected = compare_logits(all_logits(model, items), all_logits(other, items), items, tie_tolerance=0.1)
    for ref in (kept, partly, none):
        assert verify_model(ref, other, tie_tolerance=0.1) == expected
    assert expected["prompts"] == 3 and expected["positions"] == 9 and expected["all_positions"] == 22
    assert verify_model(kept, model, tie_tolerance=0.0)["answer_top1_agreement"] == 1.0
