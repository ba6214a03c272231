#!/usr/bin/env bash
# One generation on mock v2 (issue 16 must-show 3), on one GPU machine, through the same
# `haloscope` verbs a user types: simulate -> shards -> train -> infer -> eval (detectable
# subset first), plus the transfer check on lenses and confusers of the independent
# lenstronomy renderer (`transfer-sets`, scored at the mock test's thresholds).
#
# Sized to finish inside one 10-minute device call on one H200 with 16 cores: ~700k mock rows
# (>= 400k train samples), 10 epochs at batch 256 (~17k img/s graphed). The transfer sets are
# rendered on half the cores while the model trains. Results (JSON, CSVs, curves, the report
# as a tarball) are copied to $RES as soon as each exists, so a run cut short still returns
# what it finished.
#
# Usage: WORK=/tmp/m2 OUT_TGZ=$OUT/results.tar.gz ROWS=700000 EPOCHS=10 bash bench/mock_v2_gpu.sh
set -euo pipefail
WORK=${WORK:-/tmp/m2}
RES=${RES:-$WORK/results}
ROWS=${ROWS:-700000}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-256}
W=${W:-$(nproc)}
LOADER_WORKERS=${LOADER_WORKERS:-6}
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. --preset demo for a CPU smoke run
SIM_ARGS=${SIM_ARGS:-}      # e.g. --split-fracs 0.8,0.1,0.1
TRANSFER_CHECK=${TRANSFER_CHECK:-1}  # 0: skip the transfer sets
STOP_AFTER=${STOP_AFTER:-}  # "shards": stop there (a later call with the same WORK goes on)
TRANSFER_LENSES=${TRANSFER_LENSES:-3000}
TRANSFER_CONFUSERS=${TRANSFER_CONFUSERS:-2000}
PY=${PY:-python3}
H="$PY -m haloscope"
DATA=$WORK/data; SHARDS=$WORK/shards; RUN=$WORK/run; TRANSFER=$WORK/transfer
OUT_TGZ=${OUT_TGZ:-}  # e.g. $OUT/results.tar.gz: RES packed after every stage
mkdir -p "$WORK" "$RES"
t0=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
pack() { [ -z "$OUT_TGZ" ] || tar -czf "$OUT_TGZ" -C "$(dirname "$RES")" "$(basename "$RES")"; }

stage "simulate $ROWS rows"
[ -d "$DATA/region_split=test" ] || $H simulate --out "$DATA" --rows "$ROWS" --seed 1 \
    --workers "$W" --selection-frac 0 --quantize 4 --no-progress $SIM_ARGS
[ -s "$RES/realism.txt" ] || $PY -m haloscope.preprocess.sim.realism --data "$DATA" \
    > "$RES/realism.txt" 2>&1 || true
pack

stage "shards"
[ -f "$SHARDS/test/manifest.json" ] || $H shards --data "$DATA" --out "$SHARDS" --workers "$W" \
    2>&1 | tail -3
$PY - "$SHARDS" <<'EOF'
import json, sys
for s in ("train", "val", "test"):
    m = json.load(open(f"{sys.argv[1]}/{s}/manifest.json"))
    print(s, "samples", m["num_samples"], "counts", {k: v for k, v in m["counts"].items() if "hard" not in k})
EOF

[ "$STOP_AFTER" = shards ] && { pack; stage "stopped after shards"; exit 0; }

bg=""
[ "$TRANSFER_CHECK" = 1 ] && stage "transfer sets (background, $((W / 2)) workers)"
[ "$TRANSFER_CHECK" = 1 ] && ( $H transfer-sets --out "$TRANSFER" --lenses "$TRANSFER_LENSES" --controls 1000 \
    --confusers "$TRANSFER_CONFUSERS" --workers $((W / 2)) --no-progress --overwrite \
    > "$WORK/transfer.log" 2>&1 && touch "$TRANSFER/done" ) &
[ "$TRANSFER_CHECK" = 1 ] && bg=$!

stage "train $EPOCHS epochs"
$H train --shards "$SHARDS" --out-dir "$RUN" --epochs "$EPOCHS" --batch-size "$BATCH" \
    --num-workers "$LOADER_WORKERS" --no-progress --monitor tpr@fpr1e-3 --overwrite $TRAIN_ARGS \
    > "$RUN.log" 2>&1 || { tail -30 "$RUN.log"; exit 1; }
grep -E " val: |training (completed|early)" "$RUN.log" | tail -12 || true
cp "$RUN.log" "$RES/train.log"
for f in curves.png metrics.jsonl config.resolved.toml; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$RES/"; done
pack

stage "infer test"
$H infer --ckpt "$RUN/best.pt" --shards "$SHARDS" --split test --out "$RUN/scores_test.parquet" \
    --no-progress --model-name mock_v2
stage "eval test"
$H eval --scores "$RUN/scores_test.parquet" --out-csv "$RES/stratified_fpr.csv" \
    --report-dir "$WORK/report" --stamps "$SHARDS/test/stamps.zarr"
cp -r "$WORK/report" "$RES/report"
pack

[ "$TRANSFER_CHECK" = 1 ] || { stage "done (no transfer check)"; exit 0; }
stage "transfer check"
wait "$bg" || { tail -20 "$WORK/transfer.log"; exit 1; }
$H infer --ckpt "$RUN/best.pt" --data "$TRANSFER" --split test \
    --out "$RUN/scores_transfer.parquet" --no-progress --model-name mock_v2
$H eval --scores "$RUN/scores_transfer.parquet" --reference-scores "$RUN/scores_test.parquet" \
    --out-csv "$WORK/transfer_eval.csv"
cp "$WORK/transfer_eval_transfer.csv" "$RES/transfer.csv"
cp "$WORK/transfer_eval.json" "$RES/transfer_eval.json"
pack
stage "done"
