#!/bin/bash
# Submit an array conversion as three chained jobs (run on a login node):
#   pass 1 (array) -> pass 2 (array, afterok) -> merge (afterok: manifests + verify).
#
#   DATA=/parquet/dr10 SHARDS=/scratch/shards NUM_TASKS=32 slurm/submit_shards.sh
#
# NUM_TASKS (default 32) is the array size of both passes. Extra sbatch options for every
# job (partition, account) go in SBATCH_ARGS; the rest as in slurm/shards.sbatch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${DATA:?set DATA}" "${SHARDS:?set SHARDS}"
last=$(( ${NUM_TASKS:-32} - 1 ))
# shellcheck disable=SC2086  # SBATCH_ARGS is a word list
j1=$(sbatch --parsable ${SBATCH_ARGS:-} --array=0-$last "$here/shards.sbatch" pass1)
j2=$(sbatch --parsable ${SBATCH_ARGS:-} --array=0-$last --dependency=afterok:${j1%%;*} \
  "$here/shards.sbatch" pass2)
j3=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency=afterok:${j2%%;*} \
  "$here/shards_merge.sbatch")
echo "pass 1: job ${j1%%;*} (array 0-$last); pass 2: job ${j2%%;*}; merge: job ${j3%%;*}"
