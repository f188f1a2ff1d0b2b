"""QLoRA: 4-bit NF4 via bitsandbytes. CPU 4-bit only when explicitly requested; CUDA test marked gpu."""

from __future__ import annotations

import pytest

from train.config import LORA_TARGETS, TrainConfig
from tests.train.conftest import make_ctx

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes==0.50.2 (train extra) is not installed")


def _batch(tokenizer):
    from train.chat import encode_example
    from train.sft import collate

    conv = [{"role": "user", "content": "Which port does the tracking API use?"},
            {"role": "assistant", "content": "The tracking API listens on port 8443."}]
    return collate([encode_example(tokenizer, conv, max_length=256)], pad_id=tokenizer.pad_token_id)


def test_cpu_4bit_lora_gradients_are_right_after_an_eval_forward(pipeline):
    """bitsandbytes 0.50.2 on AVX512-BF16 CPUs computes wrong LoRA gradients after an eval-mode forward
    unless support_avx512bf16_for_cpu is False on every Linear4bit (we saw 0.76 relative error).
    The gradients of the 4-bit model must match an fp32 model holding the dequantised weights."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from train.inputs import load_tokenizer
    from train.sft import add_lora, load_base_for_training

    base = pipeline["base"] / "model"
    tok = load_tokenizer(base)
    cfg = TrainConfig(rank=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    q = add_lora(load_base_for_training(base, quantize_4bit=True, dtype=torch.float32), cfg)
    layers = [m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == len(LORA_TARGETS) * 2 and all(m.support_avx512bf16_for_cpu is False for m in layers)
    for name, p in q.named_parameters():  # non-zero B so A gets a gradient too
        if "lora_B" in name:
            p.data.normal_(0, 0.05)

    ref = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    ref_modules = dict(ref.named_modules())
    for name, m in q.base_model.model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
            ref_modules[name.replace(".base_layer", "")].weight.data.copy_(w)
    ref = add_lora(ref, cfg)
    set_peft_model_state_dict(ref, get_peft_model_state_dict(q))

    batch = _batch(tok)
    q.eval()
    with torch.no_grad():
        q(**batch)  # the eval-mode forward that poisons later gradients on affected CPUs
    grads = {}
    for model in (q, ref):
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        grads[id(model)] = {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters()
                            if "lora_" in n and p.grad is not None}
    gq, gr = grads[id(q)], grads[id(ref)]
    assert gq.keys() == gr.keys() and len(gq) == 2 * len(LORA_TARGETS) * 2
    for n in gr:
        rel = float((gq[n] - gr[n]).norm() / gr[n].norm().clamp_min(1e-12))
        assert rel < 1e-2, (n, rel)


def test_explicit_cpu_nf4_training_runs(pipeline, tmp_path):
    from train.sft import TrainStage

    stats = TrainStage(TrainConfig(quantization="nf4", max_steps=2, batch_size=4, threads=2)).run(
        make_ctx(tmp_path, "q", {"dataset": pipeline["dataset"], "base": pipeline["base"]}))
    assert stats["method"] == "qlora" and stats["device"] == "cpu" and stats["warnings"] == []
    assert (tmp_path / "q" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.gpu
def test_qlora_on_cuda_trains(pipeline, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from train.sft import TrainStage

    stats = TrainStage(TrainConfig(epochs=6, learning_rate=3e-3, batch_size=8)).run(
        make_ctx(tmp_path, "q", {"dataset": pipeline["dataset"], "base": pipeline["base"]}))
    assert stats["method"] == "qlora" and stats["device"] == "cuda" and stats["precision"] == "bf16"
    assert stats["last_loss"] < stats["first_loss"]
