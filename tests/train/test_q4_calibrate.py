"""GPTQ-calibrated Q4_0 (train/q4_calibrate.py) on tiny real models and real GGUF files: lower error than
round-to-nearest on held-out rows, files that transformers reloads, byte-identical reruns, every exported
architecture."""

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
    model, _, _ = merge_adapter(base, pipeline["train"] / "adapter", _heldout(tok, pipeline["dataset"], limit=2),
                                budget_bytes=1 << 30)
    sequences = calibration_sequences(tok, pipeline["dataset"], rows=128, max_length=512)
    train_rows = len(read_examples(pipeline["dataset"], split="train"))
    assert len(sequences) == train_rows < 128  # every train row, no held-out one
    before = {n: p.clone() for n, p in model.state_dict().items()}
    packed, stats = calibrate_q4_0(model, sequences)
    assert all(np.array_equal(before[n].numpy(), p.numpy()) for n, p in model.state_dict().items())  # restored
    return {"model": model, "tok": tok, "dataset": pipeline["dataset"], "packed": packed, "stats": stats,
            "root": pipeline["root"], "pipeline": pipeline, "train_rows": train_rows}


def _heldout(tok, dataset, limit=16):
    from train.export import heldout_conversations, verification_inputs

    return verification_inputs(tok, heldout_conversations(dataset, limit=limit))


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


def test_calibrated_gguf_reloads_and_agrees_better_than_round_to_nearest(tuned, tmp_path):
    """Same file layout and tensor types as round-to-nearest Q4_0; transformers reloads exactly the calibrated
    blocks, and the reloaded model is closer to the merged one on held-out rows."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from train.export import all_logits, compare_logits
    from train.gguf_export import write_gguf

    model, tok, packed = tuned["model"], tuned["tok"], tuned["packed"]
    items = _heldout(tok, tuned["dataset"])
    reference = all_logits(model, items)
    results, infos = {}, {}
    for method, weights in (("none", None), ("gptq", packed)):
        infos[method] = write_gguf(model, tok, tmp_path / f"{method}.gguf", quant="Q4_0", name="t", q4_0_weights=weights)
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"{method}.gguf").eval()
        results[method] = compare_logits(reference, all_logits(reloaded, items), items, tie_tolerance=0.1)
        if method == "gptq":  # the file decodes to the calibrated weights (q/k permuted back by the reader)
            deq = _dequantized(model, packed)
            got = reloaded.state_dict()
            assert all(torch.equal(got[n], w) for n, w in deq.items())
    assert infos["gptq"]["tensor_types"] == infos["none"]["tensor_types"]
    assert infos["gptq"]["bytes"] == infos["none"]["bytes"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(tmp_path / "gptq.gguf")).tensors}
    assert types["token_embd.weight"] == types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    g, n = results["gptq"], results["none"]
    assert g["mean_abs_logit_diff"] < 0.9 * n["mean_abs_logit_diff"], (g, n)
    assert g["answer_top1_agreement_tie_aware"] >= n["answer_top1_agreement_tie_aware"], (g, n)


def test_export_stage_calibrates_deterministically(tuned):
    """The export stage with the default q4_calibration writes byte-identical Q4_0 files on a rerun, reports
    the calibration in its stats and the model card, and fingerprints the options."""
    from train.config import ExportConfig
    from train.export import ExportStage

    pipeline, root = tuned["pipeline"], tuned["root"]
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"]}
    cfg = ExportConfig(model_name="cal", quantizations=["Q4_0"], ollama_quantization="Q4_0", min_top1={"Q4_0": 0.0},
                       keep_merged=False, verify_prompts=8, parity_samples=2, threads=2)
    digests = []
    for name in ("export-a", "export-b"):
        stats = ExportStage(cfg).run(make_ctx(root, name, ins))
        files = json.loads((root / name / "export.json").read_text())["files"]
        digests.append(hashlib.sha256((root / name / "cal-Q4_0.gguf").read_bytes()).hexdigest())
        assert files[0]["sha256"] == digests[-1]
    assert digests[0] == digests[1]
    assert stats["q4_calibration"] == "gptq" and stats["q4_calibration_seconds"] > 0
    n = tuned["train_rows"]
    assert files[0]["q4_calibration"]["sequences"] == n and files[0]["q4_calibration"]["damp"] == 0.01
    assert f"GPTQ with full-precision targets on {n} train-split conversations" in (root / "export-b" / "README.md").read_text()
    fp = cfg.fingerprint_dict()
    for key, value in (("q4_calibration", "none"), ("calibration_rows", 7), ("calibration_max_length", 64),
                       ("calibration_damp", 0.1)):
        assert cfg.model_copy(update={key: value}).fingerprint_dict() != fp


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3"])
def test_other_architectures_calibrate_and_reload(architecture, tmp_path):
    """Qwen2 (q/k/v biases) and Gemma 3 (sandwich norms, q/k norms, sliding + full attention, tied embeddings):
    the calibration finds their linears, and the calibrated file reloads closer to the model than
    round-to-nearest."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.export import all_logits, compare_logits
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
    items = _heldout(tok, dataset, limit=8)
    reference = all_logits(model, items)
    diffs = {}
    for method, weights in (("none", None), ("gptq", packed)):
        write_gguf(model, tok, tmp_path / "out" / f"{method}.gguf", quant="Q4_0", name="t", q4_0_weights=weights)
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), gguf_file=f"{method}.gguf").eval()
        diffs[method] = compare_logits(reference, all_logits(reloaded, items), items)["mean_abs_logit_diff"]
    assert diffs["gptq"] < diffs["none"], diffs
