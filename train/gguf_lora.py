"""The fine-tune as llama.cpp runs it without re-rounding the base: the base model's own GGUF + a LoRA adapter GGUF.

When the base model was read from a GGUF (the ``base_model`` step with ``gguf_file:``, e.g. the only offline
Gemma-3-270M, a Q4_K_M file), its weights already sit on that file's quantisation grids and the LoRA delta is
smaller than one grid step: re-quantising the merged model to a 4-6-bit type rounds most of the fine-tune back
to the base (docs/train.md). llama.cpp can instead run the base file's tensors unchanged and add the adapter
at run time (``llama_adapter_lora_init``; ``llama-cli --lora``, Ollama's ``ADAPTER``), which computes exactly
the merged model up to the adapter's F16 rounding and llama.cpp's own activation rounding.

* ``gguf_source``: the GGUF a ``base_model`` step folder was read from (its ``stats.json``), or None.
* ``write_base_gguf``: that file's tensors copied byte for byte (same types), with this export's metadata:
  the tokenizer with the BOS rule training used, the chat template, the end-of-turn token
  (``train.gguf_export.write_gguf`` with ``raw_tensors``).
* ``write_lora_gguf``: the PEFT adapter in llama.cpp's adapter format, as llama.cpp's
  ``convert_lora_to_gguf.py`` writes it: ``general.type = adapter``, ``adapter.type = lora``,
  ``adapter.lora.alpha``; per adapted weight ``<gguf name>.lora_a`` (rank x in) and ``.lora_b`` (out x rank),
  with the architecture's row transform applied to ``lora_b`` (Llama's q/k rotary permutation acts on output
  rows). llama.cpp scales each pair by ``alpha / rank`` (rank = rows of ``lora_a``), PEFT by ``lora_alpha / r``
  (``/ sqrt(r)`` with rsLoRA, written as ``alpha = lora_alpha * sqrt(r)``). Settings llama.cpp cannot carry
  (DoRA, per-module alphas, LoRA biases, fully trained modules, trainable token rows) are refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import ConfigError, StageError
from schemas.io import atomic_path
from train.gguf_archs import architecture

#: PEFT settings an adapter GGUF cannot carry -> the value that can
_UNSUPPORTED = {"use_dora": False, "alpha_pattern": {}, "lora_bias": False, "modules_to_save": None,
                "trainable_token_indices": None, "fan_in_fan_out": False, "alora_invocation_tokens": None}


def gguf_source(base_model_dir: Path) -> Path | None:
    """The GGUF the base model folder (``<step>/model``) was read from: ``gguf_source.json`` in it (written by the
    base_model step), else its step's ``stats.json`` (runs before that file existed); None when it was not read
    from a GGUF. A recorded file that is gone or changed raises (the export cannot copy its tensors)."""
    record, step_stats = Path(base_model_dir) / "gguf_source.json", Path(base_model_dir).parent / "stats.json"
    if record.is_file():
        info = json.loads(record.read_text())
        source, size = Path(info["path"]), info.get("bytes")
    elif step_stats.is_file() and json.loads(step_stats.read_text()).get("gguf_file"):
        source, size = Path(json.loads(step_stats.read_text())["source"]), None
    else:
        return None
    if not source.is_file() or (size is not None and source.stat().st_size != size):
        raise StageError("export: the GGUF the base model was read from is gone or changed", received=str(source),
                         expected=f"the base_model step's gguf_file{f' ({size:,} bytes)' if size else ''}",
                         fix="restore that file (relative paths count from the working directory), or set "
                             "base_gguf: false on the export step")
    return source


def read_source(source: Path) -> tuple[Any, str]:
    """``source`` opened with ``gguf.GGUFReader`` (parsing its metadata takes seconds for a 262k vocabulary: open it
    once) and its ``general.file_type`` name, e.g. ``Q4_K_M``."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    field = reader.get_field("general.file_type")
    value = int(field.contents()) if field is not None else 0
    return reader, gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")


def write_base_gguf(model: Any, tokenizer: Any, source: Path | Any, path: Path, *, name: str) -> dict[str, Any]:
    """``source``'s tensors unchanged (a path or its ``read_source`` reader), with the metadata this export writes
    for ``model`` (same architecture, tensor names and shapes, else ``ConfigError``)."""
    from train.gguf_export import write_gguf

    reader = read_source(source)[0] if isinstance(source, (str, Path)) else source
    field = reader.get_field("general.file_type")
    return write_gguf(model, tokenizer, path, quant="F16", name=name, raw_tensors={t.name: t for t in reader.tensors},
                      file_type=int(field.contents()) if field is not None else None)


def _check_peft(cfg: dict[str, Any], adapter_dir: Path) -> None:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError("LoRA GGUF: not a LoRA adapter", received=cfg.get("peft_type"), expected="LORA",
                          fix="train a LoRA adapter (the train stage does), or set base_gguf: false")
    for key, ok in _UNSUPPORTED.items():
        if cfg.get(key, ok) not in (ok, None, {}, False):
            raise ConfigError(f"LoRA GGUF: the adapter's {key} cannot be carried into a llama.cpp adapter",
                              received=cfg.get(key), expected=ok,
                              fix=f"export merged files only (base_gguf: false); adapter: {adapter_dir}")
    if cfg.get("use_rslora") and cfg.get("rank_pattern"):
        raise ConfigError("LoRA GGUF: rsLoRA with per-module ranks has no single llama.cpp alpha",
                          received=cfg.get("rank_pattern"), fix="export merged files only (base_gguf: false)")


def lora_pairs(adapter_dir: Path, config: Any) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """llama.cpp's alpha and, per GGUF weight name, (lora_a, lora_b) as float32 in llama.cpp's layout."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    _check_peft(cfg, adapter_dir)
    arch = architecture(config)
    tensor_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf), config.num_hidden_layers)
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        for part in ("lora_A", "lora_B"):
            if key.endswith(f".{part}.weight"):
                module = key.removesuffix(f".{part}.weight").removeprefix("base_model.model.")
                halves.setdefault(module, {})[part] = value.astype(np.float32)
                break
        else:
            raise ConfigError("LoRA GGUF: an adapter tensor that is not lora_A/lora_B", received=key,
                              fix="export merged files only (base_gguf: false)")
    pairs = {}
    for module, ab in sorted(halves.items()):
        hf_name = module + ".weight"
        new = tensor_map.get_name(hf_name, try_suffixes=(".weight",))
        if new is None or set(ab) != {"lora_A", "lora_B"} or new.startswith(("token_embd", "output.")):
            raise ConfigError("LoRA GGUF: an adapted module llama.cpp's adapter format cannot carry here",
                              received=f"{module} ({sorted(ab)}, GGUF name {new})",
                              expected="a linear projection inside the transformer blocks",
                              fix="train LoRA on the attention/MLP projections, or set base_gguf: false")
        pairs[new] = (ab["lora_A"], arch.transform(hf_name, ab["lora_B"], config))
    if not pairs:
        raise ConfigError("LoRA GGUF: the adapter holds no LoRA weights", received=str(adapter_dir))
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(cfg["r"])
    return alpha, pairs


def write_lora_gguf(adapter_dir: Path, config: Any, path: Path, *, name: str) -> dict[str, Any]:
    """The PEFT adapter in ``adapter_dir`` as a llama.cpp LoRA adapter GGUF (F16 tensors) at ``path``."""
    import gguf

    alpha, pairs = lora_pairs(adapter_dir, config)
    arch = architecture(config)
    with atomic_path(path, suffix=".gguf") as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf)])
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for new, (a, b) in pairs.items():
            w.add_tensor(new + ".lora_a", a.astype(np.float16))
            w.add_tensor(new + ".lora_b", b.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    ranks = sorted({int(a.shape[0]) for a, _ in pairs.values()})
    return {"file": path.name, "bytes": path.stat().st_size, "alpha": alpha, "ranks": ranks,
            "adapted_tensors": len(pairs)}
