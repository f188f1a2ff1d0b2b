"""RAFT rows: the question with the passages the recipe's index retrieves for it (issue 22).

For every grounded question, :class:`RaftRetriever` asks the index (the very index the bundle serves with) for
the top ``k + 1`` chunks with the question as query and builds the prompt from the top ``k``:

* with probability ``oracle_p`` the source (oracle) chunk is in the prompt: where retrieval found it, at its
  rank; where it did not, in place of the lowest-ranked passage (``forced_position: last``) or, with
  ``forced_position: random``, at a seeded random position among the others;
* otherwise it is removed (the ``k + 1``-th hit fills its place) and the answer has no citation (RAFT's
  "distractors only" rows, which teach the model not to trust a passage blindly).

The draw is a function of ``seed`` and the example id, so a re-run makes the same rows. Passages are rendered
with :class:`schemas.prompt_format.PromptFormat` (the function serving and open-book eval use); the answer ends
with ``[n]``, the number of the passage it came from. ``meta`` records ``k``, ``oracle_retrieved`` (retrieval put
the oracle in the top k), ``oracle_rank`` (its 1-based rank there, else None), ``oracle_included``,
``oracle_position``, ``passages`` (chunk and source id per number) and ``citations`` (``{"n": source id}``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, StageError
from synth.config import RaftConfig

RAFT_INDEX_TEMPLATE = "raft_index_v1"


def find_index(inputs: Mapping[str, Path]) -> Path:
    """The folder of the index step among a step's inputs (the first input that holds an index)."""
    from curation.index.reader import resolve

    for path in list(inputs.values())[1:]:
        try:
            return resolve(path)
        except ConfigError:
            continue
    raise ConfigError("synth: 'raft' retrieves passages with the recipe's index, but no input is an index step",
                      received=", ".join(inputs) or "(no inputs)", expected="an index step among the inputs",
                      fix="add '- stage: index' after chunk and write 'inputs: [chunk, index]' on the synth step")


def draw(seed: int, row_id: str) -> float:
    """The row's uniform draw in [0, 1): the oracle is in its prompt when this is below ``oracle_p``."""
    return random.Random(f"raft:{seed}:{row_id}").random()


class RaftRetriever:
    """Passages for RAFT rows from one index folder (opened once per worker)."""

    def __init__(self, config: RaftConfig, index_path: Path) -> None:
        import pyarrow.parquet as pq

        from curation.index import open_index
        from curation.index.reader import CHUNKS_FILE

        self.config = config
        self.index_path = index_path
        self.index = open_index(index_path)
        if len(self.index) == 0:
            raise StageError("synth: the index has no passages", received=str(index_path),
                             fix="check the chunk step kept rows, then re-run the index step")
        titles = pq.read_table(self.index.path / CHUNKS_FILE, columns=["chunk_id", "title"])
        self._titles = dict(zip(titles.column("chunk_id").to_pylist(), titles.column("title").to_pylist()))

    def title(self, chunk_id: str) -> str | None:
        """The page title the index holds for ``chunk_id`` (None when it has none)."""
        return self._titles.get(chunk_id) or None

    def _oracle(self, chunk: dict) -> dict[str, Any]:
        return {"chunk_id": chunk["id"], "source_id": chunk["source"], "text": chunk["text"],
                "title": self._titles.get(chunk["id"])}

    def passages(self, row_id: str, question: str, chunk: dict) -> tuple[list[dict], dict[str, Any]]:
        """(passages in prompt order, meta) for one question whose source is ``chunk``."""
        cfg = self.config
        hits = self.index.search(question, k=cfg.k + 1)
        ranked = [{"chunk_id": h.chunk_id, "source_id": h.source_id, "text": h.text, "title": h.title} for h in hits]
        ids = [p["chunk_id"] for p in ranked]
        rank = ids.index(chunk["id"]) + 1 if chunk["id"] in ids[: cfg.k] else None
        include = draw(cfg.seed, row_id) < cfg.oracle_p
        if include:
            picked = ranked[: cfg.k]
            if rank is None:
                if len(picked) == cfg.k:
                    picked.pop()  # the lowest-ranked passage makes room
                slot = len(picked)
                if cfg.forced_position == "random":
                    slot = random.Random(f"raft-slot:{cfg.seed}:{row_id}").randrange(len(picked) + 1)
                picked.insert(slot, self._oracle(chunk))
        else:
            picked = [p for p in ranked if p["chunk_id"] != chunk["id"]][: cfg.k]
        position = next((n for n, p in enumerate(picked, start=1) if p["chunk_id"] == chunk["id"]), None)
        meta = {"k": cfg.k, "oracle_retrieved": rank is not None, "oracle_rank": rank, "oracle_included": include,
                "oracle_position": position, "raft_draw": round(draw(cfg.seed, row_id), 6),
                "passages": [{"n": n, "chunk_id": p["chunk_id"], "source_id": p["source_id"]}
                             for n, p in enumerate(picked, start=1)],
                "citations": {str(position): chunk["source"]} if position else {},
                "prompt_format": cfg.prompt_format.fingerprint()}
        return picked, meta

    def turn(self, cand: dict) -> tuple[list[dict[str, str]], str, dict[str, Any]]:
        """(prompt messages, cited answer, meta) of one candidate."""
        fmt = self.config.prompt_format
        picked, meta = self.passages(cand["id"], cand["question"], cand["chunk"])
        answer = cand["answer"] if meta["oracle_position"] is None else f"{cand['answer']} [{meta['oracle_position']}]"
        return fmt.render_messages(cand["question"], picked), answer, meta


def recall_by_split(rows: list[dict]) -> list[tuple[str, int, float, int]]:
    """(split, questions, retrieval recall@k, k) over the RAFT rows among ``rows`` (``meta`` JSON with
    ``oracle_retrieved``): the share of questions whose source chunk the index put in its top k."""
    import json

    per: dict[str, list[bool]] = {}
    ks: dict[str, int] = {}
    for r in rows:
        meta = json.loads(r.get("meta") or "{}")
        if "oracle_retrieved" in meta:
            split = r.get("split") or "-"
            per.setdefault(split, []).append(bool(meta["oracle_retrieved"]))
            ks[split] = meta["k"]
    order = {"train": 0, "validation": 1, "test": 2}
    return [(s, len(v), sum(v) / len(v), ks[s]) for s, v in sorted(per.items(), key=lambda kv: order.get(kv[0], 3))]


__all__ = ["RaftRetriever", "find_index", "draw", "recall_by_split", "RAFT_INDEX_TEMPLATE"]
