"""The export's GGUF writer packs metadata arrays in one go; the bytes must be gguf-py's own."""

from __future__ import annotations

import gguf
import pytest

from train.gguf_export import fast_writer

V = gguf.GGUFValueType
CASES = [
    (["a", "▁b", "", "<0x0A>", "日本語"], None),
    ([gguf.TokenType.NORMAL, gguf.TokenType.CONTROL, gguf.TokenType.BYTE], None),
    ([-0.0, -1000.0, 1.5, -262143.0, 3.1e-9], None),
    ([1, -2, 2**31 - 1], None),
    ([True, False, True], None),
    ([1, 2, 3], V.UINT32),
    ([1, 2, 3], V.INT64),
    ([0.5, 2.0], V.FLOAT64),
    ([b"raw", b"bytes"], None),
    ([[1, 2], [3]], None),  # nested: gguf-py's own path
]


@pytest.mark.parametrize("add_vtype", [True, False])
@pytest.mark.parametrize(("values", "sub_type"), CASES)
def test_array_bytes_are_gguf_pys(tmp_path, values, sub_type, add_vtype):
    ours = fast_writer()(str(tmp_path / "a.gguf"), "llama")
    theirs = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama")
    try:
        expected = theirs._pack_val(values, V.ARRAY, add_vtype, sub_type)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)[:20]):
            ours._pack_val(values, V.ARRAY, add_vtype, sub_type)
        return
    assert ours._pack_val(values, V.ARRAY, add_vtype, sub_type) == expected


def test_mixed_types_are_refused_like_gguf_py(tmp_path):
    ours = fast_writer()(str(tmp_path / "a.gguf"), "llama")
    with pytest.raises(ValueError, match="same type"):
        ours._pack_val(["a", 1], V.ARRAY, True)
    assert ours._pack_val("plain", V.STRING, True) == gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama")._pack_val(
        "plain", V.STRING, True)
