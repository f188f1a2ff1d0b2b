"""Eval vs base, merge, GGUF export + verification, Ollama Modelfile, model card."""

from __future__ import annotations

import json

import pytest

from train.config import EvalConfig, ExportConfig
from schemas.errors import StageError
from tests.train.conftest import make_ctx
from train.evaluate import EvalStage, exact_match, rouge_l, token_f1


def test_answer_metrics():
    assert exact_match("The port is 8443!", "the port is 8443") == 1.0
    assert token_f1("port 8443 open", "port 8443") == pytest.approx(0.8)
    assert rouge_l("rotate key then redeploy", "rotate the key and then redeploy") == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert token_f1("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0


@pytest.fixture(scope="module")
def evaluated(pipeline):
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"]}
    stats = EvalStage(EvalConfig(max_new_tokens=16, threads=2)).run(make_ctx(pipeline["root"], "eval", ins))
    return stats


def test_eval_compares_base_and_tuned_in_the_card(evaluated, pipeline):
    d = pipeline["root"] / "eval"
    res = json.loads((d / "eval.json").read_text())["results"]
    assert set(res) == {"base", "tuned"}
    for name in ("base", "tuned"):
        assert {"loss", "perplexity", "exact_match", "token_f1", "rouge_l"} <= set(res[name])
    md = (d / "eval.md").read_text()
    assert "| perplexity |" in md and "| rouge_l |" in md and "eval.png" in md
    assert (d / "eval.png").exists() and len((d / "samples.jsonl").read_text().splitlines()) == evaluated["rows"]


@pytest.fixture(scope="module")
def exported(pipeline, evaluated):
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"],
           "eval": pipeline["root"] / "eval"}
    stats = ExportStage_run(ExportConfig(model_name="tiny-test", threads=2), pipeline["root"], ins)
    return stats, pipeline["root"] / "export"


def ExportStage_run(cfg, root, ins):
    from train.export import ExportStage

    return ExportStage(cfg).run(make_ctx(root, "export", ins))


def test_merge_equals_adapter_applied_model(exported):
    stats, _ = exported
    assert stats["merge_max_abs_logit_diff"] < 1e-4


def test_every_file_verified_in_llama_cpp(exported):
    """Default files: F16 (ours), Q8_0 and Q4_K_M (llama.cpp's quantiser), each loaded in llama.cpp and compared
    with the merged model over the held-out split; F16 matches it (KLD <= 1e-3), coarser files move further."""
    import gguf

    stats, d = exported
    report = json.loads((d / "export.json").read_text())
    files = {f["file"]: f for f in report["files"]}
    assert set(files) == {"tiny-test-F16.gguf", "tiny-test-Q8_0.gguf", "tiny-test-Q4_K_M.gguf"}
    assert all(f["passed"] and f["tokenizer"]["failed"] == 0 for f in files.values())
    f16, q8, q4 = (files[f"tiny-test-{q}.gguf"] for q in ("F16", "Q8_0", "Q4_K_M"))
    assert report["verify_tokens"] > 500 and f16["verify"]["tokens"] == report["verify_tokens"]
    assert f16["verify"]["kld_mean"] <= 1e-3 and f16["verify"]["top1"] >= 0.99
    assert f16["verify"]["kld_mean"] < q8["verify"]["kld_mean"] < q4["verify"]["kld_mean"]
    assert 15.5 < f16["bits_per_weight"] < 16.5 and q4["bits_per_weight"] < q8["bits_per_weight"] < 9
    assert f16["tokenizer"]["add_bos"] and f16["tokenizer"]["end_of_turn"] == "<|im_end|>"
    gen = report["generation"]
    assert gen["failed"] == 0 and gen["conversations"] == 10 and gen["stopped_at_end_of_turn"] == gen["checked"], gen
    assert "Q8_0" in {t.tensor_type.name for t in gguf.GGUFReader(str(d / "tiny-test-Q8_0.gguf")).tensors}
    assert stats["tiny-test-F16.gguf:kld"] <= 1e-3


def test_gguf_metadata_and_stripped_template(exported):
    import gguf

    _, d = exported
    reader = gguf.GGUFReader(str(d / "tiny-test-Q8_0.gguf"))
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    assert "{% generation %}" not in template and "<|im_start|>" in template
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 0


def test_model_card_and_modelfile(exported):
    _, d = exported
    card = (d / "README.md").read_text()
    assert "## Evaluation (base vs tuned)" in card and "## Export verification (in llama.cpp)" in card
    assert "| tiny-test-Q4_K_M.gguf | " in card and "| KLD mean | KLD p99 | top-1 | PPL ratio |" in card
    assert card.count("| PASS |") == 3
    modelfile = (d / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-test-Q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (d / "merged" / "config.json").exists() and (d / "loss.png").exists()


def test_damaged_files_fail_the_gates(exported, pipeline, tmp_path):
    """A file with one tensor scaled fails its KLD gate; a file that does not add BOS (the Gemma-3 bug) fails the
    tokenizer check in llama.cpp while transformers-style comparisons on shared token ids would not see it."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.config import ExportConfig
    from train.export import gate_failures, heldout_conversations, token_sequences
    from train.gguf_export import write_gguf
    from train.inputs import load_tokenizer
    from train.llama_cpp import GGUFModel
    from train.verify import tokenizer_check, verify_files

    _, d = exported
    tok = load_tokenizer(pipeline["base"] / "model")
    merged = AutoModelForCausalLM.from_pretrained(str(d / "merged")).eval()
    convs = heldout_conversations(pipeline["dataset"])
    seqs = token_sequences(tok, convs, tokens=4096, max_length=512)
    scaled = AutoModelForCausalLM.from_pretrained(str(d / "merged")).eval()
    with torch.no_grad():
        scaled.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    write_gguf(scaled, tok, tmp_path / "scaled-F16.gguf", quant="F16", name="scaled")
    no_bos = tok.chat_template.replace("{{ bos_token }}", "")
    write_gguf(merged, tok, tmp_path / "nobos-F16.gguf", quant="F16", name="nobos", chat_template=no_bos)
    res = verify_files(merged, seqs, [tmp_path / "scaled-F16.gguf", d / "tiny-test-F16.gguf"], threads=2)
    gate = ExportConfig().gates["F16"]
    assert gate_failures(res["tiny-test-F16.gguf"], gate) == []
    problems = gate_failures(res["scaled-F16.gguf"], gate)
    assert any(p.startswith("mean KLD") for p in problems), res["scaled-F16.gguf"]
    with GGUFModel(tmp_path / "nobos-F16.gguf", vocab_only=True) as m:
        check = tokenizer_check(m, tok, convs[:4])
    assert not check["add_bos"] and check["failed"] > 0 and "BOS 0 times" in check["failures"][0]


def test_failing_gate_fails_the_stage_after_the_card(pipeline, exported, tmp_path):
    """A gate the Q4_K_M file cannot meet fails the stage, names the file and statistic, and the card says FAIL;
    the statistics do not depend on which other files were verified beside it."""
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"]}
    cfg = ExportConfig(model_name="tiny-test", quantizations=["Q4_K_M"], ollama_quantization="Q4_K_M", keep_merged=False, threads=2,
                       generation_checks=0,
                       gates={"Q4_K_M": {"max_kld_mean": 1e-6, "max_kld_p99": 1.0, "min_top1": 0.0, "max_ppl_ratio": 2.0}})
    with pytest.raises(StageError, match=r"verification failed: tiny-test-Q4_K_M\.gguf: mean KLD [0-9.e-]+ > 1e-06"):
        ExportStage_run(cfg, tmp_path, ins)
    assert "| FAIL |" in (tmp_path / "export" / "README.md").read_text()
    alone = json.loads((tmp_path / "export" / "export.json").read_text())["files"]
    kept = json.loads((exported[1] / "export.json").read_text())["files"]
    assert [f["file"] for f in alone] == ["tiny-test-Q4_K_M.gguf"]
    assert alone[0]["verify"] == next(f for f in kept if f["file"] == "tiny-test-Q4_K_M.gguf")["verify"]
    assert not (tmp_path / "export" / "tiny-test-F16.gguf").exists()  # F16 not requested: written to _work, removed
