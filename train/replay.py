"""Replay: general text mixed into LoRA training so the model keeps its general language ability.

A small share of each epoch is plain language modelling on non-domain text (every token is a
label, no chat template), the usual guard against catastrophic forgetting during domain SFT.
The corpus is whatever general text the user has: a ``.jsonl`` / ``.parquet`` file with a
``text`` column or a folder of ``.txt`` / ``.md`` files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md")


def replay_files(path: str | Path) -> list[Path]:
    """The files of a replay corpus; a clear error when there are none."""
    root = Path(path)
    if root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    elif root.is_file() and root.suffix in (".jsonl", ".parquet", *TEXT_SUFFIXES):
        files = [root]
    else:
        files = []
    if not files:
        raise ConfigError("train: 'replay_path' holds no replay text", received=str(root),
                          expected="a .jsonl/.parquet file with a 'text' column, or a folder of .txt/.md files",
                          fix="point replay_path at general text (see docs/gemma.md for an example corpus)")
    return files


def manifest(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of every replay file: part of the train step's fingerprint."""
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in replay_files(path)]


def read_replay_texts(path: str | Path) -> list[str]:
    texts: list[str] = []
    for f in replay_files(path):
        if f.suffix == ".jsonl":
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError("train: a replay_path line is not JSON with a 'text' field",
                                      received=f"{f}:{n}: {line[:80]}", fix="write one {\"text\": ...} object per line") from exc
        elif f.suffix == ".parquet":
            from schemas.io import read_parquet

            table = read_parquet(f)
            if "text" not in table.column_names:
                raise ConfigError("train: the replay Parquet file has no 'text' column", received=table.column_names,
                                  fix="rename the text column to 'text'")
            texts.extend(str(t) for t in table.column("text").to_pylist() if t is not None)
        else:
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
    return [t.strip() for t in texts if t and t.strip()]


def replay_rows(tokenizer, texts: list[str], *, count: int, max_length: int, seed: int) -> list[dict[str, Any]]:
    """``count`` language-modelling rows (input_ids = labels, BOS first) cut from the texts in windows of
    at most ``max_length`` tokens, drawn without replacement while they last (seeded)."""
    if count <= 0 or not texts:
        return []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    width = max_length - len(bos)
    windows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        windows.extend(bos + ids[s:s + width] for s in range(0, len(ids), width) if len(ids[s:s + width]) > 1)
    rng = random.Random(seed)
    picked: list[list[int]] = []
    while len(picked) < count and windows:
        order = list(range(len(windows)))
        rng.shuffle(order)
        picked.extend(windows[i] for i in order[:count - len(picked)])
    rows = []
    for ids in picked:
        labels = list(ids)
        if bos:
            labels[0] = -100  # nothing predicts the BOS
        rows.append({"input_ids": list(ids), "labels": labels})
    return rows


def replay_count(domain_rows: int, fraction: float) -> int:
    """Replay rows so that they are ``fraction`` of all training sequences."""
    if fraction <= 0:
        return 0
    return max(1, round(domain_rows * fraction / (1 - fraction)))
