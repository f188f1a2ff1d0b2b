"""Gemma 3 (text) end to end on a tiny model: Gemma-style tokenizer trained here, Gemma3ForCausalLM built
from a config (6 layers so both sliding and full attention run, an 8-token window shorter than the
prompts), LoRA, merge, GGUF export of the Gemma 3 architecture, verified in llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.errors import ConfigError
from tests.train.conftest import build_base, build_dataset, make_ctx

GEMMA_TINY = {"num_layers": 6, "num_heads": 2, "num_kv_heads": 1, "sliding_window": 8, "pretrain_steps": 20}


@pytest.fixture(scope="module")
def gemma_export(tmp_path_factory):
    from train.config import ExportConfig, TrainConfig
    from train.export import ExportStage
    from train.sft import TrainStage

    root = tmp_path_factory.mktemp("gemma3")
    dataset = build_dataset(root)
    base = build_base(root, architecture="gemma3", **GEMMA_TINY)
    TrainStage(TrainConfig(max_steps=6, learning_rate=3e-3, batch_size=8, rank=8, alpha=16, threads=2)).run(
        make_ctx(root, "train", {"dataset": dataset, "base": base}))
    cfg = ExportConfig(model_name="gemma-tiny", quantizations=["F16", "Q8_0"], keep_merged=False, tokenizer_samples=4,
                       generation_checks=4, threads=2)
    stats = ExportStage(cfg).run(make_ctx(root, "export", {"dataset": dataset, "base": base, "train": root / "train"}))
    return {"root": root, "base": base, "out": root / "export", "stats": stats,
            "export": json.loads((root / "export" / "export.json").read_text())}


def test_tiny_gemma3_base_model(gemma_export):
    from transformers import AutoConfig

    from train.inputs import load_tokenizer

    cfg = AutoConfig.from_pretrained(str(gemma_export["base"] / "model"))
    assert cfg.model_type == "gemma3_text" and cfg.tie_word_embeddings and cfg.head_dim == 256
    assert cfg.layer_types.count("full_attention") == 1 and cfg.sliding_window == 8
    tok = load_tokenizer(gemma_export["base"] / "model")
    assert type(tok).__name__ == "GemmaTokenizer" and tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<eos>", "<bos>"]


def test_gemma3_files_verified_in_llama_cpp(gemma_export):
    """The Gemma-3 BOS fix, seen by llama.cpp: the file adds BOS (once), the rendered conversations and plain
    texts tokenize to the training ids, <end_of_turn> ends generation; F16 logits match the merged model."""
    files = {f["file"]: f for f in gemma_export["export"]["files"]}
    f16, q8 = files["gemma-tiny-F16.gguf"], files["gemma-tiny-Q8_0.gguf"]
    for f in (f16, q8):
        t = f["tokenizer"]
        assert t["failed"] == 0 and t["add_bos"] and t["end_of_turn"] == "<end_of_turn>" and t["chat_renderings"] > 4, t
    assert f16["verify"]["kld_mean"] <= 1e-3 and f16["verify"]["top1"] >= 0.99, f16["verify"]
    assert f16["passed"] and q8["passed"] and q8["verify"]["kld_mean"] > f16["verify"]["kld_mean"]
    assert gemma_export["export"]["generation"]["failed"] == 0


def test_gemma3_gguf_layout(gemma_export):
    import gguf
    from safetensors.numpy import load_file

    reader = gguf.GGUFReader(str(gemma_export["out"] / "gemma-tiny-F16.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")
              or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre")}
    assert fields["general.architecture"] == "gemma3" and fields["tokenizer.ggml.model"] == "llama"
    assert fields["gemma3.attention.sliding_window"] == 8 and fields["gemma3.attention.key_length"] == 256
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied to token_embd
    token_types = reader.fields["tokenizer.ggml.token_type"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert token_types[tokens.index("<0x41>")] == gguf.TokenType.BYTE
    assert token_types[tokens.index("<start_of_turn>")] == gguf.TokenType.CONTROL
    # norms are stored as 1 + weight (Gemma's RMSNorm scales by 1 + w); the merged model's weights, exactly
    base = load_file(str(gemma_export["base"] / "model" / "model.safetensors"))
    stored = np.asarray(tensors["blk.0.attn_q_norm.weight"].data)
    assert np.allclose(stored, base["model.layers.0.self_attn.q_norm.weight"] + 1.0, atol=1e-6)


def test_gemma3_export_refuses_settings_gguf_cannot_carry(tmp_path):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from train.gguf_export import write_gguf
    from train.inputs import load_tokenizer

    build_dataset(tmp_path)
    tok = load_tokenizer(build_base(tmp_path, architecture="gemma3", num_layers=1, num_heads=2, num_kv_heads=1,
                                    pretrain_steps=0) / "model")
    # llama.cpp scales Gemma 3 queries by 1/sqrt(head_dim) (n_embd/n_head for the 27B shape); another scalar is refused
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=128, query_pre_attn_scalar=256)
    with pytest.raises(ConfigError, match="query_pre_attn_scalar"):
        write_gguf(AutoModelForCausalLM.from_config(config), tok, tmp_path / "x.gguf", quant="F16", name="x")
