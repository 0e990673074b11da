# nemo-wandb-hook trap for sbatch scripts: `source /path/to/hooks/trap.sh` near the top.
#
# Runs `nemo-wandb-hook hook` once when the script exits: normally, on `scancel` (SIGTERM), on
# the time limit (SIGTERM, then SIGKILL after Slurm's KillWait, 30 s by default), or on an
# early-warning signal from `#SBATCH --signal=B:USR1@120`. Bash runs a trap only after the
# foreground command returns, so start the evaluation in the background and wait for it:
#     my_eval_command & wait $!
#
# Settings (environment):
#   NEMO_WANDB_HOOK_BIN          the executable (default: nemo-wandb-hook on PATH)
#   NEMO_WANDB_HOOK_TASK_DIR     the task directory (default: worked out from the job)
#   NEMO_WANDB_HOOK_ARGS         extra arguments, e.g. "-o log_mode=multi_task"
#   NEMO_WANDB_HOOK_TERM_BUDGET  seconds the hook may take after SIGTERM (default 20; keep it
#                                below KillWait)

_nwh_ran=""
_nwh_run() {
    [ -n "$_nwh_ran" ] && return 0
    _nwh_ran=1
    local where=()
    [ -n "${NEMO_WANDB_HOOK_TASK_DIR:-}" ] && where=(--task-dir "$NEMO_WANDB_HOOK_TASK_DIR")
    # shellcheck disable=SC2086
    "${NEMO_WANDB_HOOK_BIN:-nemo-wandb-hook}" hook "${where[@]}" "$@" ${NEMO_WANDB_HOOK_ARGS:-} \
        </dev/null || true
}
_nwh_on_signal() {
    trap - EXIT
    _nwh_run --budget "${NEMO_WANDB_HOOK_TERM_BUDGET:-20}"
    exit "$1"
}
trap '_nwh_run' EXIT
trap '_nwh_on_signal 143' TERM
trap '_nwh_on_signal 138' USR1
