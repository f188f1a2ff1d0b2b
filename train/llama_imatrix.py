"""llama.cpp's importance matrix (``llama-imatrix``), collected through the llama.cpp bindings.

``collect_imatrix``: for every matrix multiplication with a ``blk.*`` weight, the sum over tokens of each input
column's squared activation and the token count, collected by an eval callback while llama.cpp runs the F16 file
(the callback is what ``llama-imatrix`` registers; the bindings expose it as ``cb_eval``, ``GGUFModel(cb_eval=)``).
``save_imatrix`` writes llama.cpp's GGUF imatrix format (``<tensor>.in_sum2``, ``<tensor>.counts``), which
``llama-quantize --imatrix`` reads; ``Imatrix.means`` is what ``train.llama_cpp.quantize(imatrix=)`` takes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import StageError
from train.llama_cpp import GGUFModel, _state, bindings


class _GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h of the pinned llama.cpp: GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64,
    GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""


_GGMLTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_GGMLTensor) * 10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]


def _ggml():
    """libggml-base from the llama_cpp package (the library the bindings load), for the tensor helpers."""
    if "ggml" not in _state:
        import llama_cpp

        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_op_desc.restype = ctypes.c_char_p
        lib.ggml_op_desc.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        _state["ggml"] = lib
    return _state["ggml"]


def _weight_name(raw: bytes) -> str:
    """``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight`` (imatrix.cpp's filter_tensor_name)."""
    name = raw.decode("utf-8", "replace")
    return name.split("#")[1] if "#" in name else name


class Imatrix:
    """Per weight tensor: sum over tokens of each input column's squared activation, and the token count."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.sequences = 0
        self.tokens = 0

    def callback(self):
        """The ``cb_eval`` function: llama.cpp asks (``ask``) whether a node's data is wanted, then calls again
        once it is computed. As in ``llama-imatrix``: MUL_MAT nodes whose weight is a ``blk.*`` tensor and
        whose activations are F32 with at least 16 rows."""
        lib, ggml = bindings(), _ggml()

        @lib.ggml_backend_sched_eval_callback
        def collect(t_ptr, ask, user_data):
            t = ctypes.cast(t_ptr, ctypes.POINTER(_GGMLTensor)).contents
            if ggml.ggml_op_desc(ctypes.addressof(t)) != b"MUL_MAT":
                return False
            src0, src1 = t.src[0].contents, t.src[1].contents
            name = _weight_name(src0.name)
            if ask:
                return src1.ne[1] >= 16 and src1.type == 0 and name.startswith("blk.")  # 0: GGML_TYPE_F32
            nbytes = ggml.ggml_nbytes(ctypes.addressof(src1))
            if ggml.ggml_backend_buffer_is_host(src1.buffer):
                raw = (ctypes.c_char * nbytes).from_address(src1.data)
            else:
                raw = ctypes.create_string_buffer(nbytes)
                ggml.ggml_backend_tensor_get(ctypes.addressof(src1), raw, 0, nbytes)
            ne, nb = list(src1.ne), list(src1.nb)
            x = np.lib.stride_tricks.as_strided(np.frombuffer(raw, dtype=np.float32),
                                                shape=(ne[3], ne[2], ne[1], ne[0]), strides=(nb[3], nb[2], nb[1], nb[0]))
            if src0.ne[2] * src0.ne[3] != 1:
                raise StageError("imatrix: 3-D weights (mixture of experts) are not supported", received=name)
            sq = np.einsum("abij,abij->j", x, x, dtype=np.float64)
            self.sums[name] = self.sums.get(name, 0.0) + sq
            self.counts[name] = self.counts.get(name, 0) + ne[1] * ne[2] * ne[3]
            return True

        self._keep = collect
        return collect

    def means(self) -> dict[str, np.ndarray]:
        """What ``llama-quantize --imatrix`` passes to ``llama_model_quantize``: sums / counts."""
        return {k: (v / self.counts[k]).astype(np.float32) for k, v in self.sums.items()}


def collect_imatrix(path: Path, sequences: Sequence[Sequence[int]], *, threads: int | None = None,
                    n_ctx: int = 1024, progress: Any = None) -> Imatrix:
    """llama.cpp's importance matrix of the GGUF at ``path`` over token ``sequences`` (each from position 0,
    cut to ``n_ctx``), computed while llama.cpp evaluates them."""
    stats = Imatrix()
    with GGUFModel(path, n_ctx=n_ctx, n_batch=min(512, n_ctx), threads=threads, cb_eval=stats.callback()) as model:
        for seq in sequences:
            seq = list(seq)[:n_ctx]
            for _ in model.logits(seq):
                pass
            stats.sequences += 1
            stats.tokens += len(seq)
            if progress is not None:
                progress(0)
    if not stats.sums:
        raise StageError("imatrix: no activations were collected", received=f"{len(sequences)} sequences",
                         fix="give at least one calibration sequence of 16 tokens or more")
    return stats


def save_imatrix(stats: Imatrix, path: Path, *, dataset: str, chunk_size: int) -> None:
    """Write ``stats`` in llama.cpp's GGUF imatrix format (what ``llama-imatrix`` writes and
    ``llama-quantize --imatrix`` reads)."""
    import gguf

    from schemas.io import atomic_path

    with atomic_path(path, suffix=".gguf") as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", [dataset])
        w.add_uint32("imatrix.chunk_count", stats.sequences)
        w.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(stats.sums):
            w.add_tensor(f"{name}.in_sum2", stats.sums[name].astype(np.float32)[None, :])
            w.add_tensor(f"{name}.counts", np.array([[stats.counts[name]]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
