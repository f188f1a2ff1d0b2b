import pyarrow as pa
import pytest

from schemas.arrow import DOCUMENTS, EXAMPLES, conform, decisions, validate
from schemas.errors import SchemaError
from schemas.fingerprint import fingerprint
from schemas.io import write_parquet


def test_validation_names_missing_and_mistyped_columns():
    t = pa.table({"id": [1], "txt": ["a"]})
    with pytest.raises(SchemaError) as err:
        validate(t, DOCUMENTS, where="step 'x'")
    msg = str(err.value)
    assert "missing column(s): text" in msg and "mistyped column(s): id" in msg and "fix:" in msg


def test_conform_casts_and_keeps_extra_columns():
    t = pa.table({"id": ["a"], "messages": [[{"role": "user", "content": "hi"}]], "origin": ["synthetic"],
                  "source_ids": [["d1"]], "teacher": [None], "template": [None], "judge_score": [0.9],
                  "split": ["train"], "meta": [None], "extra": [1]})
    out = conform(t, EXAMPLES, where="test")
    assert out.column_names[:9] == EXAMPLES.names and out.column_names[-1] == "extra"


def test_decisions_builder_and_fingerprint_stability(tmp_path):
    d = decisions(["a", "b"], stage="s", action=["keep", "drop"], reason="r", detail=[None, {"cluster_id": "a"}])
    assert d.column("detail").to_pylist() == [None, '{"cluster_id": "a"}']
    with pytest.raises(ValueError):
        decisions(["a"], stage="s", action="delete", reason="r")
    a = fingerprint(stage="x", version="1", config={"a": 1, "b": [1, 2]})
    b = fingerprint(stage="x", version="1", config={"b": [1, 2], "a": 1})
    assert a == b and a != fingerprint(stage="x", version="2", config={"a": 1, "b": [1, 2]})
    write_parquet(d, tmp_path / "a.parquet")
    write_parquet(d, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
