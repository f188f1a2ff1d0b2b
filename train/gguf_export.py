"""Write a Hugging Face causal LM + its tokenizer as GGUF, directly with the ``gguf`` package.

llama.cpp's converter script does not run against the PyPI ``gguf`` and rejects locally trained
BPE tokenizers, so we write the file ourselves:

1. architecture hyper-parameters and tensor layouts (``train.gguf_archs``: Llama incl. 3.x rope
   scaling, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3; a setting llama.cpp cannot carry is
   refused),
2. the tokenizer (``train.gguf_tokenizer``): vocabulary, merges, the names llama.cpp picks its
   tokenizer by, special tokens, the BOS rule (``add_bos_token`` exactly when training sequences
   start with BOS), the end-of-turn token, and the chat template with its ``{% generation %}``
   markers stripped,
3. tensors renamed with gguf's own name map, streamed: the header is written from the tensors'
   shapes, then each tensor is converted and written on its own, so memory holds the model plus one
   converted tensor (peak measured by ``bench/train/gguf_memory.py``; docs/train.md). 2-D weights as
   F16 / Q8_0 (``gguf.quants``) / Q4_0 (same format, scale chosen by a small error search, see
   ``quantize_q4_0``, or blocks rounded by GPTQ and passed in, see ``train.q4_calibrate``); norms,
   biases and rope factors in F32. Q4_0 files keep ``token_embd`` and ``output`` in Q8_0 (llama.cpp
   keeps the output at higher precision too; its Q6_K choice needs k-quants, which the numpy
   quantisers do not provide).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import ConfigError
from schemas.io import atomic_path
from train.gguf_archs import architecture, context_length
from train.gguf_tokenizer import check_name, write_tokenizer

FILE_TYPES = {"F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}


#: candidate divisors of a block's signed max-abs value for the Q4_0 scale search (the reference
#: quantiser uses only -8, mapping that value to the grid end)
_Q4_0_DIVISORS = np.concatenate([np.arange(-9.0, -5.99, 0.25), np.arange(6.0, 8.01, 0.25)]).astype(np.float32)


def q4_0_scales(blocks: np.ndarray) -> np.ndarray:
    """Per-block Q4_0 scale (float32 holding an fp16 value) of ``blocks`` (n x 32), chosen to minimise the
    block's squared rounding error: a grid of candidate scales, then the best one refined by least squares
    (``d = Σ q·x / Σ q²``, re-rounded)."""
    b = blocks.astype(np.float32)
    mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
    best_d = np.zeros(len(b), dtype=np.float32)
    best_err = np.full(len(b), np.inf, dtype=np.float32)

    def consider(d: np.ndarray) -> None:
        d = d.astype(np.float16).astype(np.float32)
        q = q4_0_round(b, d)
        err = ((q * d[:, None] - b) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best_d[better] = err[better], d[better]

    for div in _Q4_0_DIVISORS:
        consider(mx / div)
    for _ in range(2):  # least-squares refinement of the best scale for its own rounding
        q = q4_0_round(b, best_d)
        den = (q * q).sum(axis=1)
        consider(np.divide((q * b).sum(axis=1), den, out=best_d.copy(), where=den > 0))
    return best_d


def q4_0_round(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The signed 4-bit values (-8..7, as float) of ``blocks`` (n x 32) for the scales ``d`` (n)."""
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    return np.clip(np.round(blocks * inv[:, None]), -8, 7)


def pack_q4_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (n x 18 bytes: fp16 scale, then 32 values as nibbles, decoded ``(nibble - 8) * d``) from
    signed values ``q`` (n x 32, -8..7) and scales ``d`` (n)."""
    u = (q + 8).astype(np.uint8)
    out = np.empty((len(q), 18), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16)[:, None].view(np.uint8)
    out[:, 2:] = u[:, :16] | (u[:, 16:] << 4)
    return out


def quantize_q4_0(data: np.ndarray, *, chunk: int = 1 << 16) -> np.ndarray:
    """Q4_0 bytes with a per-block scale chosen to minimise the squared error.

    Same format as ``gguf.quants.quantize(..., Q4_0)`` (fp16 scale + 32 4-bit values per block,
    decoded as ``(q - 8) * d`` by every GGUF reader); only the choice of ``d`` differs: we try a
    grid of scales per block instead of always mapping the largest value to -8, then refine the best
    one by least squares (``q4_0_scales``), which lowers the rounding error (measured in
    tests/train/test_gguf_quant.py). Weighting the error by activation statistics (llama.cpp's
    imatrix) was tried on the demo model and moved its logit noise by < 1 %, so it is not done.
    It is the round-to-nearest baseline of ``train.q4_calibrate`` (the export's Q4_0: GPTQ on train-split
    activations; ``q4_0_method: llama.cpp`` uses llama.cpp's quantiser instead).
    """
    shape = data.shape
    blocks = data.reshape(-1, 32).astype(np.float32)
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    for start in range(0, len(blocks), chunk):
        b = blocks[start:start + chunk]
        d = q4_0_scales(b)
        out[start:start + chunk] = pack_q4_0(q4_0_round(b, d), d)
    return out.reshape(*shape[:-1], shape[-1] // 32 * 18)


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> Any:
    """The GGML type a tensor is stored as: 1-D in F32; 2-D in the file's type (Q4_0 files keep
    ``token_embd``/``output`` in Q8_0, as llama.cpp does when k-quants are unavailable); rows that are not
    a multiple of the 32-value block fall back to F16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return Q.F32
    qtype = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0}[quant]
    if quant == "Q4_0" and name in ("output.weight", "token_embd.weight"):
        qtype = Q.Q8_0
    if qtype != Q.F16 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return Q.F16
    return qtype


def tensor_nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def encode_tensor(data: np.ndarray, qtype: Any) -> np.ndarray:
    """``data`` (float32) as the bytes/values of ``qtype``."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return data.astype(np.float32)
    if qtype == Q.F16:
        return data.astype(np.float16)
    if qtype == Q.Q4_0:
        return quantize_q4_0(data)
    return gguf.quants.quantize(data.astype(np.float32), qtype)


def _tensor_plan(model: Any, config: Any, quant: str,
                 raw: Mapping[str, Any] | None = None) -> list[tuple[str, str, tuple[int, ...], Any]]:
    """(HF name, GGUF name, shape, GGML type) of every tensor the file holds, in writing order (``raw``: GGUF
    name -> a ``gguf.ReaderTensor`` whose stored type and bytes are used instead)."""
    import gguf

    arch = architecture(config)
    tensor_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp ties output to token_embd when output.weight is absent
        new = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            raise ConfigError("GGUF export: no GGUF name for a tensor", received=hf_name,
                              fix="extend the architecture entry in train/gguf_archs.py")
        shape = tuple(tensor.shape)
        plan.append((hf_name, new, shape, raw[new].tensor_type if raw is not None and new in raw
                     else tensor_type(new, shape, quant)))
    return plan


def _check_raw(raw: Mapping[str, Any], plan: list, extra: list) -> None:
    """``raw`` holds exactly the tensors of ``plan`` and ``extra``, with the same shapes."""
    want = {new: shape for _, new, shape, _ in plan} | {new: data.shape for new, data in extra}
    have = {name: tuple(int(d) for d in reversed(t.shape)) for name, t in raw.items()}  # GGUF shapes are ne order
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:6]
        raise ConfigError("GGUF export: the source GGUF's tensors are not this model's", received=diff,
                          expected="the same tensor names and shapes as the model",
                          fix="export from the base model that was read from this GGUF (base_model step with gguf_file:)")


_NUMPY_TYPES = {"UINT8": "<u1", "INT8": "<i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4", "INT32": "<i4",
                "FLOAT32": "<f4", "UINT64": "<u8", "INT64": "<i8", "FLOAT64": "<f8", "BOOL": "?"}
_writer: list = []


def fast_writer():
    """``gguf.GGUFWriter`` with metadata arrays packed in one go: gguf-py packs an array value by value through
    ``struct`` (a 262k-token vocabulary's tokens, types, scores and merges are ~1.3M values: seconds per file);
    this gives the same bytes (tested against gguf-py) with numpy for numbers and one join for strings. Anything
    else (nested arrays, big-endian files, mixed types, which gguf-py rejects) goes through gguf-py's own code."""
    if _writer:
        return _writer[0]
    import struct

    import gguf

    V = gguf.GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if (vtype != V.ARRAY or self.endianess != gguf.GGUFEndian.LITTLE or not isinstance(val, (list, tuple))
                    or not val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            kinds = {V.get_type(v) for v in {type(x): x for x in val}.values()}  # one value of each Python type
            ltype = sub_type if sub_type is not None else next(iter(kinds))
            if sub_type is None and len(kinds) > 1 or ltype == V.ARRAY:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
            if ltype == V.STRING:
                encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
                return head + b"".join(struct.pack("<Q", len(e)) + e for e in encoded)
            return head + np.asarray(val, dtype=_NUMPY_TYPES[ltype.name]).tobytes()

    _writer.append(Writer)
    return Writer


def write_gguf(model: Any, tokenizer: Any, path: Path, *, quant: str, name: str,
               chat_template: str | None = None, q4_0_weights: Mapping[str, np.ndarray] | None = None,
               raw_tensors: Mapping[str, Any] | None = None, file_type: int | None = None,
               smoothing: Any = None) -> dict[str, Any]:
    """Write ``model`` (a merged, non-PEFT HF causal LM, any float dtype) + ``tokenizer`` to ``path``; returns a
    summary. Tensors are streamed: converted and written one at a time after a header built from their shapes.

    ``q4_0_weights`` (Q4_0 files only): Q4_0 bytes already rounded (``train.q4_calibrate``), by state-dict
    name, in the model's row order; written instead of rounding those weights here. The architecture
    transforms only permute the rows of 2-D weights, so they apply to rows of blocks alike.

    ``smoothing`` (a ``train.smooth.Smoothing``): exact per-channel rescaling applied to each tensor as it is
    converted, so the model itself is not changed.
    """
    import gguf

    config = model.config
    arch = architecture(config)
    check_name(name, tokenizer)
    template = chat_template if chat_template is not None else tokenizer.chat_template
    plan = _tensor_plan(model, config, quant, raw_tensors)
    extra = list(arch.extra(config))  # rope factors: a few hundred floats
    if raw_tensors is not None:
        _check_raw(raw_tensors, plan, extra)
        extra = [(new, np.asarray(raw_tensors[new].data)) for new, _ in extra]
    Q = gguf.GGMLQuantizationType
    counts: dict[str, int] = {}
    with atomic_path(path, suffix=".gguf") as tmp:
        w = fast_writer()(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf)])
        w.add_name(name)
        w.add_file_type(file_type if file_type is not None else getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
        arch.write_kv(w, config)
        tok = write_tokenizer(w, tokenizer, vocab_size=config.vocab_size, template=template)
        for new, data in extra:
            w.add_tensor_info(new, data.shape, np.float32, data.nbytes, raw_dtype=Q.F32)
        for _, new, shape, qtype in plan:
            w.add_tensor_info(new, shape, np.float32, tensor_nbytes(shape, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for new, data in extra:
            _write_data(w, [data], data.nbytes)
            counts["F32"] = counts.get("F32", 0) + 1
        state = model.state_dict()  # references to the model's tensors, no copy
        for hf_name, new, shape, qtype in plan:
            pieces = ([np.asarray(raw_tensors[new].data)] if raw_tensors is not None
                      else _converted(state, hf_name, qtype, config, arch, q4_0_weights=q4_0_weights,
                                      smoothing=smoothing))
            _write_data(w, pieces, tensor_nbytes(shape, qtype))
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        w.close()
    ctx, ctx_note = context_length(config) if arch.gguf in ("LLAMA", "PHI3") else (config.max_position_embeddings, None)
    return {"file": path.name, "bytes": path.stat().st_size, "tensor_types": counts, "architecture": arch.gguf.lower(),
            "context_length": ctx, **({"context_length_note": ctx_note} if ctx_note else {}), **tok}


#: float32 values converted at a time (64 MB): a 128k x 4096 embedding is written in 32 blocks of rows
BLOCK_VALUES = 1 << 24


def _converted(state: Mapping[str, Any], hf_name: str, qtype: Any, config: Any, arch, *,
               q4_0_weights: Mapping[str, np.ndarray] | None, smoothing: Any = None) -> Iterator[np.ndarray]:
    """One tensor in the file's encoding, a block of rows at a time where the architecture's transform allows;
    float32 exists only for the block being converted."""
    import gguf

    if q4_0_weights and hf_name in q4_0_weights and qtype == gguf.GGMLQuantizationType.Q4_0:
        yield arch.transform(hf_name, q4_0_weights[hf_name], config)
        return
    tensor = state[hf_name].detach()
    rows = tensor.shape[0]
    step = max(1, BLOCK_VALUES // tensor.shape[1]) if tensor.ndim == 2 and arch.row_local(hf_name) else rows
    for start in range(0, rows, step):
        block = tensor[start:start + step].cpu().float().numpy()
        if smoothing is not None:
            block = smoothing.apply(hf_name, block, start)
        yield encode_tensor(arch.transform(hf_name, block, config), qtype)


def _write_data(w, pieces, nbytes: int) -> None:
    """One tensor's data, written piece by piece at the next aligned offset (what ``GGUFWriter.write_tensor_data``
    does for a whole array)."""
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    written = 0
    for piece in pieces:
        piece.tofile(fout)
        written += piece.nbytes
    if written != nbytes:
        raise RuntimeError(f"GGUF export wrote {written} bytes for a tensor declared with {nbytes}")
    w.write_padding(fout, written)
