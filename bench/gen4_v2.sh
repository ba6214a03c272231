#!/usr/bin/env bash
# Issue 17 item 4 on one GPU machine: Gen3 -> mine -> Gen4 on mock v2 with the measured recipe,
# through the verbs a user types. Every stage is skipped when its output exists, so the
# experiment spans several device calls on one machine (WORK survives while it stays warm);
# training stops itself (SIGUSR1: save last.pt, exit) before a call's limit and resumes with
# `--resume auto` in the next call.
#
#   data     a train/val survey of ROWS rows (seed 1, split 0.88 / 0.12 / 0) and a control-rich
#            test survey of TEST_ROWS rows (seed 2, control fraction 0.85), joined into one
#            region_split root (the test split is the second survey's)
#   gen3     `haloscope shards` (asinh, the default) -> `haloscope train`
#   mine     Gen3 scores the train split; controls above MIN_SCORE / the top TOP_K are mined
#   gen4     train shards with the hard negatives x HN_WEIGHT; val/test are Gen3's, verified
#            (experiments.gen4.reuse_eval_shards); trained through `haloscope bench gpu
#            --whole-run`, so the run is also the whole-run efficiency measurement
#   test     both models score the test split; `haloscope eval` (detectable subset first) and
#            the side-by-side table (evaluate.compare)
# Recipe (TRAIN_ARGS): ConvNeXt-Tiny, batch 1024 at lr 1e-3 (issue 17's time-to-quality
# measure: 1.4x sooner to a fixed validation target than batch 256), focal, asinh shards,
# best.pt by the detectable subset's val TPR at FPR 1e-3.
#
# Usage: WORK=/tmp/g4 RES=$OUT/g4 DEADLINE_S=560 bash bench/gen4_v2.sh
set -euo pipefail
WORK=${WORK:-/tmp/g4}
RES=${RES:-$WORK/results}
ROWS=${ROWS:-1050000}
TEST_ROWS=${TEST_ROWS:-250000}  # ~105k test controls after the gates (200k gave 84k)
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-1024}
LR=${LR:-1e-3}
SEED=${SEED:-0}
MIN_SCORE=${MIN_SCORE:-0.9}
TOP_K=${TOP_K:-20000}
HN_WEIGHT=${HN_WEIGHT:-5}
SYNTH_SECONDS=${SYNTH_SECONDS:-20}
W=${W:-$(nproc)}
LOADER_WORKERS=${LOADER_WORKERS:-8}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-convnext_tiny}
DEADLINE_S=${DEADLINE_S:-0}  # > 0: stop training this many seconds after START_S (a date +%s)
START_S=${START_S:-$(date +%s)}  # a wrapper passes its own start, so the deadline is the call's
SIM_ARGS=${SIM_ARGS:---quantize 4}
WHOLE_RUN_GEN=${WHOLE_RUN_GEN:-gen4}  # the generation trained through bench gpu --whole-run
WHOLE_RUN_NEEDS_S=${WHOLE_RUN_NEEDS_S:-420}  # with DEADLINE_S: seconds a whole run needs
FREE_DISK=${FREE_DISK:-1}  # 1: delete the Gen3 train shards once Gen3 has scored them
STOP_AFTER=${STOP_AFTER:-}  # mine: end once the lookup is mined (Gen4 in a later session)
PY=${PY:-python3}
H="$PY -m haloscope"
TRAIN_ARGS=${TRAIN_ARGS:---arch $ARCH --epochs $EPOCHS --batch-size $BATCH --lr $LR --seed $SEED --num-workers $LOADER_WORKERS --val-batch-size 1024 --monitor det_tpr@fpr1e-3}
mkdir -p "$WORK" "$RES"
t0=$START_S
stage() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
left() { echo $(( DEADLINE_S - ($(date +%s) - t0) )); }

stage "simulate: train/val $ROWS rows, test $TEST_ROWS rows"
[ -d "$WORK/data/region_split=val" ] || $H simulate --out "$WORK/data" --rows "$ROWS" --seed 1 \
    --workers "$W" --selection-frac 0 --split-fracs 0.88,0.12,0 --no-progress $SIM_ARGS
[ -d "$WORK/testdata/region_split=test" ] || $H simulate --out "$WORK/testdata" \
    --rows "$TEST_ROWS" --seed 2 --workers "$W" --selection-frac 0 --control-frac 0.85 \
    --split-fracs 0,0,1 --no-progress $SIM_ARGS
rm -rf "$WORK/data/region_split=test"  # the first survey's (empty) test split
ln -sfn "$WORK/testdata/region_split=test" "$WORK/data/region_split=test"

stage "shards gen3"
[ -f "$WORK/shards/gen3/test/manifest.json" ] || $H shards --data "$WORK/data" \
    --out "$WORK/shards/gen3" --workers "$W" --seed "$SEED" --no-progress

train() {  # gen, shard root, run dir
    if [ -f "$3/done" ]; then return 0; fi
    local limit=""
    if [ "$DEADLINE_S" -gt 0 ]; then
        [ "$(left)" -gt 60 ] || { echo "no time left for $1 in this call"; exit 3; }
        limit="timeout -s USR1 -k 40 $(left)"
    fi
    stage "train $1 (${limit:-no deadline})"
    set +e
    $limit $H train --shards "$2" --out-dir "$3" --device "$DEVICE" --no-progress \
        --resume auto $TRAIN_ARGS
    local rc=$?
    set -e
    # a run stopped by the deadline saved last.pt: the next call resumes it
    if [ $rc -ne 0 ] || ! $PY -c "
import json,sys; t=json.load(open(sys.argv[1])); sys.exit(t['reason'] not in ('completed','early_stopped'))" \
        "$3/time_breakdown.json"; then
        echo "train $1 stopped (rc $rc): resume in the next call"; exit 3
    fi
    touch "$3/done"
}
whole_run() {  # gen, shard root: train through `bench gpu --whole-run` into $WORK/$gen/whole_run
    [ ! -f "$WORK/$1/whole_run/done" ] || return 0
    [ "$DEADLINE_S" -le 0 ] || [ "$(left)" -gt "$WHOLE_RUN_NEEDS_S" ] || { echo "$1 needs a fresh call"; exit 3; }
    stage "train $1 through bench gpu --whole-run (synthetic step ${SYNTH_SECONDS}s first)"
    $H bench gpu --whole-run --shards "$2" --work-dir "$WORK/$1" \
        --device "$DEVICE" --arch "$ARCH" --batch-size "$BATCH" --seconds "$SYNTH_SECONDS" \
        --train-args "$(echo $TRAIN_ARGS | sed -e "s/--batch-size $BATCH //" -e "s/--arch $ARCH //")" \
        --out "$RES/whole_run_$1.json"
    touch "$WORK/$1/whole_run/done"
}
ckpt() {  # gen -> its best.pt
    if [ "$WHOLE_RUN_GEN" = "$1" ]; then echo "$WORK/$1/whole_run/best.pt"; else echo "$WORK/$1/best.pt"; fi
}
if [ "$WHOLE_RUN_GEN" = gen3 ]; then
    whole_run gen3 "$WORK/shards/gen3"
else
    train gen3 "$WORK/shards/gen3" "$WORK/gen3"
fi

infer() {  # gen, split, ckpt
    local out="$WORK/$1/scores_$2.parquet"
    [ -f "$out" ] || { stage "infer $1 $2"; $H infer --ckpt "$3" --shards "$WORK/shards/gen3" \
        --split "$2" --out "$out" --batch-size 1024 --model-name "$1" --device "$DEVICE" \
        --num-workers "$LOADER_WORKERS" --no-progress; }
}
infer gen3 train "$(ckpt gen3)"
if [ "$FREE_DISK" = 1 ] && [ -f "$WORK/gen3/scores_train.parquet" ]; then
    # Gen3 is trained and has scored its train split: its train shards (~15 GB at 625k
    # samples) are not read again (the manifest stays for reuse_eval_shards's check), and a
    # 64 GiB disk cannot hold them beside the Gen4 train shards
    find "$WORK/shards/gen3/train" -name "*.tar" -delete
fi
infer gen3 test "$(ckpt gen3)"

stage "mine"
[ -f "$WORK/hard_neg_lookup.parquet" ] || $H mine --scores "$WORK/gen3/scores_train.parquet" \
    --out "$WORK/hard_neg_lookup.parquet" --min-score "$MIN_SCORE" --top-k "$TOP_K" \
    --min-count "$TOP_K" --split train

[ "$STOP_AFTER" != mine ] || { stage "stop after mine"; exit 0; }
stage "shards gen4 (train + hard negatives x$HN_WEIGHT; val/test reused)"
[ -f "$WORK/shards/gen4/train/manifest.json" ] || $H shards --data "$WORK/data" \
    --out "$WORK/shards/gen4" --splits train --hard-neg-path "$WORK/hard_neg_lookup.parquet" \
    --hard-neg-weight "$HN_WEIGHT" --workers "$W" --seed "$SEED" --no-progress
[ -f "$RES/reuse_eval_shards.json" ] || $PY - "$WORK" "$RES/reuse_eval_shards.json" <<'EOF'
import json, sys
from pathlib import Path
from haloscope.experiments.gen4 import reuse_eval_shards
w = Path(sys.argv[1])
notes = reuse_eval_shards(w / "shards/gen3", w / "shards/gen4", w / "hard_neg_lookup.parquet")
Path(sys.argv[2]).write_text(json.dumps(notes, indent=1) + "\n")
print(json.dumps(notes["train"]))
EOF

if [ "$WHOLE_RUN_GEN" = gen4 ]; then
    whole_run gen4 "$WORK/shards/gen4"
else
    train gen4 "$WORK/shards/gen4" "$WORK/gen4"
fi
infer gen4 test "$(ckpt gen4)"

for gen in gen3 gen4; do
    run=$(dirname "$(ckpt $gen)")
    mkdir -p "$RES/$gen"
    [ -f "$RES/$gen/stratified_fpr.json" ] || { stage "eval $gen"; $H eval \
        --scores "$WORK/$gen/scores_test.parquet" --out-csv "$RES/$gen/stratified_fpr.csv" \
        --report-dir "$RES/$gen/report" $([ "$gen" = gen4 ] && echo --compare "$WORK/gen3/scores_test.parquet"); }
    cp "$run/time_breakdown.json" "$RES/$gen/" 2>/dev/null || true
    $PY - "$run" "$RES/$gen/val_metrics.jsonl" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines() if l.strip()]
Path(sys.argv[2]).write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("kind") == "val" or "val/auroc" in r))
EOF
done
stage "compare"
$PY - "$WORK" "$RES" <<'EOF'
import json, sys
from pathlib import Path
from haloscope.evaluate.compare import compare_generations
w, res = Path(sys.argv[1]), Path(sys.argv[2])
c = compare_generations({g: w / g / "scores_test.parquet" for g in ("gen3", "gen4")})
(res / "gen3_vs_gen4.md").write_text(c.to_markdown() + "\n")
c.to_csv(res / "gen3_vs_gen4.csv")
(res / "gen3_vs_gen4.json").write_text(json.dumps({"ci_method": c.ci_method, "rows": c.rows}, indent=1, default=str) + "\n")
print(c.to_markdown())
EOF
stage "done"
