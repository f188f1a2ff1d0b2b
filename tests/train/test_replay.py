"""Replay: general text mixed into LoRA training (train: replay_path / replay_fraction)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from train.config import TrainConfig
from schemas.errors import ConfigError
from schemas.io import write_parquet
from tests.train.conftest import make_ctx

GENERAL = ["The river widened into a shallow pool before it hurried on toward the sea.",
           "In winter the old men stood on the bridge and argued about whether the ice would hold.",
           "   ", "Nobody remembered who had built the bridge, but everyone agreed it was older than the church."]


def test_replay_rows_are_plain_language_modelling(pipeline, tmp_path):
    from train.inputs import load_tokenizer
    from train.replay import read_replay_texts, replay_count, replay_rows

    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in GENERAL))
    texts = read_replay_texts(path)
    assert texts == [t for t in GENERAL if t.strip()]  # blank entries are not training text
    tok = load_tokenizer(pipeline["base"] / "model")
    rows = replay_rows(tok, texts, count=5, max_length=12, seed=3)
    assert len(rows) == 5 and rows == replay_rows(tok, texts, count=5, max_length=12, seed=3)
    for r in rows:
        assert len(r["input_ids"]) <= 12 and r["input_ids"][0] == tok.bos_token_id
        assert r["labels"][0] == -100 and r["labels"][1:] == r["input_ids"][1:]  # every token but BOS is a label
    windows = {tuple(r["input_ids"]) for r in rows}
    assert len(windows) == 5  # drawn without replacement while windows last
    assert replay_count(30, 0.25) == 10 and replay_count(30, 0.0) == 0


def test_train_with_replay_mixes_in_the_asked_share(pipeline, tmp_path):
    from train.sft import TrainStage

    corpus = tmp_path / "general"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(GENERAL))
    write_parquet(pa.table({"text": GENERAL}), tmp_path / "general.parquet")
    for path in (corpus, tmp_path / "general.parquet"):
        cfg = TrainConfig(max_steps=2, batch_size=8, threads=2, replay_path=str(path), replay_fraction=0.5)
        stage = TrainStage(cfg)
        assert stage.fingerprint_extra()["replay"]  # the corpus' manifest is part of the step's fingerprint
        stats = stage.run(make_ctx(tmp_path, f"r-{path.name}", {"dataset": pipeline["dataset"], "base": pipeline["base"]}))
        assert stats["replay_sequences"] == stats["train_rows"] and stats["replay_tokens"] > 0
        assert stats["train_sequences"] == stats["train_rows"] + stats["replay_sequences"]


def test_replay_config_errors_name_the_fix(tmp_path):
    from train.sft import TrainStage

    with pytest.raises(ConfigError, match="replay_path"):
        TrainConfig(replay_fraction=0.2)
    with pytest.raises(ConfigError, match="holds no replay text"):
        TrainStage(TrainConfig(replay_fraction=0.2, replay_path=str(tmp_path / "missing.jsonl"))).fingerprint_extra()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    from train.replay import read_replay_texts

    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_replay_texts(bad)
