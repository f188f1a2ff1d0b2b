"""Qwen2 GGUF round trip, config checks and the CLI commands."""

from __future__ import annotations

import pytest

from slmforge.stages import parse_stage
from schemas.errors import ConfigError
from tests.train.conftest import build_base, build_dataset


def test_qwen2_export_judged_in_llama_cpp(tmp_path):
    """A Qwen2 base from the base_model stage (non-zero q/k biases, which the file must carry), exported and
    loaded in llama.cpp: same logits on the same ids, and the held-out conversation tokenizes to the same ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.gguf_export import write_gguf
    from train.inputs import load_tokenizer
    from train.llama_cpp import GGUFModel
    from train.verify import KLDStats, reference_logp, tokenizer_check

    build_dataset(tmp_path)
    base = build_base(tmp_path, name="qwen", architecture="qwen2", pretrain_steps=60) / "model"
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    assert model.config.model_type == "qwen2"
    with torch.no_grad():  # Qwen2 has q/k/v biases; make them non-zero so the export must carry them
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    tok = load_tokenizer(base)
    info = write_gguf(model, tok, tmp_path / "out" / "q.gguf", quant="F16", name="qwen-test")
    assert info["tensor_types"]["F32"] >= 3 * model.config.num_hidden_layers  # biases + norms stay F32
    conv = [{"role": "user", "content": "How long do we keep shipment events?"},
            {"role": "assistant", "content": "Shipment events are kept for 400 days."}]
    ids = list(tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
    with GGUFModel(tmp_path / "out" / "q.gguf", n_ctx=256, threads=2) as m:
        assert tokenizer_check(m, tok, [conv])["failed"] == 0
        st = KLDStats()
        st.add(reference_logp(model, ids)[:-1], next(m.logits(ids))[:len(ids) - 1], ids[1:])
    r = st.result()
    assert r["top1"] == 1.0 and r["kld_mean"] < 1e-4, r


def test_base_model_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of 'path' or 'tiny'"):
        parse_stage({"stage": "base_model"}, where="test")
    with pytest.raises(ConfigError, match="unknown key 'rnak'"):
        parse_stage({"stage": "train", "rnak": 8}, where="test")
    with pytest.raises(ConfigError, match="ollama_quantization"):
        parse_stage({"stage": "export", "quantizations": ["F16"]}, where="test")
    with pytest.raises(ConfigError, match="multiples of 32"):
        parse_stage({"stage": "base_model", "tiny": {"hidden_size": 72}}, where="test")


def test_base_model_from_a_local_folder_with_a_template_override(tmp_path):
    from train.config import BaseModelConfig
    from tests.train.conftest import make_ctx
    from train.base_model import BaseModelStage
    from train.chat import CHATML_TEMPLATE, strip_generation_markers

    build_dataset(tmp_path)
    src = build_base(tmp_path, name="src", pretrain_steps=0) / "model"
    before = (src / "tokenizer_config.json").read_text()
    # a folder whose template lacks generation markers is rejected with a fix ...
    stage = BaseModelStage(BaseModelConfig(path=str(src), chat_template=strip_generation_markers(CHATML_TEMPLATE)))
    with pytest.raises(ConfigError, match="generation"):
        stage.run(make_ctx(tmp_path, "b1"))
    # ... and a template override is written to the copy, never to the user's folder
    stats = BaseModelStage(BaseModelConfig(path=str(src), chat_template=CHATML_TEMPLATE + " ")).run(
        make_ctx(tmp_path, "b2"))
    assert stats["end_of_turn_token"] == "<|im_end|>"
    assert (src / "tokenizer_config.json").read_text() == before


def test_cli_commands_run_on_paths(pipeline, tmp_path):
    import typer
    from typer.testing import CliRunner

    from slmforge.cli_train import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", str(pipeline["dataset"]), "--base-model", str(pipeline["base"]),
                              "--out", str(tmp_path / "t"), "--max-steps", "2", "--set", "threads=2",
                              "--quantization", "none"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "adapter" / "adapter_config.json").exists() and "steps" in res.output
    res = runner.invoke(app, ["export", "--dataset", str(pipeline["dataset"]), "--base-model", str(pipeline["base"]),
                              "--adapter", str(tmp_path / "t"), "--out", str(tmp_path / "e"), "--quant", "F16",
                              "--set", "keep_merged=false"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "slmforge-model-F16.gguf").exists()
    res = runner.invoke(app, ["eval", "--dataset", str(pipeline["dataset"]), "--base-model", str(tmp_path / "nope"),
                              "--adapter", str(tmp_path / "t"), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "path not found" in res.output
