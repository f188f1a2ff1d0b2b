"""The export stage on a base model read from a GGUF (a tiny Gemma 3 published as Q8_0, read back by the
base_model step with ``gguf_file:``): besides the merged files it writes the base GGUF's tensors unchanged + the
LoRA as a llama.cpp adapter GGUF, verifies the pair in llama.cpp against the merged model, gates it, lists it in
the model card and points the Modelfile at it (``FROM`` + ``ADAPTER``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train.conftest import build_base, build_dataset, gguf_published_base, make_ctx

pytest.importorskip("llama_cpp")

GEMMA_TINY = {"num_layers": 6, "num_heads": 2, "num_kv_heads": 1, "sliding_window": 8, "pretrain_steps": 20}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from train.config import ExportConfig, TrainConfig
    from train.export import ExportStage
    from train.sft import TrainStage

    root = tmp_path_factory.mktemp("baselora")
    dataset = build_dataset(root)
    tiny = build_base(root, name="tiny", architecture="gemma3", **GEMMA_TINY)
    gguf_published_base(root, tiny)
    TrainStage(TrainConfig(max_steps=6, learning_rate=3e-3, batch_size=8, rank=8, alpha=16, threads=2)).run(
        make_ctx(root, "train", {"dataset": dataset, "base": root / "base"}))
    cfg = ExportConfig(model_name="gemma-tiny", quantizations=["F16", "Q8_0"], keep_merged=False, tokenizer_samples=4,
                       generation_checks=2, threads=2, ollama_quantization="base+lora", base_gguf=True,
                       tensor_types={"Q8_0": {"token_embedding_type": "F16"}})
    stats = ExportStage(cfg).run(make_ctx(root, "export", {"dataset": dataset, "base": root / "base",
                                                           "train": root / "train"}))
    return {"root": root, "out": root / "export", "stats": stats, "published": root / "published" / "tiny-Q8_0.gguf",
            "export": json.loads((root / "export" / "export.json").read_text())}


def test_base_and_adapter_pair_verified_in_llama_cpp(exported):
    files = {f["file"]: f for f in exported["export"]["files"]}
    pair = exported["export"]["base_lora"]
    assert set(files) == {"gemma-tiny-F16.gguf", "gemma-tiny-Q8_0.gguf"}  # the pair is not a file of its own
    assert pair["file"] == "gemma-tiny-base-Q8_0.gguf"
    assert pair["adapter"] == "gemma-tiny-lora-F16.gguf" and pair["type"] == "Q8_0 base + F16 LoRA"
    assert pair["tokenizer"]["failed"] == 0 and pair["tokenizer"]["add_bos"], pair["tokenizer"]
    assert pair["passed"] and pair["gate"]["max_kld_mean"] == 0.01, pair
    v, q8 = pair["verify"], files["gemma-tiny-Q8_0.gguf"]["verify"]
    # top-1 on this 20-step tiny model is decided by near-ties and depends on the CPU's kernels: >= 0.99 on the
    # earlier CI machines (no AMX), 0.9859 (11 of 780 positions flip; KLD 1.0e-4) on an AMX Xeon with the plain
    # CPU buffers it needs (train/llama_cpp.extra_buffers); the KLD bound is the closeness claim
    assert v["kld_mean"] <= 1e-3 and v["top1"] >= 0.98, v
    assert v["tokens"] == q8["tokens"] > 100  # same positions as every file
    assert pair["lora"]["adapted_tensors"] == 7 * 6 and pair["lora"]["alpha"] == 16.0
    assert "gemma-tiny-base-Q8_0.gguf + gemma-tiny-lora-F16.gguf:kld" in exported["stats"]


def test_base_file_is_the_published_tensors_with_our_metadata(exported):
    import gguf

    src = {t.name: t for t in gguf.GGUFReader(str(exported["published"])).tensors}
    out = gguf.GGUFReader(str(exported["out"] / "gemma-tiny-base-Q8_0.gguf"))
    assert {t.name for t in out.tensors} == src.keys()
    for t in out.tensors:
        assert t.tensor_type == src[t.name].tensor_type and np.array_equal(np.asarray(t.data), np.asarray(src[t.name].data))
    assert out.get_field("general.file_type").contents() == 7  # MOSTLY_Q8_0, the source's
    assert out.get_field("tokenizer.ggml.add_bos_token").contents() is True


def test_card_modelfile_and_timings(exported):
    card = (exported["out"] / "README.md").read_text()
    modelfile = (exported["out"] / "Modelfile").read_text()
    assert "| gemma-tiny-base-Q8_0.gguf + gemma-tiny-lora-F16.gguf |" in card and "--lora gemma-tiny-lora-F16.gguf" in card
    assert modelfile.startswith("FROM ./gemma-tiny-base-Q8_0.gguf\nADAPTER ./gemma-tiny-lora-F16.gguf\n")
    timings = exported["export"]["timings"]
    for phase in ("merge and merge check", "F16 GGUF written", "Q8_0 written (llama.cpp)",
                  "base GGUF + LoRA adapter written", "tokenizer checks", "KLD verification", "stage total"):
        assert timings[phase] >= 0, phase
    assert timings["stage total"] >= sum(v for k, v in timings.items() if k != "stage total") * 0.99
    assert "## Export time" in card


def test_base_lora_needs_a_gguf_base(tmp_path):
    from schemas.errors import ConfigError
    from train.config import ExportConfig

    with pytest.raises(ConfigError, match="base_gguf"):
        ExportConfig(ollama_quantization="base+lora", base_gguf=False)


def test_tensor_type_overrides_are_applied_and_shown(exported):
    """tensor_types: llama.cpp's quantiser keeps token_embd in F16 in the Q8_0 file; the card says so."""
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(exported["out"] / "gemma-tiny-Q8_0.gguf")).tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q.weight"] == "Q8_0", types
    q8 = next(f for f in exported["export"]["files"] if f["file"] == "gemma-tiny-Q8_0.gguf")
    assert q8["tensor_types"] == {"token_embedding_type": "F16", "tensor_types": {}}
    assert "gemma-tiny-Q8_0.gguf (types set: token_embd F16)" in (exported["out"] / "README.md").read_text()


def test_tensor_types_only_for_llama_cpp_files():
    from schemas.errors import ConfigError
    from train.config import ExportConfig

    with pytest.raises(ConfigError, match="tensor_types"):
        ExportConfig(tensor_types={"Q4_0": {"token_embedding_type": "F16"}})
