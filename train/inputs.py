"""Finding and loading what the train stages consume: example tables, the base model, the adapter.

An artifact stage gets its inputs as ``step name -> folder``. Folders are told apart by what
they hold, so a recipe (or a CLI call) may list them in any order:

* examples: ``part-*.parquet`` with a ``messages`` column (or a single ``.parquet`` file)
* base model: ``model/config.json`` (a base_model step) or ``config.json`` (a plain HF folder)
* adapter: ``adapter/adapter_config.json`` (a train step) or ``adapter_config.json``
* eval results: ``eval.json``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas.arrow import MESSAGE
from schemas.errors import ConfigError, StageError, require

#: columns the train/eval/export stages read from the dataset step
EXAMPLE_COLUMNS = {"id": pa.string(), "messages": pa.list_(MESSAGE), "split": pa.string()}


@dataclass
class Inputs:
    examples: Path | None = None
    base_model: Path | None = None
    adapter: Path | None = None
    eval: Path | None = None

    def need(self, *names: str, where: str) -> None:
        for name in names:
            if getattr(self, name) is None:
                raise ConfigError(
                    f"{where}: no {name.replace('_', ' ')} among the inputs",
                    expected={"examples": "a dataset step (part-*.parquet with 'messages')",
                              "base_model": "a base_model step (model/config.json) or a HF model folder",
                              "adapter": "a train step (adapter/adapter_config.json)",
                              "eval": "an eval step (eval.json)"}[name],
                    fix=f"add the step to 'inputs:' of this step (or pass --{name.replace('_', '-')} on the CLI)",
                )


def _has_messages(path: Path) -> bool:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.glob("part-*.parquet"))
    return bool(files) and "messages" in pq.read_schema(files[0]).names


def find_inputs(folders: Mapping[str, Path]) -> Inputs:
    found = Inputs()

    def put(kind: str, value: Path, name: str) -> None:
        if getattr(found, kind) is not None:
            raise ConfigError(f"two inputs look like a {kind.replace('_', ' ')}: {getattr(found, kind)} and {value}",
                              fix=f"list only one {kind.replace('_', ' ')} step in 'inputs:' (offending step: {name})")
        setattr(found, kind, value)

    for name, folder in folders.items():
        folder = Path(folder)
        if (folder / "model" / "config.json").is_file():
            put("base_model", folder / "model", name)
        elif (folder / "config.json").is_file():
            put("base_model", folder, name)
        if (folder / "adapter" / "adapter_config.json").is_file():
            put("adapter", folder / "adapter", name)
        elif (folder / "adapter_config.json").is_file():
            put("adapter", folder, name)
        if (folder / "eval.json").is_file():
            put("eval", folder, name)
        if _has_messages(folder):
            put("examples", folder, name)
    return found


def read_examples(path: Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """EXAMPLES rows (as dicts, ordered by id) of one split."""
    from schemas.io import read_parquet, read_parquet_dir

    table = read_parquet(path) if Path(path).is_file() else read_parquet_dir(path)
    rows = table.to_pylist()
    if split is not None:
        if rows and "split" not in rows[0]:
            raise StageError("the examples have no 'split' column", received=str(path),
                             fix="run the 'dataset' stage first (it assigns train/validation/test)")
        rows = [r for r in rows if r.get("split") == split]
    rows.sort(key=lambda r: r["id"])
    return rows


def conversations(rows: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """The ``messages`` of EXAMPLES rows as plain ``role``/``content`` conversations."""
    return [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in rows]


def torch_setup(threads: int | None):
    torch = require("torch", extra="train", purpose="training and export")
    if threads:
        torch.set_num_threads(threads)
    return torch


def load_tokenizer(model_dir: Path):
    """The model folder's tokenizer exactly as saved.

    A tokenizer saved as a plain ``tokenizers`` backend (the tiny model's) is loaded as one:
    ``AutoTokenizer`` would pick the architecture's class (e.g. Qwen2Tokenizer), which adds its own
    default special tokens and pre-tokenizer and so changes the tokenization.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(model_dir) / "tokenizer_config.json"
    cls = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    return AutoTokenizer.from_pretrained(str(model_dir))


def load_model(model_dir: Path, *, adapter: Path | None = None, dtype=None):
    """The base model in eval mode on CPU/CUDA, with the adapter applied when given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype or torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def model_device(model) -> Any:
    return next(model.parameters()).device
