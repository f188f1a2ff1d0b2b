"""The llama.cpp runtime (train/llama_cpp.py) and the KLD statistics (train/verify.py) on a tiny real model:
tokenization as in training, F16 logits equal to transformers', greedy generation stopping at end-of-generation,
llama.cpp's quantiser (K-quants), and llama.cpp's importance matrix collected through the eval callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.train.conftest import ROOT

CONV = [{"role": "system", "content": "Answer from the runbooks."}, {"role": "user", "content": "Which port?"},
        {"role": "assistant", "content": "The tracking API listens on port 8443."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama whose widths are multiples of 256 (K-quant super-blocks), its tokenizer, its F16 GGUF."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.chat import train_bpe_tokenizer
    from train.gguf_export import write_gguf

    texts = [p.read_text() for p in sorted((ROOT / "data/sample/runbooks").glob("*.md"))]
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("llama_cpp")
    write_gguf(model, tok, d / "t-F16.gguf", quant="F16", name="t")
    ids = [tok.bos_token_id] + tok(" ".join(texts)[:3000], add_special_tokens=False)["input_ids"][:300]
    return {"dir": d, "tok": tok, "model": model, "f16": d / "t-F16.gguf", "ids": ids}


def test_tokenize_and_chat_ids_as_in_training(tiny):
    from train.llama_cpp import GGUFModel

    tok = tiny["tok"]
    with GGUFModel(tiny["f16"], vocab_only=True) as m:
        assert m.add_bos and m.bos == tok.bos_token_id and m.n_vocab == len(tok)
        text = "Restart the sync worker and replay the dead-letter queue."
        assert m.tokenize(text, add_special=True, parse_special=False) == [tok.bos_token_id] + tok(text)["input_ids"]
        for gen, msgs in ((False, CONV), (True, CONV[:-1])):
            rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert rendered.startswith("<s>")
            expected = list(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)["input_ids"])
            got = m.chat_ids(rendered)  # the template's own <s> is dropped, llama.cpp adds BOS: once
            assert got == expected and got.count(tok.bos_token_id) == 1
        # tokenize() itself does what it is told: special text parsed only on request
        assert m.tokenize("<|im_end|>", add_special=False, parse_special=True) == [tok.convert_tokens_to_ids("<|im_end|>")]
        assert len(m.tokenize("<|im_end|>", add_special=False, parse_special=False)) > 1
        assert m.is_eog(tok.convert_tokens_to_ids("<|im_end|>")) and not m.is_eog(tok.bos_token_id)
        assert m.detokenize(m.tokenize(text, add_special=False, parse_special=False)) == text


def test_f16_logits_equal_transformers_streamed_in_blocks(tiny):
    import torch

    from train.llama_cpp import GGUFModel
    from train.verify import KLDStats, reference_logp

    ids = tiny["ids"]
    with torch.no_grad():
        ref = tiny["model"](torch.tensor([ids])).logits[0].numpy()
    with GGUFModel(tiny["f16"], n_ctx=512, n_batch=64, threads=2) as m:
        blocks = list(m.logits(ids))
        assert [len(b) for b in blocks] == [64] * 4 + [len(ids) - 256]
        got = np.concatenate(blocks)
        assert got.shape == ref.shape and np.abs(got - ref).max() < 5e-3
        st = KLDStats()
        st.add(reference_logp(tiny["model"], ids)[:-1], got[:-1], ids[1:])
        r = st.result()
        assert r["tokens"] == len(ids) - 1 and r["kld_mean"] < 1e-5 and r["top1"] > 0.99
        assert r["ppl_ratio"] == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(Exception, match="longer than the context"):
            next(m.logits(ids * 2))


def test_kld_statistics_are_llama_cpp_definitions():
    import torch

    from train.verify import KLDStats, percentile

    g = torch.Generator().manual_seed(0)
    ref, cand = torch.randn(50, 40, generator=g), torch.randn(50, 40, generator=g)
    targets = torch.randint(0, 40, (50,), generator=g).tolist()
    st = KLDStats()
    ref_lp = torch.log_softmax(ref, -1)
    st.add(ref_lp[:20], cand[:20].numpy().copy(), targets[:20])  # add() works in place in the logits buffer
    st.add(ref_lp[20:], cand[20:].numpy().copy(), targets[20:])
    r = st.result()
    p, q = ref_lp.double().exp(), torch.softmax(cand.double(), -1)
    kld = (p * (p.log() - q.log())).sum(-1).numpy()
    assert r["kld_mean"] == pytest.approx(kld.mean(), rel=1e-5)
    assert r["kld_p99"] == pytest.approx(np.percentile(kld, 99), rel=1e-5)  # numpy's 'linear' = llama.cpp's interpolation
    assert r["kld_max"] == pytest.approx(kld.max(), rel=1e-5)
    assert r["top1"] == float((ref.argmax(-1) == cand.argmax(-1)).double().mean())
    nll_q = -q.log()[torch.arange(50), targets].mean()
    nll_p = -p.log()[torch.arange(50), targets].mean()
    assert r["ppl_ratio"] == pytest.approx(float(torch.exp(nll_q - nll_p)), rel=1e-5)
    assert percentile(np.array([0.0, 1.0, 2.0, 10.0]), 0.5) == 1.5


def test_generate_stops_at_end_of_generation_and_at_the_limit(tiny, tmp_path):
    import torch

    from train.gguf_export import write_gguf
    from train.llama_cpp import GGUFModel
    from train.verify import generation_check

    tok, model = tiny["tok"], tiny["model"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = list(tok.apply_chat_template(CONV[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    with GGUFModel(tiny["f16"], n_ctx=256, threads=2) as m:
        free = m.generate(prompt, max_new_tokens=12)
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=im_end,
                                 pad_token_id=im_end)[0, len(prompt):].tolist()
        assert free == ref  # greedy in llama.cpp == greedy in transformers (F16 file, same ids)
    biased = type(model)(model.config).eval()
    biased.load_state_dict(model.state_dict())
    with torch.no_grad():
        biased.lm_head.weight[im_end] = biased.model.embed_tokens.weight.abs().sum(0) * 50  # <|im_end|> always wins
    write_gguf(biased, tok, tmp_path / "stop-F16.gguf", quant="F16", name="stop")
    with GGUFModel(tmp_path / "stop-F16.gguf", n_ctx=256, threads=2) as m:
        assert m.generate(prompt, max_new_tokens=12) == [im_end]
        # the export's stop check: where the reference ends the answer, llama.cpp must end it too
        check = generation_check(m, biased, tok, [CONV], max_new_tokens=4)
        assert check["checked"] == 1 and check["stopped_at_end_of_turn"] == 1 and check["failed"] == 0
    with GGUFModel(tiny["f16"], n_ctx=256, threads=2) as m:  # a file that does not end where the reference does
        check = generation_check(m, biased, tok, [CONV], max_new_tokens=4)
        assert check["checked"] == 1 and check["failed"] == 1 and "ran to the limit" in check["failures"][0]


def test_llama_cpp_quantiser_writes_k_quants(tiny):
    import gguf

    from train.llama_cpp import GGUFModel, quantize

    sizes = {}
    for q in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"):
        path = tiny["dir"] / f"t-{q}.gguf"
        quantize(tiny["f16"], path, qtype=q, threads=2)
        types = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
        sizes[q] = path.stat().st_size
        with GGUFModel(path, vocab_only=True) as m:
            assert m.meta("general.file_type") == {"Q8_0": "7", "Q6_K": "18", "Q5_K_M": "17", "Q4_K_M": "15", "Q4_0": "2"}[q]
        expected = {"Q8_0": {"Q8_0"}, "Q6_K": {"Q6_K"}, "Q5_K_M": {"Q5_K", "Q6_K"}, "Q4_K_M": {"Q4_K", "Q6_K"},
                    "Q4_0": {"Q4_0"}}[q]
        assert expected <= types, (q, types)
    assert sizes["Q8_0"] > sizes["Q6_K"] > sizes["Q5_K_M"] > sizes["Q4_K_M"] > sizes["Q4_0"]
    with pytest.raises(Exception, match="unknown type"):
        quantize(tiny["f16"], tiny["dir"] / "x.gguf", qtype="Q3_K_S")


def test_quantiser_type_overrides(tiny):
    """``token_embedding_type`` and ``tensor_types`` (regex -> type) override llama.cpp's choice, as
    ``llama-quantize --token-embedding-type / --tensor-type`` do; the rest keeps the file type's mix."""
    import gguf

    from train.llama_cpp import quantize

    path = tiny["dir"] / "t-Q8_0-mixed.gguf"
    quantize(tiny["f16"], path, qtype="Q8_0", threads=2, token_embedding_type="F16", tensor_types={r"ffn_down": "Q6_K"})
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q6_K", types
    assert types["blk.0.attn_q.weight"] == types["output.weight"] == "Q8_0", types
    with pytest.raises(Exception, match="unknown tensor type"):
        quantize(tiny["f16"], path, qtype="Q8_0", tensor_types={"ffn": "Q9"})


def test_imatrix_is_llama_cpp_s_statistic_and_file_format(tiny):
    """The eval-callback imatrix equals the mean squared input of each linear measured in transformers, is written
    in llama.cpp's GGUF imatrix format, and steers the quantiser (lower imatrix-weighted rounding error)."""
    import gguf
    import torch

    from train.llama_cpp import quantize
    from train.llama_imatrix import collect_imatrix, save_imatrix

    model, ids = tiny["model"], tiny["ids"]
    seqs = [ids[:200], ids[100:300]]
    stats = collect_imatrix(tiny["f16"], seqs, threads=2, n_ctx=256)
    assert stats.sequences == 2 and stats.tokens == 400
    assert len(stats.sums) == 2 * 7 and "output.weight" not in stats.sums  # q k v o gate up down per layer
    assert stats.counts["blk.0.attn_q.weight"] == 400
    seen = {}
    hooks = [model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.setdefault("q", []).append(i[0][0])),
             model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.setdefault("down", []).append(i[0][0]))]
    with torch.no_grad():
        for s in seqs:
            model(torch.tensor([s]))
    for h in hooks:
        h.remove()
    means = stats.means()
    for key, name in (("q", "blk.0.attn_q.weight"), ("down", "blk.1.ffn_down.weight")):
        ref = (torch.cat(seen[key]) ** 2).mean(0).numpy()
        assert np.abs(means[name] - ref).max() <= 2e-3 * ref.max(), name
    path = tiny["dir"] / "t.imatrix.gguf"
    save_imatrix(stats, path, dataset="train split", chunk_size=256)
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "imatrix"
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 28 and tensors["blk.0.attn_q.weight.counts"].data.tolist() == [[400.0]]
    assert np.allclose(tensors["blk.0.attn_q.weight.in_sum2"].data[0], stats.sums["blk.0.attn_q.weight"], rtol=1e-6)

    plain, weighted = tiny["dir"] / "p-Q4_0.gguf", tiny["dir"] / "w-Q4_0.gguf"
    quantize(tiny["f16"], plain, qtype="Q4_0", threads=2)
    quantize(tiny["f16"], weighted, qtype="Q4_0", threads=2, imatrix=means)
    w = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    errors = {}
    for label, p in (("plain", plain), ("weighted", weighted)):
        t = next(t for t in gguf.GGUFReader(str(p)).tensors if t.name == "blk.0.ffn_down.weight")
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        errors[label] = float((((deq - w) ** 2) * means["blk.0.ffn_down.weight"][None, :]).sum())
    assert errors["weighted"] < errors["plain"]


def test_verify_files_reuses_given_reference_logits(tiny):
    """Reference logits passed in (the export's merge check computed them) give the same statistics as the
    reference's own pass; wrong ones would show."""
    import torch

    from train.verify import verify_files

    seqs = [tiny["ids"][:120], tiny["ids"][120:200], tiny["ids"][200:]]
    with torch.no_grad():
        cached = [tiny["model"](input_ids=torch.tensor([s])).logits[0].float() for s in seqs[:2]]
    fresh = verify_files(tiny["model"], seqs, [tiny["f16"]], threads=2, n_batch=32)["t-F16.gguf"]
    reused = verify_files(tiny["model"], seqs, [tiny["f16"]], threads=2, n_batch=32, reference_logits=cached)["t-F16.gguf"]
    for key in ("tokens", "kld_mean", "kld_p99", "top1", "ppl_ratio"):
        assert reused[key] == pytest.approx(fresh[key], rel=1e-6, abs=1e-12), key
    shifted = verify_files(tiny["model"], seqs, [tiny["f16"]], threads=2, reference_logits=[c * 2 for c in cached])
    assert shifted["t-F16.gguf"]["kld_mean"] > 100 * max(fresh["kld_mean"], 1e-9)


def _amx_cpu() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " amx_int8" in cpuinfo.read_text(errors="replace")


@pytest.mark.parametrize("forced", ["0", "1", None])
def test_extra_buffer_types_are_off_when_asked_or_on_an_amx_cpu(forced):
    """llama.cpp's AMX weight buffer segfaults on Gemma-3 Q8_0 files (upstream #20824): on a CPU with AMX every
    model this process loads, ours and llama_cpp.Llama's, gets plain CPU buffers; the variable forces either way."""
    import os
    import subprocess
    import sys

    code = ("import llama_cpp, train.llama_cpp as L; L.bindings(); "
            "print(llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts)")
    env = {k: v for k, v in os.environ.items() if k != "SLMFORGE_LLAMA_EXTRA_BUFFERS"}
    if forced is not None:
        env["SLMFORGE_LLAMA_EXTRA_BUFFERS"] = forced
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    expected = forced == "1" if forced is not None else not _amx_cpu()
    assert out.stdout.strip() == str(expected)
