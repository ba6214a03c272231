#!/usr/bin/env bash
# `haloscope train` under torchrun on every GPU of this host (graphed step with the captured
# all-reduce, no DDP wrapper), then a --resume: random shards, a few steps, seconds of GPU.
set -euo pipefail
D=${D:-/tmp/mgsmoke}; NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
rm -rf "$D"; mkdir -p "$D"
python3 - "$D/shards" <<'PY'
import sys
from pathlib import Path
from haloscope.bench.gpu import write_random_shards
root = Path(sys.argv[1])
for split, n, seed in (("train", 32768, 0), ("val", 8192, 1)):
    write_random_shards(root / split, n, seed=seed)
PY
# a hang (as in destroy_process_group before the fix in train/run.py) fails after LIMIT seconds
LIMIT=${LIMIT:-300}
run() { timeout "$LIMIT" torchrun --standalone --nproc-per-node "$NGPU" -m haloscope train --shards "$D/shards" \
  --out-dir "$D/run" --batch-size $((256 * NGPU)) --num-workers 2 --no-progress \
  --max-steps-per-epoch 40 --log-every 20 "$@"; }
run --epochs 2
run --epochs 3 --resume
grep -c '"global_step"' "$D/run/metrics.jsonl"
