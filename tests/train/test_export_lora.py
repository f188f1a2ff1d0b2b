"""Base GGUF + LoRA adapter GGUF, judged by llama.cpp: a tiny random model of an architecture, a PEFT LoRA with
non-zero weights on every projection, merged in transformers; the base written as GGUF, copied tensor for tensor
into a file with this export's metadata (``write_base_gguf``), the adapter written in llama.cpp's adapter format
(``write_lora_gguf``); llama.cpp with base + adapter gives the merged model's logits on the same ids."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from schemas.errors import ConfigError
from tests.train.archs_util import build_model, chat_ids, conversations, hf_logits, kld, tokenizer

pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

CASES = {  # Llama: q/k rows permuted (lora_b must be too); Gemma 3: norms stored as 1 + w (not in the adapter)
    "llama": ("Llama", "gpt2", {}),
    "gemma3": ("Gemma3Text", "gemma", {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32,
                                       "sliding_window": 8}),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(base, adapter_dir, *, r: int = 4, alpha: float = 8.0, seed: int = 1, **extra):
    """``base`` + a LoRA whose B is random (PEFT initialises it to zero), saved to ``adapter_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, **extra))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(str(adapter_dir))
    return peft_model


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    from train.gguf_export import write_gguf
    from train.gguf_lora import write_base_gguf, write_lora_gguf
    from train.llama_cpp import GGUFModel

    arch, family, overrides = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    tok = tokenizer(family)
    base = build_model(arch, tok, **copy.deepcopy(overrides))
    merged = lora_model(base, tmp / "adapter").merge_and_unload().eval()
    write_gguf(base, tok, tmp / "source.gguf", quant="F16", name="tiny")  # stands in for the GGUF the base came from
    base_info = write_base_gguf(merged, tok, tmp / "source.gguf", tmp / "tiny-base-F16.gguf", name="tiny")
    lora_info = write_lora_gguf(tmp / "adapter", merged.config, tmp / "tiny-lora-F16.gguf", name="tiny")
    model = GGUFModel(tmp / "tiny-base-F16.gguf", n_ctx=128, lora=tmp / "tiny-lora-F16.gguf")
    plain = GGUFModel(tmp / "tiny-base-F16.gguf", n_ctx=128)
    yield {"case": request.param, "tok": tok, "base": base, "merged": merged, "model": model, "plain": plain,
           "tmp": tmp, "base_info": base_info, "lora_info": lora_info}
    model.close()
    plain.close()


def llama_cpp_logits(model, ids):
    return np.concatenate(list(model.logits(ids))).astype(np.float64)


def test_base_plus_adapter_in_llama_cpp_is_the_merged_model(pair):
    worst_merged, worst_base = 0.0, 0.0
    for conv in conversations():
        ids = chat_ids(pair["tok"], conv)[1]
        ref = hf_logits(pair["merged"], ids)
        worst_merged = max(worst_merged, float(kld(ref, llama_cpp_logits(pair["model"], ids)).max()))
        worst_base = max(worst_base, float(kld(ref, llama_cpp_logits(pair["plain"], ids)).max()))
    assert worst_merged < 1e-4, (pair["case"], worst_merged)
    assert worst_base > 100 * max(worst_merged, 1e-6), (pair["case"], worst_base)  # the adapter is what closes the gap


def test_adapter_file_layout(pair):
    import gguf

    reader = gguf.GGUFReader(str(pair["tmp"] / "tiny-lora-F16.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0
    names = {t.name: t for t in reader.tensors}
    assert len(names) == 2 * len(TARGETS) * pair["merged"].config.num_hidden_layers
    a, b = names["blk.0.attn_q.weight.lora_a"], names["blk.0.attn_q.weight.lora_b"]
    hidden, q_out = pair["merged"].config.hidden_size, pair["merged"].model.layers[0].self_attn.q_proj.out_features
    assert list(a.shape) == [hidden, 4] and list(b.shape) == [4, q_out]  # ggml order: a (in, r), b (r, out)
    assert pair["lora_info"]["adapted_tensors"] == len(TARGETS) * pair["merged"].config.num_hidden_layers


def test_base_file_keeps_the_source_tensors_bytes(pair):
    import gguf

    src = {t.name: t for t in gguf.GGUFReader(str(pair["tmp"] / "source.gguf")).tensors}
    out = {t.name: t for t in gguf.GGUFReader(str(pair["tmp"] / "tiny-base-F16.gguf")).tensors}
    assert src.keys() == out.keys()
    for name, t in src.items():
        assert out[name].tensor_type == t.tensor_type and np.array_equal(np.asarray(out[name].data), np.asarray(t.data))


def test_rslora_alpha_and_unsupported_settings(tmp_path):
    from train.gguf_lora import lora_pairs, write_base_gguf

    tok = tokenizer("gpt2")
    base = build_model("Llama", tok)
    lora_model(base, tmp_path / "rs", use_rslora=True)
    alpha, pairs = lora_pairs(tmp_path / "rs", base.config)
    assert alpha == pytest.approx(8.0 * 2.0) and len(pairs) == 14  # llama.cpp: alpha / r = 8 / sqrt(4)
    lora_model(base, tmp_path / "dora", use_dora=True)
    with pytest.raises(ConfigError, match="use_dora"):
        lora_pairs(tmp_path / "dora", base.config)
    cfg = json.loads((tmp_path / "rs" / "adapter_config.json").read_text())
    (tmp_path / "rs" / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": ["lm_head"]}))
    with pytest.raises(ConfigError, match="modules_to_save"):
        lora_pairs(tmp_path / "rs", base.config)
    from train.gguf_export import write_gguf

    other = build_model("Llama", tok, num_hidden_layers=3)
    write_gguf(other, tok, tmp_path / "other.gguf", quant="F16", name="tiny")
    with pytest.raises(ConfigError, match="not this model's"):
        write_base_gguf(base, tok, tmp_path / "other.gguf", tmp_path / "x.gguf", name="tiny")
