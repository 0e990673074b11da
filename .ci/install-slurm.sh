#!/usr/bin/env bash
# Install a single-node Slurm (slurmctld + slurmd + client tools) and munge from the
# distribution packages, for the real-Slurm tests (tests/test_slurm_cluster.py).
#
# - Idempotent: does nothing when slurmctld, slurmd, sbatch and munged are already present.
# - Non-interactive and bounded: every apt call runs under `timeout`.
# - Starts nothing. The test fixture (tests/support/slurm_fixture.py) writes its own
#   slurm.conf, starts munged/slurmctld/slurmd and stops them again by PID.
#
# Needs root (or passwordless sudo). Exits non-zero with a message on failure.
set -euo pipefail

APT_TIMEOUT="${APT_TIMEOUT:-600}"   # seconds, per apt-get call
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'install-slurm: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_all() {
    local bin
    for bin in slurmctld slurmd sbatch munged; do
        command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || return 1
    done
}

if have_all; then
    log "slurmctld, slurmd, sbatch and munged already installed; nothing to do."
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "must run as root (or with passwordless sudo) to apt-get install ${PACKAGES[*]}."
    fi
fi

command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found; this script supports Debian/Ubuntu only. Install ${PACKAGES[*]} by hand."

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
          -o Acquire::Retries=3 -o Acquire::http::Timeout=60)

log "apt-get update (timeout ${APT_TIMEOUT}s)"
timeout "$APT_TIMEOUT" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q update \
    || die "apt-get update failed or timed out after ${APT_TIMEOUT}s."

log "apt-get install ${PACKAGES[*]} (timeout ${APT_TIMEOUT}s)"
# policy-rc.d-free containers: the packages' postinst may try to start services; that is
# harmless when there is no init system, and we start everything ourselves anyway.
timeout "$APT_TIMEOUT" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install "${APT_OPTS[@]}" "${PACKAGES[@]}" \
    || die "apt-get install ${PACKAGES[*]} failed or timed out after ${APT_TIMEOUT}s."

have_all || die "packages installed but slurmctld/slurmd/sbatch/munged still not found on PATH or in /usr/sbin."

log "installed: $(slurmctld -V 2>/dev/null || /usr/sbin/slurmctld -V 2>/dev/null || echo 'slurm (version unknown)')"
