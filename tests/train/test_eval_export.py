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


def test_gguf_round_trip_agreement(exported):
    stats, d = exported
    files = {f["file"]: f for f in json.loads((d / "export.json").read_text())["files"]}
    assert set(files) == {"tiny-test-F16.gguf", "tiny-test-Q8_0.gguf", "tiny-test-Q4_0.gguf"}
    assert all(f["passed"] and f["parity"]["differences"] == 0 for f in files.values())
    f16, q8, q4 = (files[f"tiny-test-{q}.gguf"]["verify"] for q in ("F16", "Q8_0", "Q4_0"))
    # gated (tie-aware, next token after each held-out prompt) targets of the issue: F16 and Q8_0 100 %, Q4_0 >= 97 %
    assert all(files[f"tiny-test-{q}.gguf"]["verify_on"] == "prompt_end" for q in ("F16", "Q8_0", "Q4_0"))
    assert f16["prompt_end_top1_agreement_tie_aware"] == 1.0 and q8["prompt_end_top1_agreement_tie_aware"] == 1.0
    assert q4["prompt_end_top1_agreement_tie_aware"] >= 0.97
    assert q4["prompt_end_top1_agreement"] <= q4["prompt_end_top1_agreement_tie_aware"]
    # reported: every answer position (teacher-forced); F16 is exact there too, Q4_0 is the loosest file
    assert f16["answer_top1_agreement"] >= 0.99 and f16["max_abs_logit_diff"] < 0.05
    assert q4["positions"] > 10 * q4["prompts"] and q4["answer_top1_agreement"] <= f16["answer_top1_agreement"]
    assert q8["mean_cosine"] > 0.999
    assert files["tiny-test-F16.gguf"]["pre_tokenizer"] == "gpt-2"
    assert files["tiny-test-Q4_0.gguf"]["tensor_types"]["Q4_0"] > 0


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
    assert "## Evaluation (base vs tuned)" in card and "## Export verification" in card and "PASS" in card
    modelfile = (d / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-test-Q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (d / "merged" / "config.json").exists() and (d / "loss.png").exists()


def test_parity_gate_catches_a_changed_template_in_the_gguf(exported, pipeline):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.chat import CHATML_TEMPLATE, parity_gate
    from train.gguf_export import write_gguf

    _, d = exported
    from train.inputs import load_tokenizer

    tok = load_tokenizer(pipeline["base"] / "model")
    model = AutoModelForCausalLM.from_pretrained(str(d / "merged"))
    changed = CHATML_TEMPLATE.replace("'<|im_start|>' + message['role'] + '\\n'", "message['role'] + ': '")
    out = pipeline["root"] / "changed"
    write_gguf(model, tok, out / "m.gguf", quant="F16", name="changed", chat_template=changed)
    gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file="m.gguf")
    conv = [{"role": "user", "content": "Which port?"}, {"role": "assistant", "content": "8443"}]
    with pytest.raises(StageError, match="parity failed"):
        parity_gate(tok, gguf_tok, [conv], where="m.gguf")


def test_failing_verification_fails_the_stage(pipeline, exported, tmp_path):
    """Also: with no memory for the merged model's logits (recomputed for each file and conversation) the
    verification is the same as with all of them kept (the ``exported`` run)."""
    ins = {"dataset": pipeline["dataset"], "base": pipeline["base"], "train": pipeline["train"]}
    cfg = ExportConfig(quantizations=["Q4_0"], ollama_quantization="Q4_0", min_top1={"Q4_0": 1.01}, keep_merged=False,
                       threads=2, logits_memory_mb=0)
    with pytest.raises(StageError, match=r"verification failed: .*95 % interval 0\.\d+-[01]\.\d+\) < required 1\.01"):
        ExportStage_run(cfg, tmp_path, ins)
    assert "FAIL" in (tmp_path / "export" / "README.md").read_text()
    streamed = json.loads((tmp_path / "export" / "export.json").read_text())
    kept = json.loads((exported[1] / "export.json").read_text())
    q4 = next(f for f in kept["files"] if f["file"] == "tiny-test-Q4_0.gguf")
    assert streamed["files"][0]["verify"] == q4["verify"]
    assert streamed["merge_check_prompts"] == 1 and kept["merge_check_prompts"] == q4["verify"]["prompts"]
