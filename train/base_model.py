"""The base model as an artifact: ``model/`` with weights, config and a tokenizer whose chat
template marks assistant turns with ``{% generation %}``.

* ``path``: copy a local Hugging Face folder (optionally replacing its chat template).
* ``path`` + ``gguf_file``: read a GGUF file with transformers' GGUF loader (dequantised to
  float32) and save it as a Hugging Face folder, so every later stage loads it the usual way.
* ``tiny``: train a byte-level BPE tokenizer on the text of this step's inputs (documents'
  ``text``, examples' ``messages``) and build a randomly initialised Llama/Qwen2 model with it, or a
  Gemma-style tokenizer and a tiny Gemma 3 text model (``architecture: gemma3``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train.config import BaseModelConfig, TinyModelConfig
from schemas.errors import ConfigError, require
from schemas.io import read_parquet_dir, write_json
from schemas.stage import Stage, StageContext
from train.chat import (CHATML_TEMPLATE, GEMMA_TEMPLATE, check_template, end_of_turn_id, train_bpe_tokenizer,
                        train_gemma_tokenizer)
from train.inputs import load_tokenizer


def upstream_texts(folders: list[Path], *, messages: bool = True) -> Iterator[str]:
    """Every ``text`` value (and, with ``messages``, every message content) of the input tables."""
    for folder in folders:
        table = read_parquet_dir(folder)
        if "text" in table.column_names:
            yield from (t for t in table.column("text").to_pylist() if t)
        if messages and "messages" in table.column_names:
            for msgs in table.column("messages").to_pylist():
                for m in msgs or []:
                    if m.get("content"):
                        yield m["content"]


def pretrain(model, tokenizer, texts: list[str], cfg: TinyModelConfig, *, progress=None) -> list[float]:
    """A few full-parameter causal-LM steps on plain text; returns the loss per step."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    block = cfg.pretrain_block_size
    n_blocks = len(ids) // block
    if n_blocks == 0:
        raise ConfigError("base_model tiny: too little text to pretrain on",
                          received=f"{len(ids)} tokens", expected=f">= {block} tokens (pretrain_block_size)",
                          fix="add a documents step to 'inputs:' or lower pretrain_block_size / set pretrain_steps: 0")
    data = torch.tensor(ids[: n_blocks * block]).view(n_blocks, block)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(cfg.pretrain_steps):
        batch = data[torch.randint(0, n_blocks, (min(8, n_blocks),), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1)
    model.eval()
    return losses


def build_tiny(texts: list[str], cfg: TinyModelConfig, *, chat_template: str | None = None):
    """(model, tokenizer): a tiny randomly initialised model and a BPE tokenizer trained on ``texts``."""
    torch = require("torch", extra="train", purpose="building the tiny base model")
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    if not texts:
        raise ConfigError("base_model tiny: no text to train the tokenizer on",
                          fix="list a documents/chunks/examples step in 'inputs:' of the base_model step")
    if cfg.architecture == "gemma3":
        tokenizer = train_gemma_tokenizer(texts, vocab_size=cfg.vocab_size, chat_template=chat_template or GEMMA_TEMPLATE)
    else:
        tokenizer = train_bpe_tokenizer(texts, vocab_size=cfg.vocab_size, chat_template=chat_template or CHATML_TEMPLATE)
    shape = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    if cfg.architecture == "gemma3":
        # head_dim 256 = query_pre_attn_scalar: what GGUF readers assume for Gemma 3 (see train/gguf_export.py)
        config = Gemma3TextConfig(**{**shape, "tie_word_embeddings": True}, head_dim=256, query_pre_attn_scalar=256,
                                  sliding_window=cfg.sliding_window)
    else:
        config = LlamaConfig(**shape) if cfg.architecture == "llama" else Qwen2Config(**shape)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _copy_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy) every file of a model folder; returns bytes."""
    total = 0
    for f in sorted(src.rglob("*")):
        if f.is_dir() or ".git" in f.parts:
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(f)
        except OSError:
            shutil.copy2(f, target)
        total += f.stat().st_size
    return total


def convert_gguf(folder: Path, gguf_file: str, out: Path, *, chat_template: str | None = None) -> dict[str, Any]:
    """Load ``folder/gguf_file`` (model + tokenizer) and save it as a float32 Hugging Face folder at ``out``."""
    torch = require("torch", extra="train", purpose="reading a GGUF base model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    # the weights are plain float32 tensors now; drop the GGUF "quantizer" marker, which blocks save_pretrained
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"gguf_file": gguf_file, "architecture": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}


class BaseModelStage(Stage[BaseModelConfig]):
    kind = "artifact"
    provides = "base_model"
    version = "1"

    def fingerprint_extra(self) -> dict[str, Any]:
        if self.config.path is None:
            return {}
        root = Path(self.config.path)
        if self.config.gguf_file is not None:
            if not (root / self.config.gguf_file).is_file():
                raise ConfigError("base_model: 'gguf_file' is not a file inside 'path'",
                                  received=str(root / self.config.gguf_file), expected="an existing .gguf file",
                                  fix="check 'path' and 'gguf_file' (e.g. assemble the file first, see docs/gemma.md)")
            f = root / self.config.gguf_file
            return {"gguf": [self.config.gguf_file, f.stat().st_size, f.stat().st_mtime_ns]}
        if not (root / "config.json").is_file():
            raise ConfigError("base_model: 'path' is not a Hugging Face model folder", received=str(root),
                              expected="a folder with config.json, weights and tokenizer files",
                              fix="download the model once (huggingface-cli download ...) and point 'path' at it")
        return {"files": [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                          for f in sorted(root.rglob("*")) if f.is_file() and ".git" not in f.parts]}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        out = Path(ctx.out_dir) / "model"
        cfg = self.config
        if cfg.tiny is not None:
            texts = list(upstream_texts(list(ctx.inputs.values())))
            model, tokenizer = build_tiny(texts, cfg.tiny, chat_template=cfg.chat_template)
            losses = []
            if cfg.tiny.pretrain_steps:
                plain = list(upstream_texts(list(ctx.inputs.values()), messages=False))
                losses = pretrain(model, tokenizer, plain, cfg.tiny, progress=ctx.progress)
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            stats = {"source": "tiny", "architecture": cfg.tiny.architecture, "tokenizer_texts": len(texts),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "pretrain_first_loss": losses[0] if losses else None,
                     "pretrain_last_loss": losses[-1] if losses else None}
        elif cfg.gguf_file is not None:
            source = (Path(cfg.path) / cfg.gguf_file).resolve()
            stats = {"source": str(Path(cfg.path) / cfg.gguf_file),
                     **convert_gguf(Path(cfg.path), cfg.gguf_file, out, chat_template=cfg.chat_template)}
            # the export writes this file's own tensors + the LoRA as an adapter GGUF (train/gguf_lora.py)
            write_json({"path": str(source), "bytes": source.stat().st_size}, out / "gguf_source.json")
        else:
            stats = {"source": str(cfg.path), "bytes": _copy_tree(Path(cfg.path), out)}
            if cfg.chat_template is not None:
                tokenizer = load_tokenizer(Path(cfg.path))
                tokenizer.chat_template = cfg.chat_template
                staged = Path(ctx.work_dir) / "tokenizer"
                shutil.rmtree(staged, ignore_errors=True)
                tokenizer.save_pretrained(str(staged))
                for f in sorted(staged.iterdir()):  # replace, never write through, the hard links
                    (out / f.name).unlink(missing_ok=True)
                    shutil.move(str(f), out / f.name)
                (out / "chat_template.json").unlink(missing_ok=True)
        tokenizer = load_tokenizer(out)
        check_template(tokenizer, where=f"{ctx.step}")
        stats["vocab_size"] = len(tokenizer)
        stats["end_of_turn_token"] = tokenizer.convert_ids_to_tokens([end_of_turn_id(tokenizer)])[0]
        ctx.progress(1)
        return stats
