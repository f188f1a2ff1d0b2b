"""A tiny real bundle, built once per session: RAFT-style rows rendered with THE prompt format -> dataset ->
tiny Llama -> LoRA -> export (real GGUF files, verified) -> index -> bundle stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.prompt_format import PromptFormat
from tests.train.conftest import FACTS, build_base, build_dataset, make_ctx

PASSAGES = 3


def chunks() -> list[dict]:
    """One chunk per fact (its answer sentence, in a runbook) plus the question's words, so retrieval finds it."""
    out = []
    for d, (q, a) in enumerate(FACTS):
        text = f"{q.rstrip('?')}: {a}"
        out.append({"id": f"c{d}", "doc_id": f"doc{d}", "source": f"runbooks/doc{d}.md", "text": text,
                    "span_start": 0, "span_end": len(text), "heading": None, "position": 0, "parent_ids": [f"doc{d}"]})
    return out


def raft_rows(fmt: PromptFormat, n_variants: int = 6) -> list[dict]:
    """Question + k passages (gold at a varying position) -> the answer citing the gold passage."""
    cs = chunks()
    rows = []
    for d, (q, a) in enumerate(FACTS):
        for v in range(n_variants):
            others = [cs[(d + j) % len(cs)] for j in (1, 2)]
            gold_at = v % PASSAGES
            passages = others[:gold_at] + [cs[d]] + others[gold_at:]
            passages = [{"source_id": c["source"], "text": c["text"]} for c in passages]
            messages = fmt.render_messages(f"{q}?", passages) + [{"role": "assistant", "content": f"{a} [{gold_at + 1}]"}]
            rows.append(dict(id=f"raft{d}-{v}", messages=messages, origin="synthetic", source_ids=[f"doc{d}"],
                             teacher="test", template=None, judge_score=None, split=None, meta=None))
    return rows


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """{root, export, dataset, base, train}: a tiny LoRA model trained on RAFT rows and exported to GGUF.

    The plumbing is under test, not answer quality: a 64-wide model does not learn these ~200-token prompts
    (25 epochs: last loss 3.7, no answer right), so training is kept to two epochs."""
    from train.config import ExportConfig, TrainConfig
    from train.export import ExportStage
    from train.sft import TrainStage

    root = tmp_path_factory.mktemp("bundlepipe")
    dataset = build_dataset(root, raft_rows(PromptFormat()))
    base = build_base(root, pretrain_steps=30)
    TrainStage(TrainConfig(epochs=2, learning_rate=3e-3, batch_size=8, rank=8, alpha=16, max_length=384,
                           threads=2)).run(make_ctx(root, "train", {"dataset": dataset, "base": base}))
    ExportStage(ExportConfig(model_name="tiny-rag", quantizations=["F16", "Q8_0"], threads=2)).run(
        make_ctx(root, "export", {"dataset": dataset, "base": base, "train": root / "train"}))
    return {"root": root, "export": root / "export", "dataset": dataset, "base": base, "train": root / "train"}


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory) -> Path:
    """A real index step folder (bm25s) over :func:`chunks`."""
    import pyarrow as pa

    from curation.index.config import IndexConfig
    from curation.index.stage import IndexStage
    from schemas.arrow import CHUNKS
    from schemas.io import write_parquet

    root = tmp_path_factory.mktemp("index")
    write_parquet(pa.Table.from_pylist(chunks(), schema=CHUNKS), root / "chunk" / "part-00000.parquet")
    IndexStage(IndexConfig()).run(make_ctx(root, "index", {"chunk": root / "chunk"}))
    return root / "index"


@pytest.fixture(scope="session")
def bundle_dir(exported, index_dir) -> Path:
    from train.bundle import BundleStage
    from train.bundle_config import BundleConfig

    ctx = make_ctx(exported["root"], "bundle", {"export": exported["export"], "index": index_dir})
    BundleStage(BundleConfig(k=PASSAGES, max_new_tokens=32)).run(ctx)
    return exported["root"] / "bundle" / "bundle"
