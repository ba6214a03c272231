#!/usr/bin/env bash
# Quick end-to-end check of the GPU path (simulate -> shards -> train with CUDA graphs -> infer),
# printing the run's time breakdown (time_breakdown.json: the checkpoint's snapshot, wait and
# last-write shares included). EMA=<decay> trains a second run with --ema-decay (the graphed
# EMA update) and scores its best.pt (the averaged weights).
#   ROWS=60000 EPOCHS=5 BATCH=1024 EMA=0.999 bash bench/gpu_smoke.sh
set -euo pipefail
D=${D:-/tmp/smoke}; H="python3 -m haloscope"
ROWS=${ROWS:-6000}; EPOCHS=${EPOCHS:-2}; BATCH=${BATCH:-256}; EMA=${EMA:-}
W=${W:-4}
rm -rf "$D"
$H simulate --out "$D/data" --rows "$ROWS" --workers "$W" --no-progress
$H shards --data "$D/data" --out "$D/shards" --workers "$W" --no-progress
train() {  # run dir, more flags
    local run=$1; shift
    $H train --shards "$D/shards" --out-dir "$run" --epochs "$EPOCHS" --batch-size "$BATCH" \
        --num-workers 4 --no-progress "$@"
    $H infer --ckpt "$run/best.pt" --shards "$D/shards" --split test \
        --out "$run/scores.parquet" --no-progress
    tail -n 2 "$run/metrics.jsonl" | head -n 1
    cat "$run/time_breakdown.json"
}
train "$D/run"
$H eval --scores "$D/run/scores.parquet" --out-csv "$D/strat.csv" --report-dir "$D/report"
if [ -n "$EMA" ]; then
    train "$D/run_ema" --ema-decay "$EMA"
fi
