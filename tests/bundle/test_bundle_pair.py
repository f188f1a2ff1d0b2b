"""The bundle carries the export's base GGUF + LoRA adapter pair (export ``base_gguf: true``) and ask/serve load it
through llama.cpp (``lora_path``): a tiny Llama published as a Q8_0 GGUF, read back by the base_model step with
``gguf_file:``, LoRA-tuned, exported with the pair, bundled with ``default_gguf: pair``, copied alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from schemas.errors import ConfigError
from tests.train.conftest import FACTS, build_base, build_dataset, gguf_published_base, make_ctx

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair_bundle(tmp_path_factory, index_dir):
    from train.bundle import BundleStage
    from train.bundle_config import BundleConfig
    from train.config import ExportConfig, TrainConfig
    from train.export import ExportStage
    from train.sft import TrainStage

    root = tmp_path_factory.mktemp("pairbundle")
    dataset = build_dataset(root)
    tiny = build_base(root, name="tiny", pretrain_steps=30)
    gguf_published_base(root, tiny)
    TrainStage(TrainConfig(max_steps=8, learning_rate=5e-3, batch_size=8, rank=8, alpha=16, threads=2)).run(
        make_ctx(root, "train", {"dataset": dataset, "base": root / "base"}))
    ExportStage(ExportConfig(model_name="tiny-pair", quantizations=["F16"], keep_merged=False, tokenizer_samples=4,
                             generation_checks=2, threads=2, base_gguf=True, ollama_quantization="base+lora")).run(
        make_ctx(root, "export", {"dataset": dataset, "base": root / "base", "train": root / "train"}))
    stats = BundleStage(BundleConfig(default_gguf="pair", k=2, max_new_tokens=16, link="copy")).run(
        make_ctx(root, "bundle", {"export": root / "export", "index": index_dir, "dataset": dataset}))
    copied = tmp_path_factory.mktemp("elsewhere") / "pair-bundle"
    shutil.copytree(root / "bundle" / "bundle", copied)
    (root / "export").rename(root / "moved-export")  # nothing is left where the bundle was built from
    return {"root": root, "bundle": copied, "stats": stats, "export": root / "moved-export"}


def test_the_pair_is_carried_and_listed(pair_bundle):
    b = pair_bundle["bundle"]
    manifest = json.loads((b / "bundle.json").read_text())
    assert manifest["format_version"] == 2 and manifest["default_gguf"] == "pair"
    assert manifest["pair"] == {"base": "tiny-pair-base-Q8_0.gguf", "adapter": "tiny-pair-lora-F16.gguf",
                                "type": "Q8_0 base + F16 LoRA"}
    assert manifest["ggufs"] == ["tiny-pair-F16.gguf"]
    for name in ("tiny-pair-base-Q8_0.gguf", "tiny-pair-lora-F16.gguf", "tiny-pair-F16.gguf"):
        assert manifest["files"][name]["bytes"] == (b / name).stat().st_size > 0
    assert pair_bundle["stats"]["pair"] == "tiny-pair-base-Q8_0.gguf + tiny-pair-lora-F16.gguf"
    card = (b / "README.md").read_text()
    assert "`tiny-pair-base-Q8_0.gguf` + adapter `tiny-pair-lora-F16.gguf`" in card
    # the chat template is the one stored in the base GGUF the pair loads
    assert "<|im_start|>" in (b / "chat_template.jinja").read_text()


def _last_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)


def test_the_pair_runs_the_adapter_in_llama_cpp(pair_bundle):
    """The pair's logits match the merged F16 file's, and differ from the base GGUF's without the adapter."""
    import llama_cpp

    from train.answer import Reader
    from train.bundle import open_bundle

    bundle = open_bundle(pair_bundle["bundle"])
    pair = Reader(bundle, threads=2).load()
    merged = Reader(bundle, gguf="F16", threads=2).load()
    base = llama_cpp.Llama(model_path=str(pair.gguf), n_ctx=pair.n_ctx, n_threads=2, verbose=False)
    try:
        assert pair.lora is not None and pair.model_name == "tiny-pair-base-Q8_0+tiny-pair-lora-F16"
        for q, _ in FACTS[:3]:
            messages = pair.format.render_messages(q + "?", pair.retrieve(q, 2))
            ids = pair.prompt_ids(messages)
            assert ids == merged.prompt_ids(messages)
            lp, lm, lb = _last_logits(pair.llm, ids), _last_logits(merged.llm, ids), _last_logits(base, ids)
            with_adapter, without = np.abs(lp - lm).max(), np.abs(lb - lm).max()
            assert with_adapter < 0.25 * without, (with_adapter, without)
    finally:
        pair.close()
        merged.close()
        base.close()


def test_ask_and_serve_load_the_pair_from_the_copied_folder(pair_bundle, tmp_path, monkeypatch):
    from slmforge.cli import app
    from slmforge.serve import completion
    from train.answer import open_reader

    monkeypatch.chdir(tmp_path)
    q, _ = FACTS[0]
    res = CliRunner().invoke(app, ["ask", "-b", str(pair_bundle["bundle"]), q + "?", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "passages" in res.output and "runbooks/doc0.md" in res.output
    reader = open_reader(pair_bundle["bundle"], gguf="pair", threads=2)
    try:
        out = completion(reader, {"messages": [{"role": "user", "content": q + "?"}], "max_tokens": 4})
        assert out["model"] == "tiny-pair-base-Q8_0+tiny-pair-lora-F16" and out["usage"]["completion_tokens"] <= 4
    finally:
        reader.close()


def test_pair_choices_that_do_not_exist_fail_clearly(pair_bundle, tmp_path):
    from schemas.errors import StageError
    from train.bundle import BundleStage, open_bundle
    from train.bundle_config import BundleConfig

    with pytest.raises(ConfigError, match="no such file") as err:
        open_bundle(pair_bundle["bundle"]).model("Q4_K_M")
    assert "F16, pair" in str(err.value)
    # an export without the pair: default_gguf pair is refused at build time, --gguf pair at load time
    plain = tmp_path / "export"
    shutil.copytree(pair_bundle["export"], plain)
    meta = json.loads((plain / "export.json").read_text())
    (plain / "export.json").write_text(json.dumps({**meta, "base_lora": None}))
    with pytest.raises(ConfigError, match="base_gguf: true"):
        BundleStage(BundleConfig(default_gguf="pair")).run(make_ctx(tmp_path, "b1", {"export": plain}))
    BundleStage(BundleConfig(link="copy", max_new_tokens=8)).run(make_ctx(tmp_path, "b2", {"export": plain}))
    assert json.loads((tmp_path / "b2" / "bundle" / "bundle.json").read_text())["pair"] is None
    with pytest.raises(ConfigError, match="carries no base GGUF"):
        open_bundle(tmp_path / "b2" / "bundle").model("pair")
    # a pair the export lists but whose adapter file is gone
    (pair_bundle["export"] / "tiny-pair-lora-F16.gguf").rename(tmp_path / "away.gguf")
    try:
        with pytest.raises(StageError, match="files are missing"):
            BundleStage(BundleConfig()).run(make_ctx(tmp_path, "b3", {"export": pair_bundle["export"]}))
    finally:
        (tmp_path / "away.gguf").rename(pair_bundle["export"] / "tiny-pair-lora-F16.gguf")
