#!/usr/bin/env bash
# Near-dup benchmark: slmforge contender (2 and 1 workers) + peers side by side, interleaved in
# rounds (round k = the k-th run of every tool, so all tools of a round see similar machine load),
# then the memory-scaling tier (1x vs 4x synthetic corpus). Usage:
#   bash bench/dedup/run.sh                     # slmforge + rensa peers (bulk, loop)
#   PEERS=all bash bench/dedup/run.sh           # every registered peer (datatrove, text-dedup, datasketch: slow)
#   REPEAT=5 ACC_REPEAT=1 bash bench/dedup/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${BENCH_SHARED:-/work/shared/bench/dedup}
VENVS=${BENCH_VENVS:-/tmp/dedup-venvs}
OUT=${BENCH_OUT:-$ROOT/bench/dedup/results}
PY=${BENCH_PY:-$ROOT/.venv/bin/python}
PEERS=${PEERS:-rensa-bulk,rensa-loop}
REPEAT=${REPEAT:-3}          # throughput rounds
ACC_REPEAT=${ACC_REPEAT:-1}  # accuracy rounds (results are deterministic; timings are small)
SCALE_DOCS=${SCALE_DOCS:-25000}
TIERS=${TIERS:-accuracy throughput}
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
for tier in $TIERS; do
  n=$REPEAT; [ "$tier" = accuracy ] && n=$ACC_REPEAT
  for _ in $(seq "$n"); do
    for w in 2 1; do
      "$PY" run_bench.py run --tier "$tier" --name "slmforge-w$w" --results "$RES" -- \
        "$PY" "$ROOT/bench/dedup/slmforge_contender.py" --workers "$w"
    done
    ONLY=$PEERS; [ "$PEERS" = all ] && ONLY=""
    "$PY" run_bench.py suite --tiers "$tier" --venvs "$VENVS" --results "$RES" ${ONLY:+--only "$ONLY"} --repeat 1
  done
done
"$PY" run_bench.py report --results "$RES" > "$OUT/report.md"
"$PY" "$ROOT/bench/dedup/ratios.py" "$RES" > "$OUT/ratios.md"
# memory scaling: 1x vs 4x synthetic corpus; /usr/bin/time maxrss (one process: the pool is threads)
: > "$OUT/scale.txt"
for k in 1 4; do
  "$PY" "$ROOT/bench/dedup/make_synth.py" --copies $k --docs "$SCALE_DOCS" "$OUT/synth_${k}x.parquet"
  for w in 2 1; do
    /usr/bin/time -f "scale ${k}x workers $w: %e s wall, %U s user, maxrss %M KB" -a -o "$OUT/scale.txt" \
      "$PY" "$ROOT/bench/dedup/slmforge_contender.py" --workers $w --input "$OUT/synth_${k}x.parquet" --output "$OUT/synth_${k}x.out.parquet"
  done
  rm -f "$OUT/synth_${k}x.parquet" "$OUT/synth_${k}x.out.parquet"
done
cat "$OUT/report.md"; echo; cat "$OUT/ratios.md"; echo; cat "$OUT/scale.txt"
