"""Annotate stages: route + push rows to review queues; merge submitted answers back with lineage.

Both read an outside system, so what decides whether their cached output is fresh includes its state
(``fingerprint_extra``, computed when the recipe is planned): the push names the server it pushes to;
the merge carries a digest of the submitted answers, so a re-run after reviewers answered more merges
them (and re-runs what depends on the merged rows), while a re-run with no new answers is cached.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.annotate.config import AnnotateConfig, AnnotateMergeConfig
from curation.annotate.merge import agreement, answers_table, merge
from curation.annotate.routing import route
from schemas.errors import SchemaError, SlmforgeError, StageError
from schemas.arrow import quarantine
from schemas.fingerprint import canonical_json
from schemas.io import read_parquet, read_parquet_dir, write_json, write_parquet
from schemas.stage import ShardResult, Stage, StageContext


def _primary_columns(inputs: Mapping[str, Mapping[str, pa.DataType]]) -> tuple[str, list[str]] | None:
    """(name, columns) of the primary input, or None when it makes files (columns unknown)."""
    if not inputs:
        return None
    name, cols = next(iter(inputs.items()))
    return (name, list(cols)) if cols else None


def _require_columns(step: str, what: dict[str, str], inputs: Mapping[str, Mapping[str, pa.DataType]]) -> None:
    primary = _primary_columns(inputs)
    if primary is None:
        return
    name, cols = primary
    missing = {k: c for k, c in what.items()
               if c not in cols and not (c.startswith("meta.") and "meta" in cols)}
    if missing:
        raise SchemaError(
            f"step '{step}' reads column(s) that '{name}' does not produce: "
            + ", ".join(f"{k} -> {c!r}" for k, c in missing.items()),
            received=", ".join(cols), expected="columns of the input (a key of the JSON 'meta' column as 'meta.<key>')",
            fix="use a column listed above, or put the stage that makes it (e.g. 'score' for q_* columns, "
                "'near_dedup' for cluster_id) before this step")


class AnnotateStage(Stage[AnnotateConfig]):
    """Artifact stage: routes the primary input's rows into queues and pushes them (idempotent upsert)."""

    kind = "artifact"

    def check(self, inputs: Mapping[str, Mapping[str, pa.DataType]]) -> None:
        c = self.config
        what = {"id": "id", "text_column": c.text_column, **{f"metadata_columns[{i}]": m for i, m in enumerate(c.metadata_columns)}}
        for i, rule in enumerate(c.rules):
            what[f"rules[{i}].column"] = rule.column
            if rule.group_column:
                what[f"rules[{i}].group_column"] = rule.group_column
        _require_columns(c.step_name, what, inputs)

    def fingerprint_extra(self) -> dict[str, Any]:
        from curation.annotate.client import target_url

        return {"target": target_url(self.config.api_url)}

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
        """Push the primary input (a stage folder, or one Parquet file when run standalone). A row without
        an id cannot be keyed (a second push would duplicate it, its answers could never be merged): it is
        quarantined, not pushed."""
        primary = Path(next(iter(ctx.inputs.values())))
        table = read_parquet(primary) if primary.is_file() else read_parquet_dir(primary)
        if table.num_columns and "id" not in table.column_names:
            raise SchemaError(f"annotate: the input {primary} has no 'id' column", received=table.column_names,
                              expected="rows with an 'id' column (the record id in Argilla)",
                              fix="push a stage's output (ingest and later stages write 'id')")
        out = Path(ctx.out_dir or ctx.stage_dir)
        no_id = table.column("id").is_null() if table.num_columns else pa.array([], pa.bool_())
        n_bad = int(pc.sum(no_id).as_py() or 0)
        if n_bad:
            bad = table.filter(no_id)
            write_parquet(quarantine([""] * n_bad, stage=self.config.step_name, reason="annotate_no_id",
                                     payload=[canonical_json(r) for r in bad.to_pylist()]), out / "quarantine.parquet")
            table = table.filter(pc.invert(no_id))
        pushed = self.push(table)
        routed = pa.table({"queue": [q for q, n in pushed.items() for _ in range(n)]})
        write_json({"pushed": pushed}, out / "queues.json")
        ctx.progress(len(table) + n_bad)
        return {"rows": len(table) + n_bad, "routed": routed.num_rows, "quarantined": n_bad,
                **{f"queue:{q}": n for q, n in pushed.items()}}


def answers_digest(answers: pa.Table) -> str:
    """sha256 of the submitted answers (sorted rows): changes when any answer is added, changed or withdrawn."""
    return hashlib.sha256(canonical_json(answers.to_pylist()).encode()).hexdigest()[:16]


class AnnotateMergeStage(Stage[AnnotateMergeConfig]):
    """Global stage: the answers pulled when the recipe is planned (their digest is in the fingerprint) are
    merged into every shard."""

    kind = "global"

    def __init__(self, config: AnnotateMergeConfig) -> None:
        super().__init__(config)
        self._answers: pa.Table | None = None  # pulled when the recipe is planned
        self._missing: list[str] = []  # queues that did not exist then (this recipe's push may create them)
        self._pull_error: SlmforgeError | None = None

    def check(self, inputs: Mapping[str, Mapping[str, pa.DataType]]) -> None:
        _require_columns(self.config.step_name, {"text_column": self.config.text_column, "id": "id"}, inputs)

    def pull(self, *, client=None, queues: list[str] | None = None) -> pa.Table:
        """The submitted answers of ``queues`` (default: every configured queue; each must exist)."""
        from curation.annotate.client import connect, pull

        client = client or connect(api_url=self.config.api_url)
        return answers_table([a for q in (self.config.queues if queues is None else queues)
                              for a in pull(client, q, workspace=self.config.workspace)])

    def fingerprint_extra(self) -> dict[str, Any]:
        """The state of the review queues: a digest of their submitted answers, pulled now (plan time).

        A queue that does not exist yet (this recipe's push creates it later) counts as no answers; a server
        that cannot be reached gives a fingerprint under which the step fails when it runs (planning itself
        works offline)."""
        from curation.annotate.client import connect, queue_names

        try:
            client = connect(api_url=self.config.api_url)
            names = queue_names(client, workspace=self.config.workspace)
            self._missing = [q for q in self.config.queues if q not in names]
            self._answers = self.pull(client=client, queues=[q for q in self.config.queues if q in names])
        except Exception as exc:  # noqa: BLE001 - the SDK raises several types; the step fails when it runs
            err = exc if isinstance(exc, SlmforgeError) else StageError(
                f"annotate_merge: cannot read the review queues {self.config.queues}: {type(exc).__name__}: {exc}",
                fix="check that the Argilla server is running and ARGILLA_API_URL/ARGILLA_API_KEY are right")
            self._answers, self._pull_error = None, err
            return {"answers": f"unavailable: {type(exc).__name__}"}
        return {"answers": answers_digest(self._answers), "n_answers": self._answers.num_rows}

    def prepare(self, shards: list[Path], ctx: StageContext) -> None:
        if self._pull_error is not None:
            raise self._pull_error
        if self._answers is None:  # run without planning (a direct call): pull now
            self._answers = self.pull()
        elif self._missing:  # planned before this recipe's push ran: now the queues must exist
            from curation.annotate.client import connect, require_queues

            require_queues(connect(api_url=self.config.api_url), self._missing, workspace=self.config.workspace)
        write_parquet(self._answers, Path(ctx.work_dir) / "answers.parquet")
        write_json(agreement(self._answers), Path(ctx.work_dir) / "agreement.json")

    def merge(self, table: pa.Table, answers: pa.Table) -> ShardResult:
        kept, dec, counters = merge(table, answers, text_column=self.config.text_column, stage=self.config.step_name,
                                    conflict=self.config.conflict)
        return ShardResult(table=kept, decisions=dec, counters=Counter(counters))

    def process(self, table: pa.Table, ctx: StageContext) -> ShardResult:
        return self.merge(table, read_parquet(Path(ctx.work_dir) / "answers.parquet"))
