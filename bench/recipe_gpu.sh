#!/usr/bin/env bash
# Issue 17 on one GPU machine: the whole-run efficiency, time to quality and the recipe
# ablations on mock v2, each arm a full `haloscope train` run with everything else equal,
# scored on a control-rich test survey through the same verbs a user types (infer from
# parquet, eval: detectable subset first, thresholds from all controls).
#
# Data (made once per WORK, skipped when present, so later calls on the same machine go on):
#   - a train/val survey of ROWS rows (split 0.88 / 0.12 / 0), seed 1;
#   - a test survey of TEST_ROWS rows, seed 2, control fraction 0.85 (>= 100k test controls at
#     250k rows, so FPR 1e-4 rests on >= 10 false positives, not 1 or 2); TEST_ROWS=0: none,
#     and the arms are compared on their validation rows only (time to quality);
#   - train/val shards per shard set an arm names, made when the first arm needs them:
#     outer (the seed's clip), asinh (the converter's default), bright (outer with train
#     lenses of arc_snr < MIN_SNR dropped).
# Arms (ARMS, run in order, each skipped when its results exist):
#   base    outer, focal (0.25, 2), all positives, batch 256, lr 3e-4   (the seed's recipe)
#   asinh   base with asinh shards
#   bce     base with --loss bce
#   bright  base on the bright shard set (val/test untouched)
#   b1024   base with batch 1024 and lr 1e-3 (ConvNeXt's lr = 4e-3 x B / 4096)
#   a1024   asinh with batch 1024 and lr 1e-3
#   <name>=<shard-set>:<train flags>   any other arm, e.g. "e1024=asinh:--batch-size 1024 --ema-decay 0.999"
#           (with such arms, separate the arms by ";": ARMS="base;e1024=asinh:--batch-size 1024")
# Arms named in WHOLE_RUN_ARMS run through `haloscope bench gpu --whole-run` (the synthetic
# graphed step at the arm's batch size first, then the run, back to back) ->
# $RES/whole_run_<arm>.json with whole_run_over_synthetic.
# With DEADLINE_S > 0 an arm starts only when ARM_NEEDS_S seconds are left of DEADLINE_S
# (counted from START_S, which a wrapper sets to its call's start); otherwise the script
# exits 3 and the next call on the same machine goes on from that arm.
# Everything a reader needs lands in $RES (packed into OUT_TGZ after every arm).
#
# Usage: WORK=/tmp/r17 OUT_TGZ=$OUT/r.tar.gz ARMS="base asinh" bash bench/recipe_gpu.sh
set -euo pipefail
WORK=${WORK:-/tmp/r17}
RES=${RES:-$WORK/results}
ROWS=${ROWS:-700000}
TEST_ROWS=${TEST_ROWS:-250000}
EPOCHS=${EPOCHS:-5}
MIN_SNR=${MIN_SNR:-3}
ARMS=${ARMS:-base asinh bce bright b1024}
WHOLE_RUN_ARMS=${WHOLE_RUN_ARMS-base}  # set and empty: no arm through the whole-run bench
MONITOR=${MONITOR:-det_tpr@fpr1e-3}  # the first session's ablations used tpr@fpr1e-3
SYNTH_SECONDS=${SYNTH_SECONDS:-30}
W=${W:-$(nproc)}
LOADER_WORKERS=${LOADER_WORKERS:-6}
COMMON=${COMMON:-}  # more train flags for every arm (e.g. --preset demo for a CPU smoke run)
DEVICE=${DEVICE:-cuda}
DEADLINE_S=${DEADLINE_S:-0}
START_S=${START_S:-$(date +%s)}
ARM_NEEDS_S=${ARM_NEEDS_S:-0}  # with DEADLINE_S: seconds an arm needs (default: no check)
PY=${PY:-python3}
H="$PY -m haloscope"
OUT_TGZ=${OUT_TGZ:-}
mkdir -p "$WORK" "$RES"
t0=$START_S
stage() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
left() { echo $(( DEADLINE_S - ($(date +%s) - t0) )); }
pack() { [ -z "$OUT_TGZ" ] || tar -czf "$OUT_TGZ" -C "$(dirname "$RES")" "$(basename "$RES")"; }

stage "simulate: train/val $ROWS rows, test $TEST_ROWS rows"
[ -d "$WORK/data/region_split=val" ] || $H simulate --out "$WORK/data" --rows "$ROWS" --seed 1 \
    --workers "$W" --selection-frac 0 --quantize 4 --split-fracs 0.88,0.12,0 --no-progress
[ "$TEST_ROWS" -eq 0 ] || [ -d "$WORK/testdata/region_split=test" ] || $H simulate \
    --out "$WORK/testdata" --rows "$TEST_ROWS" --seed 2 --workers "$W" --selection-frac 0 \
    --quantize 4 --control-frac 0.85 --split-fracs 0,0,1 --no-progress

set_flags() {  # shard set -> converter flags
    case "$1" in
        outer) echo "--norm-method outer" ;;
        asinh) echo "--norm-method asinh" ;;
        bright) echo "--norm-method outer --train-min-arc-snr $MIN_SNR" ;;
        *) echo "unknown shard set $1" >&2; return 2 ;;
    esac
}
shards() {  # shard set: its train/val shards, once
    [ ! -f "$WORK/shards_$1/val/manifest.json" ] || return 0
    local flags; flags=$(set_flags "$1")
    stage "shards $1 ($flags)"
    $H shards --data "$WORK/data" --out "$WORK/shards_$1" --splits train,val --workers "$W" \
        --no-progress $flags | tail -2
    $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'train samples', m['num_samples'], 'rejected', m['rejected'])" \
        "$WORK/shards_$1/train/manifest.json" "$1"
}

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
done_file() {  # arm name -> the file whose presence means the arm is done
    if [ "$TEST_ROWS" -eq 0 ]; then echo "$RES/$1/metrics.jsonl"; else echo "$RES/$1/stratified_fpr.json"; fi
}

if [[ $ARMS == *";"* ]]; then IFS=";" read -ra arms <<< "$ARMS"; else read -ra arms <<< "$ARMS"; fi
for arm in "${arms[@]}"; do
    arm=$(echo "$arm" | xargs)  # trim
    [ -n "$arm" ] || continue
    name=${arm%%=*}; spec=$(arm_spec "$arm"); set_=${spec%%|*}; flags=${spec#*|}
    dir=$WORK/arms/$name; res=$RES/$name
    [ -f "$(done_file "$name")" ] && { stage "arm $name: done before"; continue; }
    shards "$set_"
    pack
    if [ "$DEADLINE_S" -gt 0 ] && [ "$(left)" -lt "$ARM_NEEDS_S" ]; then
        stage "arm $name needs ${ARM_NEEDS_S}s, $(left)s left: next call"; exit 3
    fi
    mkdir -p "$dir" "$res"
    train_flags="--epochs $EPOCHS --num-workers $LOADER_WORKERS --monitor $MONITOR $flags $COMMON"
    stage "arm $name: shards_$set_, $train_flags"
    if [[ " $WHOLE_RUN_ARMS " == *" $name "* ]]; then  # synthetic step, then this run
        batch=256
        if [[ $train_flags =~ --batch-size\ ([0-9]+) ]]; then batch=${BASH_REMATCH[1]}; fi
        $H bench gpu --whole-run --shards "$WORK/shards_$set_" --device "$DEVICE" \
            --batch-size "$batch" --seconds "$SYNTH_SECONDS" --work-dir "$dir" \
            --out "$RES/whole_run_$name.json" \
            --train-args="${train_flags/--batch-size $batch/}" 2>&1 | tail -4
        run=$(ls -d "$dir"/*/ 2>/dev/null | head -1); run=${run%/}
        [ -f "$dir/best.pt" ] && run=$dir
    else
        run=$dir
        $H train --shards "$WORK/shards_$set_" --out-dir "$run" --no-progress --overwrite \
            --device "$DEVICE" $train_flags > "$res/train.log" 2>&1 \
            || { tail -30 "$res/train.log"; exit 1; }
    fi
    for f in config.resolved.json time_breakdown.json curves.png metrics.jsonl; do
        [ -f "$run/$f" ] && cp "$run/$f" "$res/"
    done
    if [ "$TEST_ROWS" -gt 0 ]; then
        $H infer --ckpt "$run/best.pt" --data "$WORK/testdata" --split test \
            --out "$dir/scores.parquet" --no-progress --model-name "$name" \
            --num-workers "$LOADER_WORKERS" --device "$DEVICE"
        $H eval --scores "$dir/scores.parquet" --out-csv "$res/stratified_fpr.csv" > "$res/eval.log" 2>&1
        $PY bench/recipe_table.py "$RES" > "$RES/table.md" || true
    fi
    $PY bench/recipe_table.py "$RES" --time-to-quality > "$RES/time_to_quality.md" || true
    pack
done
stage "done"; cat "$RES/table.md" "$RES/time_to_quality.md" 2>/dev/null || true
