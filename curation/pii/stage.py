"""Recipe stage: scrub PII/secrets from every text-bearing column, one analyzer per worker, plus the residual scan."""

from __future__ import annotations

import os
from collections import Counter
from typing import ClassVar

import pyarrow as pa

from schemas.arrow import decisions, quarantine
from curation.pii.config import PiiConfig
from schemas.stage import ShardResult, Stage, StageContext


_FIELDS = ("start", "end", "entity_type", "score")


def _brief(residual: dict[str, list[dict]]) -> list[dict]:
    return [{"column": col, "entity_type": s["entity_type"], "score": s["score"]} for col, c in residual.items() for s in c]


class PiiStage(Stage[PiiConfig]):
    """Map stage: replaces spans in ``text``, ``title``, ``meta`` (nested), ``source`` and every other text column
    (see ``columns``); a DECISIONS ``modify`` row per changed document lists the replaced spans (type, score,
    offsets or path — never the value); rows that fail analysis are quarantined. Residual-scan spans (score in
    [residual_threshold, score_threshold)) are replaced too (``residual: replace``) or left in place and the row is
    pushed to the Argilla queue ``review_queue`` with the suspects marked (``residual: review``)."""

    kind: ClassVar[str] = "map"
    version: ClassVar[str] = "2"
    requires: ClassVar = {"id": pa.string(), "text": pa.large_string()}

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self._key: bytes | None = None
        self._client = None

    def load(self) -> None:
        from curation.pii.anonymize import corpus_key
        from curation.pii.engine import get_analyzer

        get_analyzer(self.config)
        if self.config.anonymize == "pseudonym" and self.config.corpus_consistent:
            self._key = corpus_key(self.config)
        if self.config.residual == "review" and self._client is None:
            from curation.annotate.client import connect

            self._client = connect(api_url=self.config.api_url)

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        from curation.pii.columns import scrub_table

        cfg = self.config
        source_key = self._key or (os.environ.get(cfg.key_env) or "").encode() or None
        new, reports = scrub_table(table, cfg, key=self._key, source_key=source_key)
        ids = table.column("id").to_pylist()
        counters: Counter = Counter()
        keep_idx, bad_ids, bad_reasons, review = [], [], [], []
        d_ids, d_reason, d_score, d_detail, d_action = [], [], [], [], []
        for i, (doc_id, rep) in enumerate(zip(ids, reports)):
            if rep.error is not None:
                bad_ids.append(doc_id)
                bad_reasons.append(f"pii analysis failed: {type(rep.error).__name__}: {rep.error}")
                continue
            keep_idx.append(i)
            if rep.residual:
                review.append((doc_id, rep))
            if not rep.changed:
                if rep.residual:
                    d_ids.append(doc_id)
                    d_reason.append("pii:residual_review")
                    d_score.append(max(s["score"] for c in rep.residual.values() for s in c))
                    d_detail.append({"residual": _brief(rep.residual)})
                    d_action.append("keep")
                continue
            spans = [s for col in rep.applied.values() for s in col]
            counters.update(f"entities:{s['entity_type']}" for s in spans)
            counters["residual:replaced"] += sum(s["score"] < cfg.score_threshold for s in spans)
            counters.update(f"modified:{col}" for col, found in rep.applied.items() if found)
            counters["modified"] += 1
            detail = {"spans": [{k: s[k] for k in _FIELDS} for s in rep.applied.get("text", [])],
                      "anonymize": cfg.anonymize}
            other = {col: [{k: s[k] for k in ("path", *_FIELDS)} for s in found]
                     for col, found in rep.applied.items() if col != "text"}
            if other:
                detail["columns"] = other
            if rep.residual:
                detail["residual"] = _brief(rep.residual)
            d_ids.append(doc_id)
            d_reason.append("pii:" + ",".join(sorted({s["entity_type"] for s in spans}))
                            + (";residual_review" if rep.residual else ""))
            d_score.append(max(s["score"] for s in spans))
            d_detail.append(detail)
            d_action.append("modify")
        if review:
            counters["residual:review_rows"] += len(review)
            counters["residual:review_spans"] += sum(len(s) for _, r in review for s in r.residual.values())
            self._push(review)
        ctx.progress(len(ids))
        out = new.take(pa.array(keep_idx, type=pa.int64()))
        dec = decisions(d_ids, stage=ctx.step, action=d_action, reason=d_reason, score=d_score, detail=d_detail)
        if bad_ids:
            counters["quarantined"] += len(bad_ids)
            dec = pa.concat_tables([dec, decisions(bad_ids, stage=ctx.step, action="quarantine", reason=bad_reasons)])
            q = quarantine(bad_ids, stage=ctx.step, reason=bad_reasons)
            return ShardResult(table=out, decisions=dec, quarantine=q, counters=counters)
        return ShardResult(table=out, decisions=dec, counters=counters)

    def _push(self, review: list) -> None:
        """One Argilla record per row (record id = row id, so a re-run updates it): the marked strings, the
        suspect types and their highest score. The row itself flows on unchanged in the residual band."""
        from curation.annotate.client import push

        rows = pa.table({
            "id": [doc_id for doc_id, _ in review],
            "text": ["\n\n".join(f"{path}: {m}" if path != "text" else m for path, m in sorted(
                rep.marked.items(), key=lambda kv: kv[0] != "text")) for _, rep in review],
            "residual_types": [",".join(sorted({s["entity_type"] for c in rep.residual.values() for s in c}))
                               for _, rep in review],
            "residual_score": [max(s["score"] for c in rep.residual.values() for s in c) for _, rep in review],
        })
        push(self._client, rows, queue=self.config.review_queue, rule_column=None, text_column="text",
             metadata_columns=["residual_types", "residual_score"], workspace=self.config.review_workspace,
             labels=["keep", "drop"])
