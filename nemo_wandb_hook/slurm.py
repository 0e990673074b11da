"""What the Slurm job that just ended was: ids, working directory, owner.

Batch scripts and `srun --epilog` see `SLURM_*` variables; a slurm.conf epilogue sees no PATH
and no array variables, so the rest comes from `scontrol show job` (absolute path, bounded).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCONTROL_CANDIDATES = ("/usr/bin/scontrol", "/usr/local/bin/scontrol", "/opt/slurm/bin/scontrol")
SCONTROL_TIMEOUT = 10.0
# A key starts a record or follows a space; its value runs to the next key, so values with
# spaces (WorkDir=/data/my results) stay whole.
KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/.]*)=")


class UnknownOwner(RuntimeError):
    """Running as root for a job whose user cannot be told: nothing may be done as root."""


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    array_job_id: str | None = None
    array_task_id: str | None = None
    work_dir: Path | None = None
    stdout: Path | None = None
    user: str | None = None
    uid: int | None = None
    gid: int | None = None

    def ids(self) -> dict[str, str]:
        """The ids recorded in run.config, in the environment's variable names."""
        pairs = {
            "SLURM_JOB_ID": self.job_id,
            "SLURM_ARRAY_JOB_ID": self.array_job_id,
            "SLURM_ARRAY_TASK_ID": self.array_task_id,
        }
        return {k: v for k, v in pairs.items() if v}


def scontrol() -> str | None:
    found = shutil.which("scontrol")
    return found or next((p for p in SCONTROL_CANDIDATES if os.access(p, os.X_OK)), None)


def show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a mapping; empty when Slurm cannot tell (logged)."""
    binary = scontrol()
    if binary is None:
        log.warning("scontrol not found; cannot look up Slurm job %s", job_id)
        return {}
    try:
        out = subprocess.run(
            [binary, "show", "job", "--oneliner", job_id],
            capture_output=True, text=True, timeout=SCONTROL_TIMEOUT, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("scontrol show job %s failed: %s", job_id, err)
        return {}
    # An array job's id lists every task's record, and each has "ArrayJobId=<id>": pick the
    # record whose own JobId is the one asked for.
    records = [parse_record(ln) for ln in out.splitlines() if ln.strip()]
    mine = [r for r in records if r.get("JobId") == job_id]
    return mine[0] if mine else records[0] if len(records) == 1 else {}


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol show --oneliner` record as a mapping."""
    keys = list(KEY.finditer(line))
    ends = [k.start() for k in keys[1:]] + [len(line)]
    return {k.group(1): line[k.end():end].strip() for k, end in zip(keys, ends, strict=True)}


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _first(*values: int | None) -> int | None:
    """The first known value: uid/gid 0 (root) is a value, not a gap."""
    return next((v for v in values if v is not None), None)


def _path(value: str | None) -> Path | None:
    return Path(value) if value and value not in ("(null)", "") else None


def current_job(env: Mapping[str, str]) -> SlurmJob | None:
    """The job from the environment, completed by scontrol when variables are missing."""
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    array_task = env.get("SLURM_ARRAY_TASK_ID")
    work_dir = env.get("SLURM_JOB_WORK_DIR") or env.get("SLURM_SUBMIT_DIR")
    info: dict[str, str] = {}
    if not (array_job and work_dir):
        info = show_job(job_id)
    uid_field = info.get("UserId", "")  # "alice(1000)"
    user = env.get("SLURM_JOB_USER") or uid_field.split("(")[0] or None
    uid = _first(_int(env.get("SLURM_JOB_UID")), _int(uid_field.partition("(")[2][:-1]))
    gid = _first(_int(env.get("SLURM_JOB_GID")),
                 _int(info.get("GroupId", "").partition("(")[2][:-1]))
    return SlurmJob(
        job_id=job_id,
        array_job_id=array_job or (info.get("ArrayJobId") or None),
        array_task_id=array_task or (info.get("ArrayTaskId") or None),
        work_dir=_path(work_dir or info.get("WorkDir")),
        stdout=_path(info.get("StdOut")),
        user=user,
        uid=uid,
        gid=gid,
    )


def drop_privileges(job: SlurmJob) -> None:
    """Running as root in a slurm.conf epilogue: act as the job's owner from here on, so no
    root-owned file lands in the user's directories."""
    if os.geteuid() != 0 or job.uid == 0:
        return
    if job.uid is None:
        raise UnknownOwner(
            f"running as root, but the owner of Slurm job {job.job_id} is unknown (no "
            "SLURM_JOB_UID, and scontrol did not tell): not touching its files as root")
    uid = job.uid
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    gid = job.gid if job.gid is not None else (entry.pw_gid if entry else uid)
    if entry is not None:
        os.initgroups(entry.pw_name, gid)
    else:
        os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if entry is not None:
        os.environ["HOME"] = entry.pw_dir
        os.environ["USER"] = entry.pw_name
    log.info("running as the job's user %s (uid %d)", job.user or uid, uid)
