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
# NEMO_WANDB_HOOK_* lines of the form NAME=VALUE are taken from it (never executed). Running
# as root, the user's file is read with the user's permissions and only its WANDB_* lines
# count (the NEMO_WANDB_HOOK_* settings are the admin's).

PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export PATH

here=$(cd "$(/usr/bin/dirname "$0")" && pwd)
[ -r /etc/nemo-wandb-hook/epilog.env ] && . /etc/nemo-wandb-hook/epilog.env

# read_credentials FILE [UID GID]: with UID, the file is read with that user's permissions,
# so a link from a user's file to one only root may read yields nothing, and only its WANDB_*
# lines count: a user must not choose what root runs (NEMO_WANDB_HOOK_BIN) or for how long.
read_credentials() {
    local file=$1 uid=${2:-} gid=${3:-} line name value text
    if [ -n "$uid" ]; then
        text=$(/usr/bin/setpriv --reuid="$uid" --regid="$gid" --init-groups \
            /bin/cat -- "$file" 2>/dev/null) || return 1
    else
        [ -r "$file" ] || return 1
        text=$(/bin/cat -- "$file") || return 1
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            WANDB_*=*) ;;
            NEMO_WANDB_HOOK_*=*) [ -z "$uid" ] || continue ;;
            *) continue ;;
        esac
        name=${line%%=*}
        value=${line#*=}
        case "$name" in *[!A-Za-z0-9_]*) continue ;; esac
        export "$name=$value"
    done <<< "$text"
    return 0
}

user_home="" user_ids=()
if [ -n "${SLURM_JOB_USER:-}" ]; then
    user_home=$(/usr/bin/getent passwd "$SLURM_JOB_USER" | /usr/bin/cut -d: -f6)
    job_uid=${SLURM_JOB_UID:-$(/usr/bin/id -u "$SLURM_JOB_USER" 2>/dev/null)}
    job_gid=${SLURM_JOB_GID:-$(/usr/bin/id -g "$SLURM_JOB_USER" 2>/dev/null)}
    if [ "$(/usr/bin/id -u)" = 0 ] && [ "${job_uid:-0}" != 0 ]; then
        user_ids=("$job_uid" "${job_gid:-$job_uid}")  # root reads the user's file as the user
    fi
fi
# The site's file (set by the admin, e.g. in epilog.env) first, then the user's own.
if [ -z "${NEMO_WANDB_HOOK_CREDENTIALS:-}" ] || ! read_credentials "$NEMO_WANDB_HOOK_CREDENTIALS"; then
    [ -n "$user_home" ] && read_credentials "$user_home/.config/nemo-wandb-hook/credentials" \
        "${user_ids[@]}"
fi

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
