"""Annotate stages: route + push rows to review queues; merge submitted answers back with lineage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.annotate.merge import agreement, answers_table, merge
from curation.annotate.routing import route
from curation.annotate.config import AnnotateConfig, AnnotateMergeConfig
from schemas.io import read_parquet, read_parquet_dir, write_json, write_parquet
from schemas.stage import ShardResult, Stage, StageContext


class AnnotateStage(Stage[AnnotateConfig]):
    """Artifact stage: routes the primary input's rows into queues and pushes them (idempotent upsert)."""

    kind = "artifact"

    def route(self, table: pa.Table) -> dict[str, pa.Table]:
        return route(table, self.config.rules, max_per_queue=self.config.max_per_queue)

    def push(self, table: pa.Table, *, client=None) -> dict[str, int]:
        from curation.annotate.client import connect, push

        client = client or connect(api_url=self.config.api_url)
        rule_col = {r.queue: r.column for r in self.config.rules}
        return {queue: push(client, rows, queue=queue, rule_column=rule_col[queue], text_column=self.config.text_column,
                            metadata_columns=self.config.metadata_columns, workspace=self.config.workspace,
                            labels=self.config.labels)
                for queue, rows in self.route(table).items()}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        primary = next(iter(ctx.inputs.values()))
        table = read_parquet_dir(primary)
        pushed = self.push(table)
        routed = pa.table({"queue": [q for q, n in pushed.items() for _ in range(n)]})
        out = ctx.out_dir or ctx.stage_dir
        write_json({"pushed": pushed}, Path(out) / "queues.json")
        ctx.progress(len(table))
        return {"rows": len(table), "routed": routed.num_rows, **{f"queue:{q}": n for q, n in pushed.items()}}


class AnnotateMergeStage(Stage[AnnotateMergeConfig]):
    """Global stage: pulls submitted answers once (prepare), then merges them into every shard."""

    kind = "global"

    def pull(self, *, client=None) -> pa.Table:
        from curation.annotate.client import connect, pull

        client = client or connect(api_url=self.config.api_url)
        rows = [a for q in self.config.queues for a in pull(client, q, workspace=self.config.workspace)]
        return answers_table(rows)

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        answers = self.pull()
        write_parquet(answers, Path(ctx.work_dir) / "answers.parquet")
        write_json(agreement(answers), Path(ctx.work_dir) / "agreement.json")

    def merge(self, table: pa.Table, answers: pa.Table) -> ShardResult:
        kept, dec, counters = merge(table, answers, text_column=self.config.text_column, stage=self.config.step_name,
                                    conflict=self.config.conflict)
        return ShardResult(table=kept, decisions=dec, counters=Counter(counters))

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        return self.merge(table, read_parquet(Path(ctx.work_dir) / "answers.parquet"))
