#!/usr/bin/env bash
# Near-dup benchmark: slmforge contender + peers side by side in ONE run on the shared corpus,
# then the memory-scaling tier (1x vs 4x synthetic corpus). Usage:
#   bash bench/dedup/run.sh                     # slmforge + rensa peers (bulk, loop)
#   PEERS=all bash bench/dedup/run.sh           # every registered peer (datatrove, text-dedup, datasketch: slow)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${BENCH_SHARED:-/work/shared/bench/dedup}
VENVS=${BENCH_VENVS:-/tmp/dedup-venvs}
OUT=${BENCH_OUT:-$ROOT/bench/dedup/results}
PY=${BENCH_PY:-$ROOT/.venv/bin/python}
PEERS=${PEERS:-rensa-bulk,rensa-loop}
SCALE_DOCS=${SCALE_DOCS:-25000}
mkdir -p "$OUT"
if [ "$PEERS" = all ]; then
  [ -d "$VENVS/venv_td" ] || bash "$SHARED/setup_venvs.sh" "$VENVS"
else
  if [ ! -x "$VENVS/venv_rensa/bin/python" ]; then
    python3 -m venv "$VENVS/venv_rensa"
    "$VENVS/venv_rensa/bin/pip" install -q numpy==2.4.6 pyarrow==26.0.1 polars==2.1.0 rensa==0.5.0   # as setup_venvs.sh
  fi
fi
RES="$OUT/results.jsonl"; : > "$RES"
cd "$SHARED"
for tier in accuracy throughput; do
  for w in 2 1; do
    "$PY" run_bench.py run --tier "$tier" --name "slmforge-w$w" --results "$RES" -- \
      "$PY" "$ROOT/bench/dedup/slmforge_contender.py" --workers "$w"
  done
  ONLY=$PEERS; [ "$PEERS" = all ] && ONLY=""
  "$PY" run_bench.py suite --tiers "$tier" --venvs "$VENVS" --results "$RES" ${ONLY:+--only "$ONLY"} --repeat 1
done
"$PY" run_bench.py report --results "$RES" > "$OUT/report.md"
# memory scaling: 1x vs 4x synthetic corpus, peak RSS of the whole process tree (/usr/bin/time: largest process)
for k in 1 4; do
  "$PY" "$ROOT/bench/dedup/make_synth.py" --copies $k --docs "$SCALE_DOCS" "$OUT/synth_${k}x.parquet"
  /usr/bin/time -f "scale ${k}x: %e s wall, maxrss %M KB" -a -o "$OUT/scale.txt" \
    "$PY" "$ROOT/bench/dedup/slmforge_contender.py" --workers 2 --input "$OUT/synth_${k}x.parquet" --output "$OUT/synth_${k}x.out.parquet"
  rm -f "$OUT/synth_${k}x.parquet" "$OUT/synth_${k}x.out.parquet"
done
cat "$OUT/report.md" "$OUT/scale.txt"
