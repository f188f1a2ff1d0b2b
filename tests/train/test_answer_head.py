"""The labelled-positions loss (train/answer_head.py) is the model's own loss: same value, same LoRA gradients."""

from __future__ import annotations

import pytest

from tests.train.archs_util import build_model, tokenizer


def _batch(vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 24), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 15:22] = ids[0, 15:22]   # an answer after a prompt, then padding
    labels[1, 1:] = ids[1, 1:]         # a replay row: every token trained
    labels[2, 20:24] = ids[2, 20:24]
    attn = torch.ones_like(ids)
    attn[0, 22:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


@pytest.mark.parametrize(("arch", "family", "extra"), [
    ("Llama", "llama3", {}),
    ("Gemma3Text", "gemma", {"head_dim": 16, "final_logit_softcapping": 30.0, "sliding_window": 8}),
])
def test_labelled_loss_equals_the_models_loss_and_gradients(arch, family, extra):
    import torch
    from peft import LoraConfig, get_peft_model

    from train.answer_head import causal_lm_parts, labelled_loss

    tok = tokenizer(family)
    model = get_peft_model(build_model(arch, tok, **extra).train(),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    batch = _batch(len(tok))
    parts = causal_lm_parts(model)
    assert parts is not None and (parts[2] == 30.0) == (arch == "Gemma3Text")

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    reference = model(**batch).loss
    ref_grads = grads(reference)
    ours = labelled_loss(parts, batch)
    our_grads = grads(ours)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == our_grads.keys() and len(ref_grads) > 0
    for name in ref_grads:
        assert torch.allclose(our_grads[name], ref_grads[name], atol=1e-6, rtol=1e-4), name
    # normalised by a given token count (the Trainer's num_items_in_batch over accumulated micro-batches)
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(labelled_loss(parts, batch, num_items_in_batch=torch.tensor(2 * n)), reference / 2,
                          atol=1e-5)
