"""Recipe stage: scrub PII/secrets from the ``text`` column, one analyzer per worker."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import pyarrow as pa

from schemas.arrow import decisions, quarantine
from curation.pii.config import PiiConfig
from schemas.stage import ShardResult, Stage, StageContext


class PiiStage(Stage[PiiConfig]):
    """Map stage: replaces spans in ``text``; a DECISIONS ``modify`` row per changed document lists the
    replaced spans (type, score, offsets — never the value); rows that fail analysis are quarantined."""

    kind: ClassVar[str] = "map"
    version: ClassVar[str] = "1"
    requires: ClassVar = {"id": pa.string(), "text": pa.large_string()}

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self._key: bytes | None = None

    def load(self) -> None:
        from curation.pii.anonymize import corpus_key
        from curation.pii.engine import get_analyzer

        get_analyzer(self.config)
        if self.config.anonymize == "pseudonym" and self.config.corpus_consistent:
            self._key = corpus_key(self.config)

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        from curation.pii.anonymize import replace
        from curation.pii.engine import analyze_batch

        cfg = self.config
        ids = table.column("id").to_pylist()
        texts = table.column("text").to_pylist()
        try:
            spans: list = analyze_batch(texts, cfg)
        except Exception:  # noqa: BLE001 - find the failing rows one by one below
            spans = []
            for t in texts:
                try:
                    spans.extend(analyze_batch([t], cfg))
                except Exception as exc:  # noqa: BLE001 - becomes a quarantine row with the reason
                    spans.append(exc)
        counters: Counter = Counter()
        out_text, keep_idx, bad_ids, bad_reasons = [], [], [], []
        d_ids, d_reason, d_score, d_detail = [], [], [], []
        for i, (doc_id, text, found) in enumerate(zip(ids, texts, spans)):
            if isinstance(found, Exception):
                bad_ids.append(doc_id)
                bad_reasons.append(f"pii analysis failed: {type(found).__name__}: {found}")
                continue
            keep_idx.append(i)
            if not found:
                out_text.append(text)
                continue
            out_text.append(replace(text, found, cfg, key=self._key))
            types = sorted({s["entity_type"] for s in found})
            counters.update(f"entities:{s['entity_type']}" for s in found)
            counters["modified"] += 1
            d_ids.append(doc_id)
            d_reason.append("pii:" + ",".join(types))
            d_score.append(max(s["score"] for s in found))
            d_detail.append({"spans": [{k: s[k] for k in ("start", "end", "entity_type", "score")} for s in found],
                             "anonymize": cfg.anonymize})
        ctx.progress(len(ids))
        out = table.take(pa.array(keep_idx, type=pa.int64()))
        col = out.schema.get_field_index("text")
        out = out.set_column(col, out.schema.field(col), pa.array(out_text, type=out.schema.field(col).type))
        dec = decisions(d_ids, stage=ctx.step, action="modify", reason=d_reason, score=d_score, detail=d_detail)
        if bad_ids:
            counters["quarantined"] += len(bad_ids)
            dec = pa.concat_tables([dec, decisions(bad_ids, stage=ctx.step, action="quarantine", reason=bad_reasons)])
            q = quarantine(bad_ids, stage=ctx.step, reason=bad_reasons)
            return ShardResult(table=out, decisions=dec, quarantine=q, counters=counters)
        return ShardResult(table=out, decisions=dec, counters=counters)
