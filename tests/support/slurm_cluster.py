"""A real, single-node Slurm cluster for tests: munged + slurmctld + slurmd on this machine.

Usage (normally through the session-scoped ``slurm_cluster`` fixture in
``tests/support/slurm_fixture.py``)::

    cluster = SlurmCluster(tmp_dir)          # nothing happens yet
    cluster.start()                          # munged (if needed), slurmctld, slurmd; node idle
    job = cluster.sbatch("#!/bin/bash\\necho hi\\n", "--array=0-5")
    states = cluster.wait_for_jobs([job], timeout=60)   # {"12": "COMPLETED", "12_0": ...}
    cluster.stop()                           # scancel leftovers, stop daemons by PID

Design notes
------------
* Needs root: slurmd must run as root to launch jobs, munged needs /run/munge, and the
  client commands find the config through a symlink at ``/etc/slurm/slurm.conf`` (jobs'
  own ``srun``/``scontrol`` calls need it too). An existing ``/etc/slurm/slurm.conf`` is
  moved aside and restored by :meth:`SlurmCluster.stop`.
* Ports 6817/6818 and ``/etc/slurm/slurm.conf`` are machine-global, so only one test
  cluster can run per machine. :meth:`start` takes an exclusive lock
  (:data:`LOCK_PATH`) and checks the ports, and fails with a clear message otherwise.
* Daemons run in the foreground (``-D``/``--foreground``) as children of this process, so
  we hold their PIDs, notice if one dies during start-up, and reap them on stop. Their
  pid files are written as well. Nothing is ever killed by name.
* munged is started only when ``munge -n | unmunge`` fails, and only a munged that we
  started is stopped again.
* Every subprocess call has a timeout.

Epilog hook (test convenience only)
-----------------------------------
slurm.conf has ``Epilog=<run_dir>/epilog.sh``. That script is NOT something a real cluster
would have: it is a wrapper that runs every executable file in :attr:`SlurmCluster.epilog_dir`
(``<run_dir>/epilog.d/``, sorted by name, dot-files skipped) with a per-script timeout, appends
their output to :attr:`SlurmCluster.epilog_log` and always exits 0 -- so a test can install
a real epilogue script at run time (:meth:`SlurmCluster.install_epilog`) without
restarting Slurm, and a broken script cannot drain the node. The wrapper passes the
environment slurmd gives it through unchanged, so the scripts see exactly what a real
slurm.conf Epilog sees: they run as root, with *no* PATH and no user environment, and only
``SLURM_JOB_ID`` (the task's own job id for array tasks), ``SLURM_JOB_USER``,
``SLURM_JOB_UID``, ``SLURM_JOB_GID``, ``SLURM_JOB_PARTITION``, ``SLURM_CLUSTER_NAME``,
``SLURM_JOB_NODELIST``, ``SLURM_SCRIPT_CONTEXT=epilog_slurmd``, ... -- no ``SLURM_ARRAY_*``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "LOCK_PATH",
    "SLURM_BINARIES",
    "TERMINAL_STATES",
    "SlurmCluster",
    "SlurmError",
    "missing_slurm_binaries",
]

#: Binaries the cluster needs (the install script provides all of them).
SLURM_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "scancel",
    "squeue",
    "sinfo",
    "munged",
    "munge",
    "unmunge",
)

#: Job states after which a job will not change any more.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)

#: Machine-wide lock: one test cluster per machine (ports 6817/6818, /etc/slurm/slurm.conf).
LOCK_PATH = Path("/tmp/nemo-wandb-hook-test-slurm.lock")

SLURM_CONF_LINK = Path("/etc/slurm/slurm.conf")
MUNGE_SOCKET_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
_HOSTS_MARKER = "# added by nemo-wandb-hook tests/support/slurm_cluster.py"

# Per-script timeout inside the epilog wrapper, and the wrapper's total budget. Both stay
# well below PrologEpilogTimeout so that slurmd never kills the wrapper (which would drain
# the node).
EPILOG_SCRIPT_TIMEOUT = 60
EPILOG_TOTAL_BUDGET = 100
PROLOG_EPILOG_TIMEOUT = 120

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class SlurmError(RuntimeError):
    """A Slurm command or daemon did not do what we needed."""


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_slurm_binaries() -> list[str]:
    """Names from :data:`SLURM_BINARIES` that are not installed."""
    return [b for b in SLURM_BINARIES if _which(b) is None]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _parse_scontrol_record(line: str) -> dict[str, str]:
    """Parse one ``scontrol show -o`` record (``Key=value Key2=value with spaces ...``)."""
    record: dict[str, str] = {}
    matches = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/.]*)=", line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record[m.group(1)] = line[m.end() : end].strip()
    return record


def _base_state(job_state: str) -> str:
    # e.g. "CANCELLED by 0" (sacct style) or "COMPLETING"; keep the first word.
    return job_state.split()[0] if job_state else ""


class SlurmCluster:
    """One-node Slurm cluster with all state under ``run_dir``.

    Attributes of interest to tests:

    * ``node_name`` -- the single node (the short hostname).
    * ``conf_path`` -- the generated slurm.conf (also linked at ``/etc/slurm/slurm.conf``).
    * ``epilog_dir`` / ``epilog_log`` -- see the module docstring.
    * ``work_dir`` -- default working directory for :meth:`sbatch` (writable by jobs).
    * ``env`` -- environment for running Slurm client commands yourself.
    """

    def __init__(self, run_dir: Path, cpus: int = 16, *, cluster_name: str = "nwhtest") -> None:
        self.run_dir = Path(run_dir).resolve()
        self.cpus = int(cpus)
        self.cluster_name = cluster_name
        self.conf_path = self.run_dir / "slurm.conf"
        self.state_dir = self.run_dir / "state"
        self.spool_dir = self.run_dir / "spool"
        self.log_dir = self.run_dir / "log"
        self.work_dir = self.run_dir / "work"
        self.epilog_script = self.run_dir / "epilog.sh"
        self.epilog_dir = self.run_dir / "epilog.d"
        self.epilog_log = self.run_dir / "epilog.log"
        self.slurmctld_log = self.log_dir / "slurmctld.log"
        self.slurmd_log = self.log_dir / "slurmd.log"
        self.munged_log = Path("/var/log/munge/munged.log")
        self.slurmctld_pidfile = self.run_dir / "slurmctld.pid"
        self.slurmd_pidfile = self.run_dir / "slurmd.pid"
        self.node_name = socket.gethostname().split(".")[0]

        self._slurmctld: subprocess.Popen[bytes] | None = None
        self._slurmd: subprocess.Popen[bytes] | None = None
        self._munged: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._conf_backup: Path | None = None
        self._conf_linked = False
        self._created_etc_slurm = False
        self._hosts_line_added = False
        self._started = False

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """os.environ minus any inherited SLURM_* job variables, plus SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    def _run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                list(cmd),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(env) if env is not None else self.env,
                cwd=cwd,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(f"{' '.join(cmd)!r} timed out after {timeout}s") from exc
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(cmd)!r} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
            )
        return proc

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60) -> None:
        """Start munged (if not running), slurmctld and slurmd; return once the node is idle.

        On failure everything started so far is stopped again and :class:`SlurmError` is
        raised with the tails of the daemon logs.
        """
        if self._started:
            return
        if os.geteuid() != 0:
            raise SlurmError("SlurmCluster.start() needs root (slurmd, munged, /etc/slurm).")
        missing = missing_slurm_binaries()
        if missing:
            raise SlurmError(
                f"Slurm binaries missing: {', '.join(missing)}; run .ci/install-slurm.sh as root."
            )
        deadline = time.monotonic() + timeout
        self._acquire_lock(deadline)
        self._started = True  # from here on stop() has something to clean up
        try:
            for port, daemon in ((SLURMCTLD_PORT, "slurmctld"), (SLURMD_PORT, "slurmd")):
                if _port_in_use(port):
                    raise SlurmError(
                        f"port {port} is already in use: another {daemon} is running on this "
                        "machine (one test cluster per machine). Stop it first."
                    )
            for d in (self.state_dir, self.spool_dir, self.log_dir, self.work_dir, self.epilog_dir):
                d.mkdir(parents=True, exist_ok=True)
            self.work_dir.chmod(0o1777)
            self._ensure_hostname_resolves()
            self._ensure_munge(deadline)
            self._write_epilog_wrapper()
            self._write_conf()
            self._link_conf()
            self._start_slurmctld(deadline)
            self._start_slurmd(deadline)
        except BaseException as exc:
            detail = self._diagnostics()
            try:
                self.stop()
            except Exception as stop_exc:  # keep the original error
                detail += f"\n(cleanup after failed start also failed: {stop_exc})"
            if isinstance(exc, SlurmError):
                raise SlurmError(f"{exc}\n{detail}") from exc
            raise

    def stop(self) -> None:
        """Cancel leftover jobs and stop what :meth:`start` started, by PID. Idempotent."""
        if not self._started:
            return
        errors: list[str] = []
        if self._slurmctld is not None and self._slurmctld.poll() is None:
            try:
                self._cancel_all_jobs()
            except Exception as exc:
                errors.append(f"scancel: {exc}")
        daemons = (("_slurmd", "slurmd"), ("_slurmctld", "slurmctld"), ("_munged", "munged"))
        for attr, name in daemons:
            proc = getattr(self, attr)
            if proc is not None:
                try:
                    self._terminate(proc, name)
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
                setattr(self, attr, None)
        try:
            self._unlink_conf()
        except Exception as exc:
            errors.append(f"/etc/slurm/slurm.conf: {exc}")
        try:
            self._remove_hosts_line()
        except Exception as exc:
            errors.append(f"/etc/hosts: {exc}")
        self._release_lock()
        self._started = False
        if errors:
            raise SlurmError("SlurmCluster.stop() had problems: " + "; ".join(errors))

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this object started and that are still running."""
        out = {}
        for name, proc in (
            ("slurmctld", self._slurmctld),
            ("slurmd", self._slurmd),
            ("munged", self._munged),
        ):
            if proc is not None and proc.poll() is None:
                out[name] = proc.pid
        return out

    # ------------------------------------------------------------------ jobs
    def sbatch(
        self,
        script: str | Path,
        *args: str,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> str:
        """Submit a batch job and return its job id (the array job id for arrays).

        ``script`` is a path to a batch script, or -- when it is a ``str`` starting with
        ``#!`` -- the script text itself (fed to sbatch on stdin). ``args`` are sbatch
        options (``"--array=0-5"``, ``"--dependency=afterany:12"``), placed before the
        script. ``cwd`` becomes the job's working directory (default :attr:`work_dir`,
        which jobs can write; slurm-%j.out lands there). ``env`` is merged over
        :attr:`env`; sbatch exports that environment to the job (``--export=ALL``).
        """
        cmd = [_which("sbatch") or "sbatch", "--parsable", *args]
        stdin = None
        if isinstance(script, str) and script.startswith("#!"):
            stdin = script
        else:
            cmd.append(str(script))
        run_env = self.env
        if env:
            run_env.update(env)
        proc = self._run(cmd, input=stdin, env=run_env, cwd=cwd or self.work_dir, timeout=timeout)
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {proc.stdout!r} {proc.stderr!r}")
        return job_id

    def _show_job_records(self, job_id: str | int) -> list[dict[str, str]]:
        proc = self._run(["scontrol", "show", "-o", "job", str(job_id)], check=False)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip()
            if "Invalid job id" in msg:
                raise KeyError(f"job {job_id} unknown to slurmctld ({msg})")
            raise SlurmError(f"scontrol show job {job_id} failed: {msg}")
        return [_parse_scontrol_record(ln) for ln in proc.stdout.splitlines() if ln.strip()]

    def show_job(self, job_id: str | int) -> dict[str, str]:
        """``scontrol show job`` of one job as a dict (``JobState``, ``WorkDir``, ...).

        ``job_id`` may be a plain id or ``"<array id>_<task>"``. For an array job id this
        returns the record whose JobId equals ``job_id`` (one task); use :meth:`show_array`
        for all tasks. Raises KeyError for an unknown job.
        """
        records = self._show_job_records(job_id)
        if not records:
            raise KeyError(f"job {job_id}: scontrol printed nothing")
        for rec in records:
            if rec.get("JobId") == str(job_id):
                return rec
        return records[0]

    def show_array(self, job_id: str | int) -> list[dict[str, str]]:
        """All records of an array job, one per task (a still-pending range such as
        ``ArrayTaskId=3-5`` stays one record until it is split), sorted by task id."""
        records = self._show_job_records(job_id)

        def key(rec: dict[str, str]) -> int:
            m = re.match(r"\d+", rec.get("ArrayTaskId", ""))
            return int(m.group()) if m else -1

        return sorted(records, key=key)

    def wait_for_jobs(
        self, job_ids: Iterable[str | int], timeout: float = 120, poll: float = 0.5
    ) -> dict[str, str]:
        """Wait until every job (every task, for an array id) is in a terminal state.

        Returns ``{job_id: state}``: for a plain job its JobState; for an array job id
        the aggregate (``COMPLETED`` if every task completed, else the first other task
        state) plus one ``"<array id>_<task>": state`` entry per task. A job still in
        COMPLETING (epilog running) is not finished yet. Raises TimeoutError, or KeyError
        for a job slurmctld does not know (never existed, or purged MinJobAge=300 s after
        it ended).
        """
        ids = [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        result: dict[str, str] = {}
        while True:
            result = {}
            pending: list[str] = []
            for jid in ids:
                records = self.show_array(jid)  # sorted by task id; one record if plain
                is_array = len(records) > 1 or any(
                    r.get("ArrayJobId") == jid and r.get("ArrayTaskId") for r in records
                )
                states = [_base_state(r.get("JobState", "")) for r in records]
                if is_array:
                    for rec, state in zip(records, states, strict=True):
                        result[f"{jid}_{rec.get('ArrayTaskId', '?')}"] = state
                    not_done = [s for s in states if s not in TERMINAL_STATES]
                    ranges = [r for r in records if not r.get("ArrayTaskId", "").isdigit()]
                    if not_done or ranges:
                        result[jid] = not_done[0] if not_done else "PENDING"
                        pending.append(jid)
                    else:
                        bad = [s for s in states if s != "COMPLETED"]
                        result[jid] = bad[0] if bad else "COMPLETED"
                else:
                    state = states[0] if states else "UNKNOWN"
                    result[jid] = state
                    if state not in TERMINAL_STATES:
                        pending.append(jid)
            if not pending:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"jobs {pending} not finished after {timeout}s; states: {result}; "
                    f"node: {self._safe_node_state()}\n{self._diagnostics()}"
                )
            time.sleep(poll)

    def cancel(self, *job_ids: str | int) -> None:
        if job_ids:
            self._run(["scancel", *map(str, job_ids)], check=False)

    # ------------------------------------------------------------------ node
    def node_state(self) -> str:
        """The node's state as sinfo prints it (``idle``, ``mixed``, ``allocated``,
        ``drained``, ``completing``, ...)."""
        return self._run(["sinfo", "-h", "-n", self.node_name, "-o", "%T"]).stdout.strip()

    def show_node(self) -> dict[str, str]:
        out = self._run(["scontrol", "show", "-o", "node", self.node_name]).stdout
        return _parse_scontrol_record(out.strip())

    def resume_node(self) -> None:
        """``scontrol update state=resume`` -- e.g. after a failed epilog drained the node."""
        self._run(["scontrol", "update", f"nodename={self.node_name}", "state=resume"])

    def wait_node_idle(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return state
            time.sleep(0.3)
        raise TimeoutError(f"node {self.node_name} is {state!r}, not idle, after {timeout}s")

    # ------------------------------------------------------------------ epilog hook
    def install_epilog(self, name: str, text: str) -> Path:
        """Install an executable into :attr:`epilog_dir` atomically; it runs after every
        job from now on (as root, no PATH -- use absolute paths). Returns its path."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad epilog script name {name!r}")
        self.epilog_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.epilog_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o755)
        dest = self.epilog_dir / name
        tmp.replace(dest)  # dot-files are skipped by the wrapper, so no half-written runs
        return dest

    def remove_epilog(self, name: str) -> None:
        (self.epilog_dir / name).unlink(missing_ok=True)

    def epilog_log_text(self) -> str:
        try:
            return self.epilog_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ internals
    def _acquire_lock(self, deadline: float) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise SlurmError(
                        f"another test Slurm cluster holds {LOCK_PATH} ({holder or 'unknown'}); "
                        "only one can run per machine"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} run_dir={self.run_dir}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _ensure_hostname_resolves(self) -> None:
        try:
            socket.gethostbyname(self.node_name)
            return
        except OSError:
            pass
        with open("/etc/hosts", "a") as fh:
            fh.write(f"127.0.0.1 {self.node_name} {_HOSTS_MARKER}\n")
        self._hosts_line_added = True

    def _remove_hosts_line(self) -> None:
        if not self._hosts_line_added:
            return
        hosts = Path("/etc/hosts")
        lines = hosts.read_text().splitlines(keepends=True)
        hosts.write_text("".join(ln for ln in lines if _HOSTS_MARKER not in ln))
        self._hosts_line_added = False

    def _munge_works(self) -> bool:
        try:
            cred = self._run(["munge", "-n"], timeout=10, check=False)
            if cred.returncode != 0:
                return False
            check = self._run(["unmunge"], input=cred.stdout, timeout=10, check=False)
            return check.returncode == 0
        except SlurmError:
            return False

    def _ensure_munge(self, deadline: float) -> None:
        if self._munge_works():
            return  # somebody else's munged: use it, never stop it
        import grp
        import pwd

        try:
            pw = pwd.getpwnam("munge")
        except KeyError:
            raise SlurmError(
                "user 'munge' does not exist; is the munge package installed?"
            ) from None
        gid = grp.getgrnam("munge").gr_gid if _group_exists("munge") else pw.pw_gid
        MUNGE_SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chown(MUNGE_SOCKET_DIR, pw.pw_uid, gid)
        MUNGE_SOCKET_DIR.chmod(0o755)
        if not MUNGE_KEY.exists():
            self._run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], timeout=30)
            os.chown(MUNGE_KEY, pw.pw_uid, gid)
            MUNGE_KEY.chmod(0o400)
        # Default log (/var/log/munge/munged.log): munged refuses log/key paths whose
        # directories others could write, and as user munge it cannot enter pytest's 0700
        # tmp dirs anyway.
        out = open(self.log_dir / "munged.out", "ab")  # noqa: SIM115
        try:
            self._munged = subprocess.Popen(
                [_which("munged") or "/usr/sbin/munged", "--foreground", "--force"],
                user=pw.pw_uid,
                group=gid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                cwd="/",
            )
        finally:
            out.close()
        while not self._munge_works():
            if self._munged.poll() is not None:
                raise SlurmError(
                    f"munged exited with {self._munged.returncode} during start-up\n"
                    f"munged.out:\n{_tail(self.log_dir / 'munged.out')}\n"
                    f"munged.log:\n{_tail(self.munged_log)}"
                )
            if time.monotonic() >= deadline:
                raise SlurmError("munged did not answer `munge -n | unmunge` in time")
            time.sleep(0.2)

    def _node_line(self) -> str:
        out = self._run([_which("slurmd") or "slurmd", "-C"], timeout=30).stdout
        m = re.search(r"RealMemory=(\d+)", out)
        real_mem = int(m.group(1)) if m else 1024
        m = re.search(r"NodeName=(\S+)", out)
        if m and m.group(1) != self.node_name:
            self.node_name = m.group(1)
        mem = max(256, int(real_mem * 0.9))
        # With SlurmdParameters=config_overrides slurmd believes this line instead of the
        # hardware, so we can advertise more CPUs (job slots) than the box has.
        return (
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={self.cpus} Boards=1 "
            f"SocketsPerBoard=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 "
            f"RealMemory={mem} State=UNKNOWN"
        )

    def _write_conf(self) -> None:
        node_line = self._node_line()  # first: it may correct self.node_name
        conf = f"""\
# Generated by tests/support/slurm_cluster.py -- single-node TEST cluster, do not reuse.
ClusterName={self.cluster_name}
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={SLURMCTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.spool_dir}
SlurmctldPidFile={self.slurmctld_pidfile}
SlurmdPidFile={self.slurmd_pidfile}
SlurmctldLogFile={self.slurmctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Fast turn-around: without these (and without an Epilog!) array tasks trickle out ~30 s.
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdParameters=config_overrides
# Test-only wrapper around {self.epilog_dir}; always exits 0 (see module docstring).
Epilog={self.epilog_script}
PrologEpilogTimeout={PROLOG_EPILOG_TIMEOUT}
{node_line}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        self.conf_path.write_text(conf)
        (self.run_dir / "cluster.env").write_text(f"SLURM_CONF={self.conf_path}\n")

    def _write_epilog_wrapper(self) -> None:
        script = f"""#!/bin/bash
# TEST CONVENIENCE ONLY -- not part of nemo-wandb-hook and not for real clusters.
# slurm.conf Epilog wrapper for the test cluster: runs every executable in
# {self.epilog_dir} (sorted, dot-files skipped) with a timeout, logs to
# {self.epilog_log}, and always exits 0 so a broken script never drains the node.
# The environment from slurmd (no PATH, SLURM_JOB_ID, SLURM_JOB_USER, ...) is passed on
# unchanged, so the scripts see what a real Epilog sees.
LC_COLLATE=C
dir={self.epilog_dir}
log={self.epilog_log}
per_script={EPILOG_SCRIPT_TIMEOUT}
budget={EPILOG_TOTAL_BUDGET}
{{
  /usr/bin/printf '[%s] epilog start job=%s user=%s\\n' "$(/usr/bin/date +%T.%N)" \\
      "$SLURM_JOB_ID" "$SLURM_JOB_USER"
  for f in "$dir"/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    left=$(( budget - SECONDS ))
    if [ "$left" -le 1 ]; then
      /usr/bin/printf '[%s] budget exhausted, skipping %s\\n' "$(/usr/bin/date +%T.%N)" "$f"
      continue
    fi
    t=$per_script; [ "$left" -lt "$t" ] && t=$left
    /usr/bin/timeout -k 5 "$t" "$f" </dev/null
    rc=$?
    /usr/bin/printf '[%s] %s job=%s rc=%s\\n' "$(/usr/bin/date +%T.%N)" "$f" "$SLURM_JOB_ID" "$rc"
  done
  /usr/bin/printf '[%s] epilog end job=%s\\n' "$(/usr/bin/date +%T.%N)" "$SLURM_JOB_ID"
}} >>"$log" 2>&1
exit 0
"""
        self.epilog_script.write_text(script)
        self.epilog_script.chmod(0o755)

    def _link_conf(self) -> None:
        link = SLURM_CONF_LINK
        if not link.parent.exists():
            link.parent.mkdir(parents=True)
            self._created_etc_slurm = True
        if link.is_symlink() or link.exists():
            backup = link.with_name(f"slurm.conf.nwh-test-backup-{os.getpid()}")
            os.replace(link, backup)
            self._conf_backup = backup
        link.symlink_to(self.conf_path)
        self._conf_linked = True

    def _unlink_conf(self) -> None:
        link = SLURM_CONF_LINK
        if self._conf_linked:
            if link.is_symlink() and Path(os.readlink(link)) == self.conf_path:
                link.unlink()
            self._conf_linked = False
        if self._conf_backup is not None:
            if not (link.is_symlink() or link.exists()):
                os.replace(self._conf_backup, link)
            self._conf_backup = None
        if self._created_etc_slurm:
            with contextlib.suppress(OSError):
                link.parent.rmdir()  # only if still empty
            self._created_etc_slurm = False

    def _spawn(self, cmd: list[str], out_name: str) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / out_name, "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=self.run_dir,
            )
        finally:
            out.close()

    def _start_slurmctld(self, deadline: float) -> None:
        self._slurmctld = self._spawn(
            [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf_path)],
            "slurmctld.out",
        )
        while True:
            if self._slurmctld.poll() is not None:
                raise SlurmError(f"slurmctld exited with {self._slurmctld.returncode} at start-up")
            ping = self._run(["scontrol", "ping"], timeout=15, check=False)
            if "UP" in ping.stdout:
                return
            if time.monotonic() >= deadline:
                raise SlurmError(f"slurmctld not UP in time: {ping.stdout.strip()}")
            time.sleep(0.3)

    def _start_slurmd(self, deadline: float) -> None:
        self._slurmd = self._spawn(
            [_which("slurmd") or "slurmd", "-D", "-f", str(self.conf_path), "-N", self.node_name],
            "slurmd.out",
        )
        state = ""
        while True:
            if self._slurmd.poll() is not None:
                raise SlurmError(f"slurmd exited with {self._slurmd.returncode} at start-up")
            state = self._safe_node_state()
            if state == "idle":
                return
            if time.monotonic() >= deadline:
                raise SlurmError(f"node {self.node_name} not idle in time (state {state!r})")
            time.sleep(0.3)

    def _safe_node_state(self) -> str:
        try:
            return self.node_state()
        except SlurmError as exc:
            return f"<unknown: {exc}>"

    def _cancel_all_jobs(self, timeout: float = 20) -> None:
        out = self._run(["squeue", "-h", "-o", "%A"], timeout=15, check=False).stdout
        ids = sorted({ln.strip() for ln in out.splitlines() if ln.strip()})
        if not ids:
            return
        self._run(["scancel", *ids], timeout=15, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self._run(["squeue", "-h", "-o", "%A"], timeout=15, check=False).stdout
            if not left.strip():
                return
            time.sleep(0.5)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], name: str, timeout: float = 20) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired as exc:
                raise SlurmError(f"{name} (pid {proc.pid}) survived SIGKILL") from exc

    def _diagnostics(self) -> str:
        parts = []
        for title, path in (
            ("slurmctld.log", self.slurmctld_log),
            ("slurmctld.out", self.log_dir / "slurmctld.out"),
            ("slurmd.log", self.slurmd_log),
            ("slurmd.out", self.log_dir / "slurmd.out"),
            ("epilog.log", self.epilog_log),
        ):
            if path.exists():
                parts.append(f"--- {title} (tail) ---\n{_tail(path, 25)}")
        if self._munged is not None:
            for title, path in (
                ("munged.out", self.log_dir / "munged.out"),
                ("munged.log", self.munged_log),
            ):
                if path.exists():
                    parts.append(f"--- {title} (tail) ---\n{_tail(path, 10)}")
        return "\n".join(parts)


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
