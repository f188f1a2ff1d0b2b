"""GPTQ-calibrated Q4_0 (train/q4_calibrate.py) on tiny real models and real GGUF files judged in llama.cpp:
lower error than round-to-nearest and llama.cpp's Q4_0 on held-out rows, byte-identical reruns of the export
stage, other architectures."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

import numpy as np
import pytest

from tests.train.conftest import build_base, build_dataset, make_ctx


def _dequantized(model, packed: dict | None) -> dict:
    """state-dict name -> Q4_0 weights as the file decodes them: calibrated blocks, or the exporter's
    round-to-nearest for every decoder-layer linear the calibration covers."""
    import gguf
    import torch

    from train.gguf_export import quantize_q4_0

    q4 = gguf.GGMLQuantizationType.Q4_0
    sd = model.state_dict()
    names = packed if packed is not None else _calibrated_names(model)
    out = {}
    for name in names:
        raw = packed[name] if packed is not None else quantize_q4_0(sd[name].float().numpy())
        out[name] = torch.from_numpy(gguf.quants.dequantize(raw, q4).reshape(sd[name].shape).copy())
    return out


def _calibrated_names(model) -> list[str]:
    import torch

    return [f"{n}.weight" for n, m in model.model.layers.named_modules(prefix="model.layers")
            if isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0]


@contextmanager
def _weights(model, weights: dict):
    """The model with ``weights`` swapped in, restored afterwards."""
    import torch

    sd = model.state_dict()
    saved = {n: sd[n].clone() for n in weights}
    with torch.no_grad():
        for n, w in weights.items():
            sd[n].copy_(w)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                sd[n].copy_(w)


@pytest.fixture(scope="module")
def tuned(pipeline):
    """The pipeline's merged LoRA model, its tokenizer, the dataset and its GPTQ calibration."""
    import torch

    from train.export import merge_adapter
    from train.inputs import load_tokenizer, read_examples
    from train.q4_calibrate import calibrate_q4_0, calibration_sequences

    torch.set_num_threads(2)
    base = pipeline["base"] / "model"
    tok = load_tokenizer(base)
    model, _, _ = merge_adapter(base, pipeline["train"] / "adapter",
                                [it["input_ids"] for it in _heldout(tok, pipeline["dataset"], limit=2)], budget_bytes=1 << 30)
    sequences = calibration_sequences(tok, pipeline["dataset"], rows=128, max_length=512)
    train_rows = len(read_examples(pipeline["dataset"], split="train"))
    assert len(sequences) == train_rows < 128  # every train row, no held-out one
    budget = sum(map(len, sequences[:3])) - 1  # the third conversation crosses it: three are taken, no more
    assert calibration_sequences(tok, pipeline["dataset"], rows=128, max_length=512, tokens=budget) == sequences[:3]
    before = {n: p.clone() for n, p in model.state_dict().items()}
    packed, stats = calibrate_q4_0(model, sequences)
    assert all(np.array_equal(before[n].numpy(), p.numpy()) for n, p in model.state_dict().items())  # restored
    return {"model": model, "tok": tok, "dataset": pipeline["dataset"], "packed": packed, "stats": stats,
            "root": pipeline["root"], "pipeline": pipeline, "train_rows": train_rows}


def _heldout(tok, dataset, limit=16):
    """Held-out (test-split) conversations as training ids."""
    from train.export import heldout_conversations, token_sequences

    return [{"input_ids": ids} for ids in token_sequences(tok, heldout_conversations(dataset)[:limit], tokens=1 << 62,
                                                          max_length=512)]


def test_gptq_lowers_every_layer_output_error_on_heldout_rows(tuned):
    """Each decoder layer's output on held-out (test-split) conversations is closer to the unrounded model's
    with GPTQ than with round-to-nearest (the calibration saw only train rows)."""
    import torch

    model, packed = tuned["model"], tuned["packed"]
    assert set(packed) == set(_calibrated_names(model)) and tuned["stats"]["tensors"] == 7 * model.config.num_hidden_layers
    items = _heldout(tuned["tok"], tuned["dataset"])

    def hidden_states():
        with torch.no_grad():
            outs = [model(input_ids=torch.tensor([it["input_ids"]]), output_hidden_states=True).hidden_states
                    for it in items]
        return [torch.cat([o[i][0] for o in outs]) for i in range(1, len(outs[0]))]

    reference = hidden_states()
    errors = {}
    for method, weights in (("rtn", _dequantized(model, None)), ("gptq", _dequantized(model, packed))):
        with _weights(model, weights):
            errors[method] = [float(((h - r) ** 2).sum() / (r ** 2).sum()) for h, r in zip(hidden_states(), reference)]
    assert all(g < 0.8 * r for g, r in zip(errors["gptq"], errors["rtn"])), errors


def _kld_in_llama_cpp(model, items, paths):
    from train.verify import verify_files

    return verify_files(model, [it["input_ids"] for it in items], paths, threads=2)


def test_calibrated_gguf_is_closer_in_llama_cpp_than_round_to_nearest(tuned, tmp_path):
    """Same file layout and tensor types as round-to-nearest Q4_0; llama.cpp loads it and, on held-out rows, its
    logits are closer to the merged model's (KL divergence) than round-to-nearest's and llama.cpp's own Q4_0."""
    import gguf

    from train.gguf_export import write_gguf
    from train.llama_cpp import quantize

    model, tok, packed = tuned["model"], tuned["tok"], tuned["packed"]
    infos = {}
    for method, weights in (("none", None), ("gptq", packed)):
        infos[method] = write_gguf(model, tok, tmp_path / f"{method}.gguf", quant="Q4_0", name="t", q4_0_weights=weights)
    write_gguf(model, tok, tmp_path / "f16.gguf", quant="F16", name="t")
    quantize(tmp_path / "f16.gguf", tmp_path / "llama.gguf", qtype="Q4_0", threads=2)
    assert infos["gptq"]["tensor_types"] == infos["none"]["tensor_types"]
    assert infos["gptq"]["bytes"] == infos["none"]["bytes"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(tmp_path / "gptq.gguf")).tensors}
    assert types["token_embd.weight"] == types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    res = _kld_in_llama_cpp(model, _heldout(tok, tuned["dataset"]),
                            [tmp_path / "none.gguf", tmp_path / "gptq.gguf", tmp_path / "llama.gguf"])
    g, n, ll = (res[f"{m}.gguf"]["kld_mean"] for m in ("gptq", "none", "llama"))
    assert g < 0.9 * n and g < ll, res


def test_export_stage_calibrates_deterministically(tuned):
    """The export stage's default Q4_0 (GPTQ) is byte-identical on a rerun, verified in llama.cpp like every file,
    reported in export.json and the model card, and its options are fingerprinted."""
    from train.config import ExportConfig
    from train.export import ExportStage

    pipeline, root = tuned["pipeline"], tuned["root"]
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"]}
    cfg = ExportConfig(model_name="cal", quantizations=["Q4_0"], ollama_quantization="Q4_0", keep_merged=False,
                       generation_checks=0, tokenizer_samples=2, threads=2)
    digests = []
    for name in ("export-a", "export-b"):
        ExportStage(cfg).run(make_ctx(root, name, ins))
        files = json.loads((root / name / "export.json").read_text())["files"]
        digests.append(hashlib.sha256((root / name / "cal-Q4_0.gguf").read_bytes()).hexdigest())
        assert files[0]["sha256"] == digests[-1] and files[0]["passed"]
    assert digests[0] == digests[1]
    n = tuned["train_rows"]
    assert files[0]["method"] == "gptq" and files[0]["calibration"]["sequences"] == n
    assert files[0]["calibration"]["damp"] == 0.01 and files[0]["verify"]["tokens"] > 100
    card = (root / "export-b" / "README.md").read_text()
    assert f"GPTQ with full-precision targets on {n} train-split conversations" in card and "cal-Q4_0.gguf (GPTQ)" in card
    fp = cfg.fingerprint_dict()
    for key, value in (("q4_0_method", "llama.cpp"), ("calibration_rows", 7), ("calibration_max_length", 64),
                       ("calibration_damp", 0.1), ("calibration_tokens", 1000)):
        assert cfg.model_copy(update={key: value}).fingerprint_dict() != fp


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3"])
def test_other_architectures_calibrate_and_load_in_llama_cpp(architecture, tmp_path):
    """Qwen2 (q/k/v biases) and Gemma 3 (sandwich norms, q/k norms, sliding + full attention, tied embeddings):
    the calibration finds their linears, and the calibrated file is closer in llama.cpp than round-to-nearest."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.gguf_export import write_gguf
    from train.inputs import load_tokenizer
    from train.q4_calibrate import calibrate_q4_0, calibration_sequences

    torch.set_num_threads(2)
    dataset = build_dataset(tmp_path)
    extra = {"num_layers": 6, "num_heads": 2, "num_kv_heads": 1, "sliding_window": 8} if architecture == "gemma3" else {}
    base = build_base(tmp_path, architecture=architecture, pretrain_steps=30, **extra) / "model"
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    tok = load_tokenizer(base)
    packed, stats = calibrate_q4_0(model, calibration_sequences(tok, dataset, rows=32, max_length=256))
    assert stats["tensors"] == 7 * model.config.num_hidden_layers
    for method, weights in (("none", None), ("gptq", packed)):
        write_gguf(model, tok, tmp_path / "out" / f"{method}.gguf", quant="Q4_0", name="t", q4_0_weights=weights)
    res = _kld_in_llama_cpp(model, _heldout(tok, dataset, limit=8), [tmp_path / "out" / "none.gguf", tmp_path / "out" / "gptq.gguf"])
    assert res["gptq.gguf"]["kld_mean"] < res["none.gguf"]["kld_mean"], res


@pytest.mark.parametrize("architecture", ["gemma3", "llama", "phi3"])
def test_layer_passes_replay_what_cannot_change_exactly(architecture):
    """``train.q4_passes``: the attention and the MLP are found to end in o_proj / down_proj (the unrounded pass), and
    once their linears are "rounded" (here: changed) they are replayed instead of run -- with exactly the values of a
    plain pass (recorded inputs of every group and the layer's outputs, ``torch.equal``), without calling q/k/v or the
    MLP's first linear again."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Phi3Config

    from train.q4_calibrate import _batches
    from train.q4_passes import LayerState, capture, fp_pass, run_layer

    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    config = {"gemma3": lambda: Gemma3TextConfig(**shape, head_dim=32, sliding_window=16),
              "llama": lambda: LlamaConfig(**shape), "phi3": lambda: Phi3Config(**shape, pad_token_id=0)}[architecture]()
    model = AutoModelForCausalLM.from_config(config).eval()
    seqs = [torch.randint(1, 300, (n,)).tolist() for n in (40, 17, 33, 8, 25)]
    batches = _batches(seqs, max_tokens=96)
    valid = [mask.bool() for _, mask in batches]
    layer = model.model.layers[0]
    hiddens, kwargs = capture(model, [layer], batches)
    state = LayerState(layer)
    groups, _, _ = fp_pass(state, hiddens, kwargs[0], valid)
    assert {c: m for c, (m, _) in state.tails.items()} == {layer.self_attn: layer.self_attn.o_proj, layer.mlp: layer.mlp.down_proj}
    first_attn, first_mlp = groups[0][0][1], groups[-2][0][1]  # q_proj / qkv_proj; gate_proj / gate_up_proj
    calls = {"attn": 0, "mlp": 0}
    first_attn.register_forward_pre_hook(lambda *a: calls.__setitem__("attn", calls["attn"] + 1))
    first_mlp.register_forward_pre_hook(lambda *a: calls.__setitem__("mlp", calls["mlp"] + 1))

    def same(a, b) -> bool:
        return all(torch.equal(x[0] if isinstance(x, tuple) else x, y[0] if isinstance(y, tuple) else y) for x, y in zip(a, b))

    for group in groups:
        name, module = group[0]
        x, _ = run_layer(state, hiddens, kwargs[0], valid, {name: module}, stop=True)
        plain, _ = run_layer(LayerState(layer), hiddens, kwargs[0], valid, {name: module}, stop=True)
        assert torch.equal(x[name], plain[name])
        with torch.no_grad():
            for _, mod in group:
                mod.weight.mul_(0.75)  # what rounding does: the weights change
        state.rounded.update(mod for _, mod in group)
    calls.update(attn=0, mlp=0)
    _, out = run_layer(state, hiddens, kwargs[0], valid, {})
    assert calls == {"attn": 0, "mlp": 0}  # both replayed: o_proj(kept input), down_proj(kept input)
    _, plain = run_layer(LayerState(layer), hiddens, kwargs[0], valid, {})
    assert calls["attn"] == calls["mlp"] == len(batches) and len(out) == len(plain) == len(batches) and same(out, plain)
