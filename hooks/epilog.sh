#!/bin/bash
# nemo-wandb-hook epilogue for `srun --epilog=.../epilog.sh` and slurm.conf `Epilog=` /
# `EpilogSlurmctld=`.
#
# Slurm runs a slurm.conf epilogue as root with no PATH and none of the user's variables, and
# drains the node when it fails or hangs. So this script uses absolute paths only, reads W&B
# credentials from a file the job's user points to, bounds the hook with `timeout`, and always
# exits 0. The hook itself drops to the job's user (SLURM_JOB_UID) before writing anything.
#
# Settings (environment, or /etc/nemo-wandb-hook/epilog.env for slurm.conf epilogues):
#   NEMO_WANDB_HOOK_BIN       the nemo-wandb-hook executable
#                             (default: the .venv next to this script's directory)
#   NEMO_WANDB_HOOK_BUDGET    seconds the hook may take (default 60)
#   NEMO_WANDB_HOOK_ARGS      extra arguments for `nemo-wandb-hook hook`
# Credentials: the first of $NEMO_WANDB_HOOK_CREDENTIALS and
# ~<job user>/.config/nemo-wandb-hook/credentials that exists; only WANDB_* and
# NEMO_WANDB_HOOK_* lines of the form NAME=VALUE are taken from it (never executed).

PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export PATH

here=$(cd "$(/usr/bin/dirname "$0")" && pwd)
[ -r /etc/nemo-wandb-hook/epilog.env ] && . /etc/nemo-wandb-hook/epilog.env

read_credentials() {
    local file=$1 line name value
    [ -r "$file" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            WANDB_*=*|NEMO_WANDB_HOOK_*=*) ;;
            *) continue ;;
        esac
        name=${line%%=*}
        value=${line#*=}
        case "$name" in *[!A-Za-z0-9_]*) continue ;; esac
        export "$name=$value"
    done < "$file"
    return 0
}

user_home=""
if [ -n "${SLURM_JOB_USER:-}" ]; then
    user_home=$(/usr/bin/getent passwd "$SLURM_JOB_USER" | /usr/bin/cut -d: -f6)
fi
for file in "${NEMO_WANDB_HOOK_CREDENTIALS:-}" "${user_home:+$user_home/.config/nemo-wandb-hook/credentials}"; do
    [ -n "$file" ] && read_credentials "$file" && break
done

bin=${NEMO_WANDB_HOOK_BIN:-$here/../.venv/bin/nemo-wandb-hook}
budget=${NEMO_WANDB_HOOK_BUDGET:-60}
if [ ! -x "$bin" ]; then
    echo "nemo-wandb-hook epilog: $bin is not executable; set NEMO_WANDB_HOOK_BIN" >&2
    exit 0
fi
# The hook stops itself at its budget; `timeout` is the second line of defence.
# shellcheck disable=SC2086
/usr/bin/timeout -k 5 $((budget + 10)) "$bin" hook --budget "$budget" ${NEMO_WANDB_HOOK_ARGS:-} </dev/null
status=$?
[ "$status" -ne 0 ] && echo "nemo-wandb-hook epilog: hook exited $status (ignored)" >&2
exit 0
