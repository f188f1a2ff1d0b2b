"""Smoothing (train/smooth.py): the rescaled model is the same function, the search never makes a place's simulated
Q8_0 error worse, and llama.cpp's Q8_0 file written from it is closer to the model than the plain one."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from schemas.errors import ConfigError
from tests.train.archs_util import build_model, hf_logits, kld, llama_logits, open_llama, texts, tokenizer

CASES = {
    "llama": ("Llama", "gpt2", {}),
    "qwen2": ("Qwen2", "qwen", {}),
    "qwen3": ("Qwen3", "qwen", {"head_dim": 32}),
    "gemma3": ("Gemma3Text", "gemma", {"num_hidden_layers": 4, "head_dim": 32, "query_pre_attn_scalar": 32,
                                       "sliding_window": 8}),
}


def _outlier_model(case: str):
    """A tiny random model whose two norms feed the linears a few large channels, as trained LLMs' do."""
    import torch

    arch, family, overrides = CASES[case]
    tok = tokenizer(family)
    model = build_model(arch, tok, **copy.deepcopy(overrides))
    one_plus = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for layer in model.model.layers:
            ffn_norm = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
            for norm, channel in ((layer.input_layernorm, 5), (ffn_norm, 9)):
                w = norm.weight
                w[channel] = 30 * (1 + w[channel]) - 1 if one_plus else 30 * w[channel]
    return tok, model


def _sequences(tok, n: int, length: int = 96) -> list[list[int]]:
    ids = [i for t in texts() for i in tok(t)["input_ids"]]
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def _smoothed_copy(model, sm):
    """The model with every tensor passed through ``Smoothing.apply``: what the GGUF file holds, in transformers."""
    import torch

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(torch.from_numpy(sm.apply(name, p.detach().float().numpy(), 0)))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_smoothing_is_exact_and_never_raises_the_simulated_error(case):
    from train.smooth import smooth_for_q8

    tok, model = _outlier_model(case)
    ticks: list[int] = []
    sm = smooth_for_q8(model, _sequences(tok, 8), max_tokens=512, progress=ticks.append)
    layers = model.config.num_hidden_layers
    assert ticks == [1] * layers  # the stage's progress bar moves once per decoder layer
    assert len(sm.chosen) == 4 * layers
    assert sm.gains and sm.columns and sm.rows
    # the planted outliers are scaled away: q/k/v and gate/up inputs get a scale, and it pays in the simulation
    for i in range(layers):
        assert sm.chosen[f"{i}.qkv"] is not None and sm.chosen[f"{i}.gate_up"] is not None, sm.chosen
        assert sm.error_ratio[f"{i}.qkv"] < 0.5 and sm.error_ratio[f"{i}.gate_up"] < 0.5, sm.error_ratio
    assert all(r <= 1.0 for r in sm.error_ratio.values()), sm.error_ratio
    assert 256 < sm.tokens <= 512  # evenly spaced positions, at most max_tokens
    smoothed = _smoothed_copy(model, sm)
    assert any(not np.allclose(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(model.parameters(), smoothed.parameters()))
    for ids in _sequences(tok, 3, length=64):
        a, b = hf_logits(model, ids), hf_logits(smoothed, ids)
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(a).max()), case


def _q8_0_kld_in_llama_cpp(case, tmp_path):
    """The planted model written plain and smoothed, each quantised to Q8_0 by llama.cpp and run by it: mean KLD
    from the model on positions the search did not see, per (plain|smoothed, F16|Q8_0)."""
    from train.gguf_export import write_gguf
    from train.llama_cpp import quantize
    from train.smooth import smooth_for_q8

    tok, model = _outlier_model(case)
    sm = smooth_for_q8(model, _sequences(tok, 8), max_tokens=512)
    held = _sequences(tok, 12)[8:]  # not the calibration positions
    result = {}
    for label, smoothing in (("plain", None), ("smoothed", sm)):
        f16 = tmp_path / f"{label}-F16.gguf"
        write_gguf(model, tok, f16, quant="F16", name="tiny", smoothing=smoothing)
        quantize(f16, tmp_path / f"{label}-Q8_0.gguf", qtype="Q8_0", threads=2)
        for kind in ("F16", "Q8_0"):
            llm = open_llama(tmp_path / f"{label}-{kind}.gguf", n_ctx=128)
            try:
                result[label, kind] = float(np.mean([kld(hf_logits(model, ids), llama_logits(llm, ids)).mean()
                                                     for ids in held]))
            finally:
                llm.close()
    return tok, model, result


def test_smoothed_q8_0_file_is_closer_in_llama_cpp(tmp_path):
    _, _, result = _q8_0_kld_in_llama_cpp("gemma3", tmp_path)
    assert result["smoothed", "F16"] < 1e-3, result
    assert result["smoothed", "Q8_0"] < 0.8 * result["plain", "Q8_0"], result


def test_the_whole_model_check_agrees_with_llama_cpp(tmp_path):
    """Where every place's search gains and llama.cpp still loses (the planted Llama: the rounded token embedding
    interacts with the rescaled q/k/v input), the simulated whole-model check sees it and drops the scales; on the
    planted Gemma 3, where llama.cpp gains, it keeps them. Its numbers are on the same side as llama.cpp's."""
    from train.smooth import smooth_checked

    for case in ("llama", "gemma3"):
        tok, model, result = _q8_0_kld_in_llama_cpp(case, tmp_path / case)
        sm = smooth_checked(model, _sequences(tok, 12), check_rows=4, max_tokens=512)
        ck = sm.check
        assert ck["rows"] == 4 and ck["tokens"] == 4 * 96
        llama_cpp_gains = result["smoothed", "Q8_0"] < result["plain", "Q8_0"]
        assert sm.kept == (ck["kld_smoothed"] < ck["kld_plain"]) == llama_cpp_gains, (case, ck, result)
        assert sm.kept == (case == "gemma3"), (case, ck, result)


def test_export_stage_with_smooth(tmp_path):
    """The export stage with smooth: true on a tiny trained Gemma 3: the search and the check run on train rows,
    export.json and the card say what was decided, and the F16 file still matches the merged model in llama.cpp."""
    import json

    from tests.train.conftest import build_base, build_dataset, make_ctx
    from train.config import ExportConfig, TrainConfig
    from train.export import ExportStage
    from train.sft import TrainStage

    dataset = build_dataset(tmp_path)
    base = build_base(tmp_path, architecture="gemma3", num_layers=2, num_heads=2, num_kv_heads=1, sliding_window=8)
    TrainStage(TrainConfig(max_steps=4, learning_rate=3e-3, batch_size=8, rank=8, alpha=16, threads=2)).run(
        make_ctx(tmp_path, "train", {"dataset": dataset, "base": base}))
    cfg = ExportConfig(model_name="sm", quantizations=["F16", "Q8_0"], keep_merged=False, tokenizer_samples=2,
                       generation_checks=0, threads=2, smooth=True, smooth_rows=8, smooth_check_rows=4, smooth_tokens=256)
    ExportStage(cfg).run(make_ctx(tmp_path, "export", {"dataset": dataset, "base": base, "train": tmp_path / "train"}))
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    sm = report["smoothing"]
    assert sm["places"] == 8 and 0 < sm["tokens"] <= 256 and sm["check"]["rows"] == 4
    assert sm["kept"] == (sm["check"]["kld_smoothed"] < sm["check"]["kld_plain"])
    files = {f["type"]: f for f in report["files"]}
    assert files["F16"]["verify"]["kld_mean"] < 1e-3 and files["F16"]["passed"], files["F16"]["verify"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "Smoothing (train/smooth.py)" in card and "Whole-model check on 4 other train conversations" in card
    assert "smoothing scales searched and checked" in report["timings"]


def test_fused_projections_are_refused_with_the_fix():
    from train.smooth import smooth_for_q8

    tok = tokenizer("phi3")
    model = build_model("Phi3", tok)
    with pytest.raises(ConfigError, match="smooth: false"):
        smooth_for_q8(model, _sequences(tok, 1))


def test_smoothing_is_part_of_the_export_fingerprint():
    from train.config import ExportConfig

    cfg = ExportConfig()
    fp = cfg.fingerprint_dict()
    assert cfg.smooth is False
    for key, value in (("smooth", True), ("smooth_rows", 8), ("smooth_check_rows", 2), ("smooth_tokens", 256)):
        assert cfg.model_copy(update={key: value}).fingerprint_dict() != fp


def test_too_few_rows_for_the_check_is_a_clear_error():
    from train.smooth import smooth_checked

    tok, model = _outlier_model("llama")
    with pytest.raises(ConfigError, match="leave none to choose the scales on"):
        smooth_checked(model, _sequences(tok, 3), check_rows=3)
