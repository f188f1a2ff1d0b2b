"""llama.cpp as the runtime: load a GGUF, tokenize as llama.cpp does, evaluate token ids to logits, generate
greedily, quantise, and collect an importance matrix -- all through llama-cpp-python's low-level bindings
(``llama_cpp.llama_cpp``), the same library users' runtimes (llama-server, Ollama, LM Studio) are built on.

Used by the export stage to quantise and verify every file, and by ``ask``/``serve`` to answer.

* ``GGUFModel``: one loaded file and one context. ``tokenize`` (``add_special``: the BOS/EOS the file's
  metadata asks for; ``parse_special``: spell control tokens such as ``<|im_end|>`` as themselves),
  ``chat_ids`` (a rendered chat template, tokenized the way llama.cpp's chat path does: the template's
  leading BOS text is dropped when the file adds BOS itself, so BOS appears exactly once), ``logits``
  (every position, streamed ``n_batch`` positions at a time so a 262k-token vocabulary never needs more than
  ``n_batch x vocab`` floats), ``generate`` (greedy, stops at any end-of-generation token of the file).
* ``quantize``: ``llama_model_quantize`` from the F16 file to Q8_0 / Q6_K / Q5_K_M / Q4_K_M / Q4_0, with an
  optional importance matrix.
* ``train.llama_imatrix``: llama.cpp's importance matrix, collected through this module's ``cb_eval``.

llama.cpp's own log lines go to the ``slmforge.llama_cpp`` logger (DEBUG; errors as ERROR), never to stderr.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import StageError, require

log = logging.getLogger("slmforge.llama_cpp")

#: file type name -> llama_ftype (include/llama.h)
FTYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
QUANTIZED = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")

_state: dict[str, Any] = {}


def bindings():
    """``llama_cpp.llama_cpp`` with the backend initialised and llama.cpp's log routed to ``log``."""
    if "lib" not in _state:
        llama_cpp = require("llama_cpp", extra="llama", purpose="GGUF quantisation, verification and serving")
        lib = llama_cpp.llama_cpp

        levels = {4: logging.ERROR, 3: logging.INFO}  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 cont

        @lib.llama_log_callback
        def _route(level, text, user_data):
            log.log(levels.get(level, logging.DEBUG), "%s", (text or b"").decode("utf-8", "replace").rstrip())

        lib.llama_log_set(_route, ctypes.c_void_p(0))
        lib.llama_backend_init()
        if not extra_buffers():
            defaults = lib.llama_model_default_params

            def _no_extra_buffers():
                params = defaults()
                params.use_extra_bufts = False
                return params

            # every model this process loads (GGUFModel, and llama_cpp.Llama in ask/serve, which looks the
            # function up on this module at load time) gets llama.cpp's plain CPU weight buffers
            lib.llama_model_default_params = _no_extra_buffers
        _state.update(lib=lib, log_callback=_route)  # the callback must outlive every call into llama.cpp
    return _state["lib"]


def extra_buffers() -> bool:
    """Whether llama.cpp may put weights in its "extra" CPU buffer types (repacked layouts, Intel AMX).

    Not on a CPU with AMX: there llama.cpp's AMX buffer segfaults in ``ggml_backend_amx_mul_mat`` on the first
    evaluation of a Q8_0 Gemma-3 file (llama-cpp-python 0.3.36, seen on a Xeon with amx_int8; upstream
    ggml-org/llama.cpp#20824). Off, as llama-server's ``--no-repack``, weights stay in the plain CPU buffer.
    ``SLMFORGE_LLAMA_EXTRA_BUFFERS=1`` / ``0`` forces it either way."""
    forced = os.environ.get("SLMFORGE_LLAMA_EXTRA_BUFFERS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True
    return " amx_int8" not in flags


def default_threads(threads: int | None) -> int:
    return threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class GGUFModel:
    """A GGUF file loaded in llama.cpp (CPU; memory-mapped) with one context of ``n_ctx`` tokens; ``lora``: a LoRA
    adapter GGUF applied on top (scale 1).

    ``vocab_only``: load the tokenizer only (fast; no context, no logits). ``cb_eval``: a
    ``ggml_backend_sched_eval_callback`` called for graph nodes (``collect_imatrix``).
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_batch: int = 256, threads: int | None = None,
                 vocab_only: bool = False, cb_eval: Any = None, lora: str | Path | None = None):
        lib = bindings()
        self.lib, self.path = lib, Path(path)
        if not self.path.is_file():
            raise StageError("llama.cpp: no such GGUF file", received=str(path), fix="check the path")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.vocab_only = vocab_only
        self.model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise StageError("llama.cpp could not load the GGUF file", received=str(path),
                             fix="the file is damaged or its architecture/tokenizer metadata is not one llama.cpp "
                                 "knows; the debug log of 'slmforge.llama_cpp' has llama.cpp's reason")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.ctx = None
        self.n_batch = min(n_batch, n_ctx)
        if not vocab_only:
            cparams = lib.llama_context_default_params()
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, self.n_batch, self.n_batch
            cparams.n_threads = cparams.n_threads_batch = default_threads(threads)
            cparams.no_perf = True
            if cb_eval is not None:
                cparams.cb_eval, cparams.cb_eval_user_data = cb_eval, None
            self.ctx = lib.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                self.close()
                raise StageError("llama.cpp could not create a context", received=f"n_ctx={n_ctx}, n_batch={n_batch}",
                                 fix="lower the context size (memory)")
            self.n_ctx = int(lib.llama_n_ctx(self.ctx))
            self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
            if lora is not None:
                self._set_lora(Path(lora))

    def _set_lora(self, path: Path) -> None:
        """Load the LoRA adapter GGUF at ``path`` and apply it to the context at scale 1 (llama.cpp then scales
        each pair by the file's ``adapter.lora.alpha`` / rank, as PEFT does)."""
        lib = self.lib
        self.adapter = lib.llama_adapter_lora_init(self.model, str(path).encode()) if path.is_file() else None
        if not self.adapter:
            self.close()
            raise StageError("llama.cpp could not load the LoRA adapter GGUF", received=str(path),
                             fix="the adapter must be written for this base file's architecture and tensor shapes; "
                                 "the debug log of 'slmforge.llama_cpp' has llama.cpp's reason")
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self.adapter)
        rc = lib.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            self.close()
            raise StageError("llama.cpp could not apply the LoRA adapter", received=f"llama_set_adapters_lora returned {rc}")

    # -- metadata and tokens -------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    @property
    def bos(self) -> int:
        return int(self.lib.llama_vocab_bos(self.vocab))

    @property
    def add_bos(self) -> bool:
        return bool(self.lib.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, int(token)))

    def token_text(self, token: int) -> str:
        return (self.lib.llama_vocab_get_text(self.vocab, int(token)) or b"").decode("utf-8", "replace")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (ctypes.c_int32 * cap)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def chat_ids(self, rendered: str) -> list[int]:
        """Token ids of a rendered chat template, as llama.cpp's chat path makes them (common/chat.cpp): the
        template's leading BOS text is dropped when the file adds BOS itself, then the text is tokenized with
        the file's special tokens added and control tokens parsed."""
        bos_text = self.token_text(self.bos) if self.bos >= 0 else ""
        if self.add_bos and bos_text and rendered.startswith(bos_text):
            rendered = rendered[len(bos_text):]
        return self.tokenize(rendered, add_special=True, parse_special=True)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in tokens:
            n = self.lib.llama_token_to_piece(self.vocab, int(t), buf, len(buf), 0, special)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", "replace")

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _decode(self, tokens: Sequence[int], start: int, *, all_logits: bool) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = int(t), start + i, 1, 0
            b.logits[i] = all_logits or i == len(tokens) - 1
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise StageError("llama.cpp failed to evaluate a batch", received=f"llama_decode returned {rc}",
                             fix="check the sequence fits the context (n_ctx) and the file loads")

    def _check_length(self, n: int) -> None:
        if self.ctx is None:
            raise StageError("llama.cpp: this model was loaded with vocab_only", fix="load it without vocab_only")
        if n > self.n_ctx:
            raise StageError("llama.cpp: sequence longer than the context", received=n, expected=f"<= {self.n_ctx}",
                             fix="load the model with a larger n_ctx or cut the sequence")

    def logits(self, tokens: Sequence[int], *, copy: bool = True) -> Iterator[np.ndarray]:
        """Logits (float32, positions x vocabulary) of ``tokens`` evaluated from position 0, every position,
        yielded ``n_batch`` positions at a time. Each array is a copy; ``copy=False``: a view of llama.cpp's
        own logits buffer instead (no copy of n_batch x vocabulary floats), valid only until the next block is
        requested, which may be written to (``KLDStats.add`` works in place in it)."""
        self._check_length(len(tokens))
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            self._decode(part, start, all_logits=True)
            ptr = self.lib.llama_get_logits(self.ctx)
            block = np.ctypeslib.as_array(ptr, shape=(len(part), self.n_vocab))
            yield block.copy() if copy else block

    def generate(self, prompt: Sequence[int], *, max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt``; ends after the first end-of-generation token of the file (kept as
        the last element) or after ``max_new_tokens``."""
        self._check_length(len(prompt) + max_new_tokens)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        for start in range(0, len(prompt), self.n_batch):
            self._decode(prompt[start:start + self.n_batch], start, all_logits=False)
        out: list[int] = []
        pos = len(prompt)
        while len(out) < max_new_tokens:
            row = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            token = int(row.argmax())
            out.append(token)
            if self.is_eog(token):
                break
            self._decode([token], pos, all_logits=False)
            pos += 1
        return out

    def close(self) -> None:
        if self.lib.llama_free is None:  # interpreter shutdown
            return
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "adapter", None):
            self.lib.llama_adapter_lora_free(self.adapter)
            self.adapter = None
        if getattr(self, "model", None):
            self.lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


def _ggml_type(name: str) -> int:
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name])
    except KeyError:
        raise StageError("llama.cpp quantisation: unknown tensor type", received=name,
                         expected="a GGML type name, e.g. F16, BF16, Q8_0, Q6_K") from None


def quantize(src: Path, dst: Path, *, qtype: str, threads: int | None = None,
             imatrix: Mapping[str, np.ndarray] | None = None, token_embedding_type: str | None = None,
             tensor_types: Mapping[str, str] | None = None) -> None:
    """``llama_model_quantize`` of the F16 file ``src`` into ``dst`` (llama.cpp's default tensor-type mix for
    ``qtype``, e.g. Q4_K_M keeps half of attn_v/ffn_down and the output in Q6_K). ``imatrix``: tensor name
    -> mean squared input activation per column (``Imatrix.means``); the K-quants and Q4_0 weight their
    rounding error by it. ``token_embedding_type`` (``llama-quantize --token-embedding-type``; with tied
    embeddings also the output) and ``tensor_types`` (regex on tensor names -> GGML type name,
    ``llama-quantize --tensor-type``) override llama.cpp's choice for those tensors."""
    lib = bindings()
    if qtype not in FTYPES:
        raise StageError("llama.cpp quantisation: unknown type", received=qtype, expected=", ".join(FTYPES))
    params = lib.llama_model_quantize_default_params()
    params.nthread, params.ftype = default_threads(threads), FTYPES[qtype]
    keep = []
    if token_embedding_type is not None:
        params.token_embedding_type = _ggml_type(token_embedding_type)
    if tensor_types:
        overrides = (lib.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, name) in enumerate(tensor_types.items()):
            overrides[i].pattern, overrides[i].type = pattern.encode(), _ggml_type(name)
        params.tt_overrides = overrides
        keep.append(overrides)
    if imatrix:
        entries = (lib.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        params.imatrix = entries
        keep.append(entries)
    from schemas.io import atomic_path

    with atomic_path(dst, suffix=".gguf") as tmp:
        rc = lib.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise StageError(f"llama.cpp could not quantise to {qtype}", received=f"llama_model_quantize returned {rc}",
                             fix="the debug log of 'slmforge.llama_cpp' has llama.cpp's reason")
