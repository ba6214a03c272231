#!/usr/bin/env bash
# Quick end-to-end check of the GPU path (simulate -> shards -> train with CUDA graphs -> infer).
set -euo pipefail
D=${D:-/tmp/smoke}; H="python3 -m haloscope"
rm -rf "$D"
$H simulate --out "$D/data" --rows 6000 --workers 4 --no-progress
$H shards --data "$D/data" --out "$D/shards" --workers 4
$H train --shards "$D/shards" --out-dir "$D/run" --epochs 2 --batch-size 256 --num-workers 4 --no-progress
$H infer --ckpt "$D/run/best.pt" --shards "$D/shards" --split test --out "$D/scores.parquet" --no-progress
$H eval --scores "$D/scores.parquet" --out-csv "$D/strat.csv" --report-dir "$D/report"
tail -n 3 "$D/run/metrics.jsonl"
