"""LoRA SFT on a tiny Llama: loss falls, LoRA weights change, artifacts and resume."""

from __future__ import annotations

import json

import pytest

from train.config import TrainConfig
from schemas.errors import ConfigError
from tests.train.conftest import make_ctx
from train.sft import CPU_QLORA_WARNING, TrainStage, pack


def test_loss_falls_and_lora_weights_change(pipeline):
    from safetensors.numpy import load_file

    stats = pipeline["train_stats"]
    assert stats["method"] == "lora" and stats["device"] == "cpu"
    assert stats["last_loss"] < 0.5 * stats["first_loss"], stats
    assert stats["end_of_turn_token"] == "<|im_end|>" and stats["end_of_turn_checked_rows"] == stats["train_rows"]
    weights = load_file(str(pipeline["train"] / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(abs(v).max() > 0 for v in lora_b)  # lora_B starts at exactly zero


def test_cpu_default_warns_and_falls_back_to_lora(pipeline):
    assert pipeline["train_stats"]["warnings"] == [CPU_QLORA_WARNING]


def test_loss_curve_is_saved(pipeline):
    history = json.loads((pipeline["train"] / "loss.json").read_text())["history"]
    assert len([h for h in history if "loss" in h]) >= 10
    assert any("eval_loss" in h for h in history)
    assert (pipeline["train"] / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_resumes_from_its_checkpoint(pipeline, tmp_path):
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"]}
    first = TrainStage(TrainConfig(max_steps=4, save_steps=2, batch_size=8, threads=2)).run(make_ctx(tmp_path, "t", ins))
    assert first["resumed_from"] is None and first["steps"] == 4
    again = TrainStage(TrainConfig(max_steps=6, save_steps=2, batch_size=8, threads=2)).run(make_ctx(tmp_path, "t", ins))
    assert again["resumed_from"] == "checkpoint-4" and again["steps"] == 6


def test_unknown_target_module_is_a_config_error(pipeline, tmp_path):
    cfg = TrainConfig(max_steps=1, target_modules=["query_key_value"], threads=2)
    with pytest.raises(ConfigError, match="target_modules not found"):
        TrainStage(cfg).run(make_ctx(tmp_path, "t", {"dataset": pipeline["dataset"], "base": pipeline["base"]}))


def test_packing_concatenates_up_to_max_length():
    rows = [{"input_ids": [1] * 5, "labels": [1] * 5} for _ in range(5)]
    packed = pack(rows, max_length=12)
    assert [len(p["input_ids"]) for p in packed] == [10, 10, 5]


def test_validation_loss_is_computed_once_and_can_be_capped(pipeline, tmp_path):
    """The Trainer evaluates when max_steps ends training; the stage must not evaluate the same step again
    (on CPU with a 262k vocabulary each validation pass took minutes)."""
    stats = TrainStage(TrainConfig(max_steps=2, batch_size=4, threads=2, max_validation_rows=3)).run(
        make_ctx(tmp_path, "v", {"dataset": pipeline["dataset"], "base": pipeline["base"]}))
    history = json.loads((tmp_path / "v" / "loss.json").read_text())["history"]
    evals = [h for h in history if "eval_loss" in h]
    assert len(evals) == 1 and evals[0]["step"] == 2 and stats["validation_loss"] == evals[0]["eval_loss"]
    assert stats["validation_rows"] == 3


def test_adapter_scale_keeps_that_share_of_the_update(pipeline, tmp_path):
    """adapter_scale 0.5 saves lora_B x 0.5 of the same training run (weight-space interpolation toward the base);
    lora_A is unchanged, and the stats report the validation loss before and after."""
    from safetensors.numpy import load_file

    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"]}
    runs = {}
    for scale in (1.0, 0.5):
        cfg = TrainConfig(max_steps=3, batch_size=8, threads=2, max_validation_rows=4, adapter_scale=scale)
        stats = TrainStage(cfg).run(make_ctx(tmp_path, f"s{scale}", ins))
        runs[scale] = (stats, load_file(str(tmp_path / f"s{scale}" / "adapter" / "adapter_model.safetensors")))
    (full, w1), (half, w05) = runs[1.0], runs[0.5]
    assert w1.keys() == w05.keys() and any("lora_B" in k for k in w1)
    for k in w1:
        expected = w1[k] * 0.5 if "lora_B" in k else w1[k]
        assert abs(w05[k] - expected).max() <= 1e-6 * max(1.0, abs(w1[k]).max()), k
    assert half["adapter_scale"] == 0.5 and half["validation_loss_trained"] == full["validation_loss"]
    assert half["validation_loss"] != full["validation_loss"]
    assert full["validation_loss_trained"] == full["validation_loss"]


def test_adapter_scale_is_checked_before_any_work():
    with pytest.raises(Exception, match="adapter_scale"):
        TrainConfig(adapter_scale=1.5)
