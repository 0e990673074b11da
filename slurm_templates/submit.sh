#!/bin/bash
# Submit an evaluation array and the export job that runs after it.
#   submit.sh <invocation dir> <evaluation command> [extra sbatch options...]
# The command runs in each task directory (<task>.<idx>); the array has one index per task.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
inv_dir=$(readlink -f "$1"); eval_command=$2; shift 2
count=$(find "$inv_dir" -mindepth 1 -maxdepth 1 -type d -name '*.[0-9]*' | wc -l)
[ "$count" -gt 0 ] || { echo "submit.sh: no <task>.<idx> directories in $inv_dir" >&2; exit 2; }
array_id=$(INVOCATION_DIR=$inv_dir EVAL_COMMAND=$eval_command NEMO_WANDB_HOOK_HOOKS=$here/../hooks \
    sbatch --parsable --export=ALL --array=0-$((count - 1)) "$@" "$here/eval_array.sbatch")
export_id=$(INVOCATION_DIR=$inv_dir sbatch --parsable --export=ALL \
    --dependency=afterany:"$array_id" --kill-on-invalid-dep=yes "$@" "$here/export_after.sbatch")
echo "array job $array_id, export job $export_id"
