"""Session-scoped pytest fixture ``slurm_cluster``: a real one-node Slurm for the tests.

tests/conftest.py registers it (``pytest_plugins``): just name ``slurm_cluster`` as a test
argument. Do not import it into a test module -- each import is a separate fixture with its
own session instance, and a second cluster cannot start while the first holds the machine.

* Needs root (slurmd, munged, /etc/slurm/slurm.conf). Without root the tests are skipped
  -- except under CI (env ``CI`` set to a true value), where they fail instead, so CI can
  never silently skip them.
* If the Slurm binaries are missing and we are root, ``.ci/install-slurm.sh`` installs
  them (apt, ~15 s).
* Session-scoped because ports 6817/6818 and /etc/slurm/slurm.conf are machine-global:
  one test cluster per machine. The daemons are stopped by PID at the end of the session;
  munged only if this session started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.slurm_cluster import SlurmCluster, missing_slurm_binaries

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / ".ci" / "install-slurm.sh"
INSTALL_TIMEOUT = 900
START_TIMEOUT = 60
NEED_ROOT_MESSAGE = "real Slurm tests need root to install/start slurmctld, slurmd and munge"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _skip_or_fail(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def _install_slurm() -> None:
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{INSTALL_SCRIPT} did not finish in {INSTALL_TIMEOUT}s", pytrace=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        pytest.fail(f"{INSTALL_SCRIPT} exited {proc.returncode}:\n{tail}", pytrace=False)
    still_missing = missing_slurm_binaries()
    if still_missing:
        pytest.fail(f"after {INSTALL_SCRIPT}, still missing: {still_missing}", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A started :class:`SlurmCluster` (node idle), stopped by PID after the session."""
    if os.geteuid() != 0:
        _skip_or_fail(NEED_ROOT_MESSAGE)
    if missing_slurm_binaries():
        _install_slurm()
    # Not in pytest's private (0700) tmp dir: slurmd runs a batch script from its spool dir in
    # here as the job's user, and that user's sbatch reads slurm.conf from here too.
    run_dir = Path(tempfile.mkdtemp(prefix="nwh-test-slurm-", dir="/tmp"))
    run_dir.chmod(0o755)
    cluster = SlurmCluster(run_dir)
    try:
        cluster.start(timeout=START_TIMEOUT)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
