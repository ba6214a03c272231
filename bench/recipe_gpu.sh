#!/usr/bin/env bash
# Issue 17 on one GPU machine: the whole-run efficiency and the recipe ablations on mock v2,
# each arm a full `haloscope train` run with everything else equal, scored on a control-rich
# test survey through the same verbs a user types (infer from parquet, eval: detectable subset
# first, thresholds from all controls).
#
# Data (made once per WORK, skipped when present, so later calls on the same machine go on):
#   - a train/val survey of ROWS rows (split 0.88 / 0.12 / 0), seed 1;
#   - a test survey of TEST_ROWS rows, seed 2, control fraction 0.85 (>= 100k test controls at
#     the default sizes, so FPR 1e-4 rests on >= 10 false positives, not 1 or 2);
#   - shards three ways: outer (the seed's), asinh, outer with --train-min-arc-snr $MIN_SNR.
# Arms (ARMS, run in order, each skipped when its eval JSON exists):
#   base    outer, focal (0.25, 2), all positives, batch 256, lr 3e-4   (the seed's recipe)
#           run through `haloscope bench gpu --whole-run`: its synthetic graphed step first,
#           then this run, back to back -> whole_run.json (whole_run_over_synthetic)
#   asinh   base with --norm-method asinh shards
#   bce     base with --loss bce
#   bright  base with train lenses of arc_snr < MIN_SNR dropped (val/test untouched)
#   b1024   base with batch 1024 and lr 1e-3 (ConvNeXt's lr = 4e-3 x B / 4096)
#   <name>=<shard-set>:<train flags>   any other arm, e.g. "a1024=asinh:--batch-size 1024 --lr 1e-3"
# Everything a reader needs lands in $RES (packed into OUT_TGZ after every arm).
#
# Usage: WORK=/tmp/r17 OUT_TGZ=$OUT/r.tar.gz ARMS="base asinh" bash bench/recipe_gpu.sh
set -euo pipefail
WORK=${WORK:-/tmp/r17}
RES=${RES:-$WORK/results}
ROWS=${ROWS:-700000}
TEST_ROWS=${TEST_ROWS:-200000}
EPOCHS=${EPOCHS:-5}
MIN_SNR=${MIN_SNR:-3}
ARMS=${ARMS:-base asinh bce bright b1024}
SYNTH_SECONDS=${SYNTH_SECONDS:-30}
WHOLE_RUN=${WHOLE_RUN:-1}  # 0: the base arm is a plain `haloscope train` run
W=${W:-$(nproc)}
LOADER_WORKERS=${LOADER_WORKERS:-6}
COMMON=${COMMON:-}  # more train flags for every arm (e.g. --preset demo for a CPU smoke run)
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
H="$PY -m haloscope"
OUT_TGZ=${OUT_TGZ:-}
mkdir -p "$WORK" "$RES"
t0=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
pack() { [ -z "$OUT_TGZ" ] || tar -czf "$OUT_TGZ" -C "$(dirname "$RES")" "$(basename "$RES")"; }

stage "simulate: train/val $ROWS rows, test $TEST_ROWS rows"
[ -d "$WORK/data/region_split=val" ] || $H simulate --out "$WORK/data" --rows "$ROWS" --seed 1 \
    --workers "$W" --selection-frac 0 --quantize 4 --split-fracs 0.88,0.12,0 --no-progress
[ -d "$WORK/testdata/region_split=test" ] || $H simulate --out "$WORK/testdata" \
    --rows "$TEST_ROWS" --seed 2 --workers "$W" --selection-frac 0 --quantize 4 \
    --control-frac 0.85 --split-fracs 0,0,1 --no-progress

shards() {  # name, converter flags
    [ -f "$WORK/shards_$1/val/manifest.json" ] || $H shards --data "$WORK/data" \
        --out "$WORK/shards_$1" --splits train,val --workers "$W" --no-progress ${2:-} | tail -2
}
stage "shards: outer, asinh, outer + train lenses with arc_snr >= $MIN_SNR"
shards outer ""
shards asinh "--norm-method asinh"
shards bright "--train-min-arc-snr $MIN_SNR"
$PY - "$WORK" <<'EOF'
import json, sys
for v in ("outer", "asinh", "bright"):
    m = json.load(open(f"{sys.argv[1]}/shards_{v}/train/manifest.json"))
    print(v, "train samples", m["num_samples"], "rejected", m["rejected"])
EOF
pack

arm_spec() {  # arm -> "shard-set|train flags"
    case "$1" in
        base) echo "outer|" ;;
        asinh) echo "asinh|" ;;
        bce) echo "outer|--loss bce" ;;
        bright) echo "bright|" ;;
        b1024) echo "outer|--batch-size 1024 --lr 1e-3" ;;
        a1024) echo "asinh|--batch-size 1024 --lr 1e-3" ;;
        *=*:*) local rest=${1#*=}; echo "${rest%%:*}|${rest#*:}" ;;
        *) echo "unknown arm $1" >&2; return 2 ;;
    esac
}

for arm in $ARMS; do
    name=${arm%%=*}; spec=$(arm_spec "$arm"); set_=${spec%%|*}; flags=${spec#*|}
    dir=$WORK/arms/$name; res=$RES/$name
    [ -f "$res/stratified_fpr.json" ] && { stage "arm $name: done before"; continue; }
    mkdir -p "$dir" "$res"
    train_flags="--epochs $EPOCHS --num-workers $LOADER_WORKERS --monitor tpr@fpr1e-3 $flags $COMMON"
    stage "arm $name: shards_$set_, $train_flags"
    if [ "$name" = base ] && [ "$WHOLE_RUN" = 1 ]; then  # the whole-run measurement: synthetic step, then this run
        $H bench gpu --whole-run --shards "$WORK/shards_$set_" --device "$DEVICE" \
            --seconds "$SYNTH_SECONDS" --work-dir "$dir" --out "$RES/whole_run.json" \
            --train-args="$train_flags" 2>&1 | tail -4
        run=$(ls -d "$dir"/*/ 2>/dev/null | head -1); run=${run%/}
        [ -f "$dir/best.pt" ] && run=$dir
    else
        run=$dir
        $H train --shards "$WORK/shards_$set_" --out-dir "$run" --no-progress --overwrite \
            --device "$DEVICE" $train_flags > "$res/train.log" 2>&1 \
            || { tail -30 "$res/train.log"; exit 1; }
    fi
    for f in metrics.jsonl config.resolved.json time_breakdown.json curves.png; do
        [ -f "$run/$f" ] && cp "$run/$f" "$res/"
    done
    $H infer --ckpt "$run/best.pt" --data "$WORK/testdata" --split test --out "$dir/scores.parquet" \
        --no-progress --model-name "$name" --num-workers "$LOADER_WORKERS" --device "$DEVICE"
    $H eval --scores "$dir/scores.parquet" --out-csv "$res/stratified_fpr.csv" > "$res/eval.log" 2>&1
    $PY bench/recipe_table.py "$RES" > "$RES/table.md" || true
    pack
done
stage "done"; cat "$RES/table.md" 2>/dev/null || true
