"""SYNTH_CANDIDATES -> EXAMPLES: the ``synth_filter`` stage applies the checks of ``synth/checks.py``.

A global stage: near-duplicates and consistency compare rows of different shards, and they only look at
rows that passed the row checks before them, so ``prepare`` runs every check, in order, over all shards
and writes the verdict of each dropped or flagged row, by its (shard, row) position, to
``_work/verdicts.parquet``. ``process`` then maps each shard: rows without a verdict are kept (reason
``passed``, score = judge score), dropped rows get a decision with the check's reason and score, flagged
rows are kept with their reason and the check's note merged into ``meta`` (e.g. ``conflict_with``).
The output has exactly the EXAMPLES columns (synth's score columns stay in synth's output).

Nothing here calls a teacher: changing a threshold re-runs only this stage.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from schemas.arrow import EXAMPLES, SYNTH_CANDIDATES, columns, decisions
from schemas.errors import ConfigError, StageError
from schemas.io import read_parquet, write_parquet
from schemas.stage import ShardResult, Stage, StageContext
from synth.checks import Env, Verdict, run_checks
from synth.config import SynthFilterConfig

VERDICTS_FILE = "verdicts.parquet"
_VERDICTS = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("id", pa.string()), ("check", pa.string()), ("keep", pa.bool_()), ("reason", pa.string()),
                       ("score", pa.float64()), ("note", pa.string())])


class SynthFilterStage(Stage[SynthFilterConfig]):
    kind = "global"
    version = "1"
    requires = columns(SYNTH_CANDIDATES)
    output = EXAMPLES

    def __init__(self, config: SynthFilterConfig) -> None:
        super().__init__(config)
        self._verdicts: tuple[Path, dict[tuple[int, int], tuple[str, str, Verdict]]] | None = None

    def check(self, inputs) -> None:
        cfg = self.config
        for key, steps in (("eval_step", [cfg.eval_step] if cfg.eval_step else []), ("existing_steps", cfg.existing_steps)):
            missing = [s for s in steps if s not in (cfg.inputs or [])]
            if missing:
                raise ConfigError(
                    f"synth_filter: {key} must also be listed in 'inputs' so the runner hands its folder over",
                    received=str(cfg.inputs), expected=f"inputs containing {missing}",
                    fix=f"add 'inputs: [<synth step>, {', '.join(missing)}]'",
                )
        if cfg.pii_scan:
            from schemas.errors import require

            require("presidio_analyzer", extra="pii", purpose="synth_filter's PII re-scan of outputs (pii_scan)")

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        self.check({})
        rows, where = [], []
        for i, s in enumerate(shards):
            part = read_parquet(s).to_pylist()  # every column: a new check may read any
            rows += part
            where += [(i, k) for k in range(len(part))]
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        env = Env.load(self.config, ctx.inputs, work_dir=ctx.work_dir)
        found = sorted(run_checks(rows, self.config, env).items())
        table = pa.table({"shard": [where[k][0] for k, _ in found], "row": [where[k][1] for k, _ in found],
                          "id": [rows[k]["id"] for k, _ in found], "check": [c for _, (c, _) in found],
                          "keep": [v.keep for _, (_, v) in found], "reason": [v.reason for _, (_, v) in found],
                          "score": [v.score for _, (_, v) in found],
                          "note": [json.dumps(v.note, sort_keys=True) if v.note else None for _, (_, v) in found]},
                         schema=_VERDICTS)
        write_parquet(table, ctx.work_dir / VERDICTS_FILE)

    def _load_verdicts(self, ctx: StageContext) -> dict[tuple[int, int], tuple[str, str, Verdict]]:
        """(shard, row) -> (id, check, verdict): by position, so rows that share an id are still told apart."""
        path = ctx.work_dir / VERDICTS_FILE
        if self._verdicts is None or self._verdicts[0] != path:
            self._verdicts = (path, {(r["shard"], r["row"]): (r["id"], r["check"], Verdict(
                r["keep"], r["reason"], r["score"], json.loads(r["note"]) if r["note"] else None))
                for r in read_parquet(path).to_pylist()})
        return self._verdicts[1]

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        found = self._load_verdicts(ctx)
        rows = table.select(EXAMPLES.names).to_pylist()
        kept, counters = [], Counter()
        keep_dec: dict[str, list] = {"ids": [], "reason": [], "score": [], "detail": []}
        drop_dec: dict[str, list] = {"ids": [], "reason": [], "score": [], "detail": []}
        shard = ctx.shard or 0
        for k, r in enumerate(rows):
            rid, check, v = found.get((shard, k), (r["id"], "", Verdict(True, "passed", r["judge_score"])))
            if rid != r["id"]:
                raise StageError(f"synth_filter: shard {shard} row {k} is {r['id']!r}, but the checks saw {rid!r} there",
                                 received=r["id"], expected=rid,
                                 fix="the synth output changed after this step was prepared: delete this step's folder "
                                     "and run again")
            dec = keep_dec if v.keep else drop_dec
            dec["ids"].append(r["id"])
            dec["reason"].append(v.reason)
            dec["score"].append(v.score)
            dec["detail"].append({"source_ids": r["source_ids"], **(v.note or {})})
            if not v.keep:
                counters[f"dropped:{v.reason.split(':', 1)[0]}"] += 1
                if ":" in v.reason:
                    counters[f"dropped:{v.reason}"] += 1
                for t in (v.note or {}).get("entity_types", []):
                    counters[f"{check}:{t}"] += 1
                continue
            if check:  # flagged by a check: kept, its note goes into meta
                counters[f"flagged:{v.reason.removeprefix(check + '_')}"] += 1
                r["meta"] = json.dumps({**json.loads(r["meta"] or "{}"), **(v.note or {})}, sort_keys=True)
            kept.append(r)
        counters["kept"] = len(kept)
        ctx.progress(table.num_rows)
        dec = pa.concat_tables([
            decisions(keep_dec["ids"], stage=ctx.step, action="keep", reason=keep_dec["reason"], score=keep_dec["score"],
                      detail=keep_dec["detail"]),
            decisions(drop_dec["ids"], stage=ctx.step, action="drop", reason=drop_dec["reason"], score=drop_dec["score"],
                      detail=drop_dec["detail"]),
        ])
        return ShardResult(pa.Table.from_pylist(kept, schema=EXAMPLES), dec, counters=counters)
