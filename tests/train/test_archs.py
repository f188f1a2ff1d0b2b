"""Every architecture the exporter writes, judged by llama.cpp: a tiny random model of each, built from a
config, exported to F16 GGUF with our writer, loaded with llama.cpp (``llama_cpp``); the same token ids give
the same logits, and llama.cpp tokenizes the rendered chat template and plain text to the ids training
used, BOS exactly once."""

from __future__ import annotations

import copy

import pytest

from schemas.errors import ConfigError
from tests.train.archs_util import build_model, chat_ids, compare, conversations, open_llama, tokenizer

pytest.importorskip("llama_cpp")

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
PHI3_ROPE = {"rope_type": "longrope", "rope_theta": 10000.0,
             "short_factor": [1.0, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0, 2.5], "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]}

#: case -> (transformers config prefix, tokenizer family, config overrides)
CASES = {
    "llama": ("Llama", "gpt2", {}),
    "llama3-rope-tied": ("Llama", "llama3", {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": True}),
    "llama-rope-linear": ("Llama", "llama3", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                                   "factor": 4.0}}),
    "mistral-sliding-window": ("Mistral", "mistral", {"sliding_window": 96}),
    "qwen2": ("Qwen2", "qwen", {}),
    "qwen3": ("Qwen3", "qwen", {"head_dim": 32}),
    "gemma2": ("Gemma2", "gemma", {"num_hidden_layers": 4, "head_dim": 32, "query_pre_attn_scalar": 32,
                                   "sliding_window": 8, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}),
    "gemma3": ("Gemma3Text", "gemma", {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32,
                                       "sliding_window": 8}),
    "phi3": ("Phi3", "phi3", {}),
}
PLAIN = "Restart the sync worker, then replay the dead-letter queue: 5000 events in 400 days."


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    from train.gguf_export import write_gguf

    arch, family, overrides = CASES[request.param]
    tok = tokenizer(family)
    model = build_model(arch, tok, **copy.deepcopy(overrides))
    path = tmp_path_factory.mktemp(request.param) / "m-F16.gguf"
    info = write_gguf(model, tok, path, quant="F16", name="tiny")
    llm = open_llama(path, n_ctx=min(256, info["context_length"]))
    yield {"case": request.param, "tok": tok, "model": model, "info": info, "llm": llm, "family": family}
    llm.close()


def test_logits_match_transformers(exported):
    """Same ids in, same next-token distributions out (F16 weights: KLD and logit differences of rounding)."""
    stats = [compare(exported["model"], exported["llm"], chat_ids(exported["tok"], c)[1]) for c in conversations()]
    worst = {k: max(s[k] for s in stats) for k in stats[0]}
    assert worst["kld_max"] < 1e-4 and worst["max_abs"] < 0.05, (exported["case"], worst)
    assert min(s["logit_std"] for s in stats) > 0.3  # the logits have structure, so the comparison bites


def test_chat_template_tokenizes_to_training_ids_bos_once(exported):
    tok, llm, info = exported["tok"], exported["llm"], exported["info"]
    bos = tok.bos_token_id
    assert info["add_bos_token"] == (bos is not None)  # every template here renders BOS first when there is one
    for conv in conversations():
        for gen in (False, True):
            msgs = conv[:-1] if gen else conv
            text, ids = chat_ids(tok, msgs, generation_prompt=gen)
            if bos is not None:
                assert ids.count(bos) == 1 and ids[0] == bos
            # llama-cpp-python's chat handler: the rendered template (its BOS included), no BOS added
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, (exported["case"], text)
            # llama-server / Ollama: the template's leading BOS left out, llama.cpp adds BOS per add_bos_token
            if bos is not None:
                text = text.removeprefix(tok.bos_token)
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids, (exported["case"], text)


def test_plain_text_tokenizes_to_training_ids(exported):
    """Plain text as training's replay rows see it: BOS (when the file adds it), then the text."""
    tok, llm, info = exported["tok"], exported["llm"], exported["info"]
    bos = [tok.bos_token_id] if info["add_bos_token"] else []
    ours = llm.tokenize(PLAIN.encode(), add_bos=True, special=False)
    theirs = bos + tok(PLAIN, add_special_tokens=False)["input_ids"]
    if exported["family"] in ("mistral", "phi3"):
        # transformers 5 prefixes "▁" only to text at the very start of a string (prepend_scheme "first"); GGUF's
        # add_space_prefix is all or nothing and is off so that chat prompts match; plain text lacks the prefix
        assert info["add_space_prefix"] is False and ours != theirs
        assert llm.tokenize((" " + PLAIN).encode(), add_bos=True, special=False) == theirs
    else:
        assert ours == theirs


def test_file_layout(exported):
    import gguf

    case, info, model = exported["case"], exported["info"], exported["model"]
    reader = gguf.GGUFReader(exported["llm"].model_path)
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not model.config.tie_word_embeddings)
    expected = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                "gemma3": "gemma3", "phi3": "phi3"}[case.split("-")[0].replace("llama3", "llama")]
    assert info["architecture"] == expected
    if case.startswith("llama3") or case == "llama-rope-linear":
        assert "rope_freqs.weight" in names
    if case == "phi3":
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names and "blk.0.ffn_gate.weight" not in names
    if case == "qwen3":
        assert "blk.0.attn_q_norm.weight" in names
    if case == "mistral-sliding-window":  # llama.cpp's llama graph has no window: the context is the window
        assert info["context_length"] == 96 and "sliding_window" in info["context_length_note"]
    pre = {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen": "qwen2"}.get(exported["family"], "default")
    assert info["pre_tokenizer"] == pre


def test_phi3_longrope_short_and_long_factors(tmp_path):
    """LongRoPE: transformers picks the long factors when the *sequence* passes the original context, llama.cpp
    when its *context size* does (``n_ctx`` is a multiple of 256). Both agree on both sides of that line: n_ctx
    256 = the original context with a short sequence (short factors), n_ctx 512 with a 300-token sequence (long).
    transformers' Phi3Config takes the original context from its own field (and rewrites rope_parameters)."""
    from train.gguf_export import write_gguf

    tok = tokenizer("phi3")
    model = build_model("Phi3", tok, rope_parameters=copy.deepcopy(PHI3_ROPE), max_position_embeddings=1024,
                        original_max_position_embeddings=256)
    info = write_gguf(model, tok, tmp_path / "p.gguf", quant="F16", name="tiny")
    assert info["tensor_types"]["F32"] >= 2  # rope_factors_long / _short
    ids = chat_ids(tok, conversations()[0])[1]
    for n_ctx, seq in ((256, ids), (512, (ids * 12)[:300])):
        llm = open_llama(tmp_path / "p.gguf", n_ctx=n_ctx)
        try:
            stats = compare(model, llm, seq)
        finally:
            llm.close()
        assert stats["kld_max"] < 1e-4 and stats["max_abs"] < 0.05, (n_ctx, len(seq), stats)


@pytest.mark.parametrize("arch,family,overrides,match", [
    ("Gemma2", "gemma", {"head_dim": 32, "query_pre_attn_scalar": 64}, "query_pre_attn_scalar"),
    ("Gemma3Text", "gemma", {"head_dim": 32, "query_pre_attn_scalar": 32, "attn_logit_softcapping": 20.0},
     "attn_logit_softcapping"),
    ("Llama", "gpt2", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                           "original_max_position_embeddings": 32}}, "rope_type"),
    ("Qwen2", "qwen", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
])
def test_settings_llama_cpp_cannot_carry_are_refused(tmp_path, arch, family, overrides, match):
    from train.gguf_export import write_gguf

    tok = tokenizer(family)
    model = build_model(arch, tok, **copy.deepcopy(overrides))
    with pytest.raises(ConfigError, match=match):
        write_gguf(model, tok, tmp_path / "x.gguf", quant="F16", name="x")
    assert not (tmp_path / "x.gguf").exists()


def test_a_name_that_changes_llama_cpp_tokenization_is_refused(tmp_path):
    """llama.cpp strips whitespace after special tokens of a model *named* like Phi-3; our tokenizer does not."""
    from train.gguf_export import write_gguf

    tok = tokenizer("phi3")
    model = build_model("Phi3", tok)
    with pytest.raises(ConfigError, match="without 'phi3'"):
        write_gguf(model, tok, tmp_path / "x.gguf", quant="F16", name="My-Phi3-finetune")


@pytest.mark.parametrize("arch,family", [("Llama", "gpt2"), ("Gemma3Text", "gemma"), ("Phi3", "phi3")])
def test_block_wise_streaming_writes_the_same_bytes(tmp_path, monkeypatch, arch, family):
    """Big tensors are converted a block of rows at a time (Llama's q/k, permuted across heads, whole): the file
    is byte-identical to one written a tensor at a time, for F16 and the gguf quantisers, from a bf16 model too."""
    import torch

    import train.gguf_export as ge

    tok = tokenizer(family)
    overrides = {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8} if arch == "Gemma3Text" else {}
    model = build_model(arch, tok, **overrides)
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        for quant in ("F16", "Q8_0"):
            whole, blocks = tmp_path / f"whole-{quant}.gguf", tmp_path / f"blocks-{quant}.gguf"
            ge.write_gguf(m, tok, whole, quant=quant, name="tiny")
            monkeypatch.setattr(ge, "BLOCK_VALUES", 64 * 3)  # a few rows per block, not a divisor of the row count
            ge.write_gguf(m, tok, blocks, quant=quant, name="tiny")
            monkeypatch.undo()
            assert whole.read_bytes() == blocks.read_bytes(), (arch, dtype, quant)
