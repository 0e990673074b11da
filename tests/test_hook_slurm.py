"""The post-job hook under a real one-node Slurm (tests/support/slurm_cluster.py).

Covers every way the hook is wired into Slurm: hooks/trap.sh in batch scripts (array tasks
whose results appear at random moments, scancel), the export job after the array
(slurm_templates/export_after.sbatch, submit.sh end to end), `srun --epilog=hooks/epilog.sh`,
and hooks/epilog.sh as slurm.conf Epilog -- as root, with Slurm's bare environment, for a job
of an unprivileged user. W&B runs are offline; they are read back from the `.wandb` files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nemo_wandb_hook import slurm
from nemo_wandb_hook.example import synthetic_task, write_invocation
from tests.support.hook_checks import (
    HOOKS_DIR,
    REPO_ROOT,
    TEMPLATES_DIR,
    check_multi_task_run,
    check_per_task_runs,
    hook_bin,
    offline_pieces,
    spool_state,
)
from tests.support.results_fixtures import ORG
from tests.support.slurm_cluster import SlurmCluster

ARRAY_SIZE = 6
JOB_TIMEOUT = 120  # a hang guard, not an assertion on speed
TRAP = HOOKS_DIR / "trap.sh"
EPILOG = HOOKS_DIR / "epilog.sh"
TEST_USER = "nwhtest"
# Results appear 0-3 s after the task starts (bash $RANDOM, so each task differs).
RANDOM_SLEEP = 'sleep "$((RANDOM % 3)).$((RANDOM % 10))"'


def make_invocation(root: Path, count: int, **wandb: object) -> tuple[Path, list[Path]]:
    """An invocation of `count` tasks whose results are not there yet (moved aside)."""
    inv = write_invocation(root, [synthetic_task(i) for i in range(count)],
                           wandb={**ORG, **wandb})
    tasks = [next(inv.glob(f"*.{i}")) for i in range(count)]
    for task in tasks:
        (task / "artifacts" / "results.yml").rename(task / "results.yml.aside")
    return inv, tasks


def job_env(**extra: str) -> dict[str, str]:
    return {"NEMO_WANDB_HOOK_BIN": str(hook_bin()), **extra}


def job_output(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted(directory.glob("slurm-*.out")))


def assert_node_idle(cluster: SlurmCluster) -> None:
    assert cluster.wait_node_idle(timeout=30) == "idle"
    node = cluster.show_node()
    assert "DRAIN" not in node.get("State", ""), node
    assert node.get("Reason", "") in ("", "(null)"), node


def array_task_ids(cluster: SlurmCluster, array: str) -> dict[str, str]:
    """array task index -> the task's own job id."""
    return {t["ArrayTaskId"]: t["JobId"] for t in cluster.show_array(array)}


# --- trap.sh in array tasks + the export job after the array -------------------------------


def test_array_with_trap_and_export_job_makes_one_multi_task_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    inv, tasks = make_invocation(tmp_path / "results", ARRAY_SIZE, log_mode="multi_task",
                                 mode="offline")
    out = tmp_path / "out"
    out.mkdir()
    script = f"""#!/bin/bash
#SBATCH --job-name=nwh-trap
source {TRAP}
task_dir=$(ls -d {inv}/*."$SLURM_ARRAY_TASK_ID")
# The "evaluation": its results appear at a random moment.
( {RANDOM_SLEEP}; mv "$task_dir/results.yml.aside" "$task_dir/artifacts/results.yml" ) &
wait $!
"""
    # Submitted from the invocation directory: the hook finds its task from the job's
    # submit directory and array index.
    array = slurm_cluster.sbatch(script, f"--array=0-{ARRAY_SIZE - 1}",
                                 f"--output={out}/slurm-%A_%a.out", cwd=inv, env=job_env())
    export = slurm_cluster.sbatch(
        TEMPLATES_DIR / "export_after.sbatch", f"--dependency=afterany:{array}",
        "--kill-on-invalid-dep=yes", f"--output={out}/slurm-%j.out", cwd=tmp_path,
        env=job_env(INVOCATION_DIR=str(inv)),
    )
    started = time.monotonic()
    states = slurm_cluster.wait_for_jobs([array, export], timeout=JOB_TIMEOUT)
    print(f"\narray of {ARRAY_SIZE} + export job: {time.monotonic() - started:.1f}s")

    assert states[array] == "COMPLETED", (states, job_output(out))
    assert states[export] == "COMPLETED", job_output(out)  # --strict: every task exported
    pieces = check_multi_task_run(inv / "wandb-export", tmp_path, [t.name for t in tasks])
    # The export job found everything delivered already and wrote nothing new.
    export_log = (out / f"slurm-{export}.out").read_text()
    assert export_log.count("unchanged") == ARRAY_SIZE, export_log
    # Each task carries the ids of the array task that ran it, not the export job's.
    job_ids = array_task_ids(slurm_cluster, array)
    recorded = {name: (t["slurm_job_id"], t["slurm_array_job_id"], t["slurm_array_task_id"])
                for name, t in pieces[-1].config["tasks"].items()}
    assert recorded == {t.name: (job_ids[str(i)], array, str(i)) for i, t in enumerate(tasks)}
    assert_node_idle(slurm_cluster)


def test_submit_sh_per_task_runs_end_to_end(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    inv, tasks = make_invocation(tmp_path / "results", ARRAY_SIZE)
    env = {**slurm_cluster.env, **job_env(
        NEMO_WANDB_HOOK_ARGS="-o mode=offline -o log_mode=per_task")}
    eval_command = f"{RANDOM_SLEEP}; mv results.yml.aside artifacts/results.yml"
    proc = subprocess.run(["bash", str(TEMPLATES_DIR / "submit.sh"), str(inv), eval_command],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"array job (\d+), export job (\d+)\n", proc.stdout)
    assert match, proc.stdout
    array, export = match.groups()

    states = slurm_cluster.wait_for_jobs([array, export], timeout=JOB_TIMEOUT)

    assert states[array] == "COMPLETED", (states, job_output(tmp_path))
    assert states[export] == "COMPLETED", job_output(tmp_path)
    check_per_task_runs(inv / "wandb-export", tmp_path, [t.name for t in tasks])
    assert (tmp_path / f"slurm-{export}.out").read_text().count("unchanged") == ARRAY_SIZE
    assert_node_idle(slurm_cluster)


# --- scancel: the trap runs within KillWait ---------------------------------------------------


def test_scancel_runs_the_trap_within_kill_wait(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    inv, tasks = make_invocation(tmp_path / "results", 2)
    # Task 0 finished writing its results; task 1 never will.
    (tasks[0] / "results.yml.aside").rename(tasks[0] / "artifacts" / "results.yml")
    array = slurm_cluster.sbatch(
        TEMPLATES_DIR / "eval_array.sbatch", "--array=0-1", cwd=tmp_path,
        env=job_env(INVOCATION_DIR=str(inv), EVAL_COMMAND="touch started; exec sleep 300",
                    NEMO_WANDB_HOOK_ARGS="-o mode=offline", NEMO_WANDB_HOOK_TERM_BUDGET="4"),
    )
    deadline = time.monotonic() + JOB_TIMEOUT
    while not all((t / "started").exists() for t in tasks):
        assert time.monotonic() < deadline, job_output(tmp_path)
        time.sleep(0.2)

    cancelled = time.monotonic()
    slurm_cluster.cancel(array)
    states = slurm_cluster.wait_for_jobs([array], timeout=JOB_TIMEOUT)
    print(f"\nscancel to all tasks ended: {time.monotonic() - cancelled:.1f}s")

    assert set(states.values()) == {"CANCELLED"}, states
    output = job_output(tmp_path)
    assert output.count("hook for") == 2, output  # both traps ran the hook ...
    for out in tmp_path.glob("slurm-*.out"):  # ... to its end, not cut off by SIGKILL
        text = out.read_text()
        assert "result:" in text or "budget of 4s used up" in text, output
    state = spool_state(inv / "wandb-export")
    # What existed is exported (or, if KillWait cut the push short, durably pending) ...
    pending = [Path(p).stem.split("__", 1)[1] for p in state.pending]
    assert state.done_tasks + pending == [tasks[0].name], (state, output)
    # ... and what never appeared is recorded as failed, with the reason.
    (failure,) = state.failed
    assert failure["task"] == tasks[1].name
    assert "results.yml does not exist" in failure["error"]
    if state.done_tasks:
        check_per_task_runs_partial(inv, tmp_path, tasks[0].name)
    else:
        print("task 0 stayed pending: KillWait ended its push")
    assert_node_idle(slurm_cluster)


def check_per_task_runs_partial(inv: Path, root: Path, task: str) -> None:
    state = spool_state(inv / "wandb-export")
    ((delivery,),) = state.done.values()
    (piece,) = offline_pieces(root, delivery["entry"]["run"]["run_id"])
    assert set(delivery["entry"]["metrics"]) <= set(piece.summary)
    assert [a.name for a in piece.artifacts if a.type == "evaluation_result"] == [
        delivery["entry"]["artifact_name"]]
    assert delivery["entry"]["task"] == task


# --- srun --epilog -------------------------------------------------------------------------------


def test_srun_epilog_exports_the_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    inv, tasks = make_invocation(tmp_path / "results", 2)
    task = tasks[1]
    script = f"""#!/bin/bash
set -e
mv results.yml.aside artifacts/results.yml
srun --epilog={EPILOG} /bin/true
"""
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/slurm-%j.out", cwd=task,
                               env=job_env(NEMO_WANDB_HOOK_ARGS="-o mode=offline",
                                           NEMO_WANDB_HOOK_BUDGET="30"))

    states = slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)

    assert states[job] == "COMPLETED", job_output(tmp_path)
    check_per_task_runs(inv / "wandb-export", tmp_path, [task.name])
    ((delivery,),) = spool_state(inv / "wandb-export").done.values()
    assert delivery["entry"]["config"]["task"]["slurm_job_id"] == job
    assert f"(Slurm job {job})" in (inv / "wandb-export" / "hook.log").read_text()


# --- current_job against the real scontrol ------------------------------------------------------


def test_current_job_from_scontrol_for_every_array_task(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    array = slurm_cluster.sbatch("#!/bin/bash\ntrue\n", "--array=0-2", cwd=tmp_path)
    slurm_cluster.wait_for_jobs([array], timeout=JOB_TIMEOUT)
    records = slurm_cluster.show_array(array)
    assert array in {r["JobId"] for r in records}  # one task carries the array's own id

    for record in records:
        # What a slurm.conf epilogue has: the task's own job id and not much more.
        job = slurm.current_job({"SLURM_JOB_ID": record["JobId"]})
        assert job == slurm.SlurmJob(
            job_id=record["JobId"], array_job_id=array, array_task_id=record["ArrayTaskId"],
            work_dir=tmp_path, stdout=tmp_path / f"slurm-{array}_{record['ArrayTaskId']}.out",
            user="root", uid=0, gid=0,
        )


# --- slurm.conf Epilog: root, no environment, a job of an unprivileged user ---------------------


@pytest.fixture(scope="module")
def test_user() -> pwd.struct_passwd:
    """An unprivileged user for jobs (created once, left in place)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    proc = subprocess.run(["useradd", "-m", "-s", "/bin/bash", TEST_USER],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"useradd {TEST_USER} failed: {proc.stderr}", pytrace=False)
    return pwd.getpwnam(TEST_USER)


SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
VENV_BUILD_TIMEOUT = 600


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([REPO_ROOT / "pyproject.toml", *(REPO_ROOT / "nemo_wandb_hook").rglob(
            "*.py")]):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _pip(venv: Path, *args: str) -> None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
                           "-q", *args], capture_output=True, text=True,
                          timeout=VENV_BUILD_TIMEOUT, cwd="/")
    if proc.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} in {venv} failed:\n{proc.stderr[-3000:]}",
                    pytrace=False)


@pytest.fixture(scope="module")
def user_venv() -> Path:
    """A venv any user can run (the project's .venv may live under /root), with this
    checkout installed (not editable). Cached under /tmp by the dependencies' digest; the
    package itself is reinstalled when its sources changed (about a second)."""
    python = next((p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.fail("no system python3 to build a venv any user can run", pytrace=False)
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes() + version.encode())
    venv = Path(f"/tmp/nwh-test-venv-{key.hexdigest()[:12]}")
    old_umask = os.umask(0o022)
    try:
        with open(f"{venv}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (venv / ".deps-complete").exists():
                shutil.rmtree(venv, ignore_errors=True)
                subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
                with _package_copy() as src:
                    _pip(venv, "install", "wheel", str(src))
                (venv / ".deps-complete").touch()
            digest = _sources_digest()
            marker = venv / ".sources-digest"
            if not marker.exists() or marker.read_text() != digest:
                with _package_copy() as src:
                    _pip(venv, "install", "--no-deps", "--no-build-isolation",
                         "--force-reinstall", str(src))
                marker.write_text(digest)
    finally:
        os.umask(old_umask)
    return venv / "bin" / "nemo-wandb-hook"


@contextlib.contextmanager
def _package_copy() -> Iterator[Path]:
    """The package's files in a fresh directory: building never writes into the checkout."""
    with tempfile.TemporaryDirectory(prefix="nwh-src-") as tmp:
        src = Path(tmp)
        shutil.copy(REPO_ROOT / "pyproject.toml", src)
        shutil.copy(REPO_ROOT / "README.md", src)
        shutil.copytree(REPO_ROOT / "nemo_wandb_hook", src / "nemo_wandb_hook",
                        ignore=shutil.ignore_patterns("__pycache__"))
        yield src


@pytest.fixture
def shared_dir(test_user: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the test user owns, outside pytest's private tmp dirs."""
    path = Path(tempfile.mkdtemp(prefix="nwh-hook-test-", dir="/tmp"))
    path.chmod(0o755)
    os.chown(path, test_user.pw_uid, test_user.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)


def not_owned_by(root: Path, user: pwd.struct_passwd) -> list[str]:
    return [f"{p} ({p.lstat().st_uid}:{p.lstat().st_gid})" for p in [root, *root.rglob("*")]
            if (p.lstat().st_uid, p.lstat().st_gid) != (user.pw_uid, user.pw_gid)]


def test_slurm_conf_epilog_exports_as_the_jobs_user(
    slurm_cluster: SlurmCluster, test_user: pwd.struct_passwd, user_venv: Path,
    shared_dir: Path,
) -> None:
    inv, tasks = make_invocation(shared_dir / "results", 2)
    # Task 0's evaluation writes results; task 1's never does.
    script = "#!/bin/bash\nmv results.yml.aside artifacts/results.yml\n"
    (tasks[0] / "run.sh").write_text(script)
    (tasks[1] / "run.sh").write_text("#!/bin/bash\ntrue\n")
    chown_tree(shared_dir, test_user)
    home = Path(test_user.pw_dir)
    home_before = {p for p in home.rglob("*")} if home.is_dir() else set()
    # As slurm.conf would run it: root, no PATH, settings on the Epilog line.
    slurm_cluster.install_epilog("50-nemo-wandb-hook", f"""#!/bin/bash
NEMO_WANDB_HOOK_BIN={user_venv} NEMO_WANDB_HOOK_BUDGET=30 \\
NEMO_WANDB_HOOK_ARGS='-o mode=offline --wait-timeout 3' exec {EPILOG}
""")
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "USER": TEST_USER,
               "SLURM_CONF": str(slurm_cluster.conf_path)}
        batch = '#!/bin/bash\ncd ./*."$SLURM_ARRAY_TASK_ID" && bash run.sh\n'
        proc = subprocess.run(
            ["sbatch", "--parsable", "--array=0-1", f"--output={inv}/slurm-%A_%a.out"],
            input=batch, capture_output=True, text=True, env=env, cwd=inv, timeout=30,
            user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[],
        )
        assert proc.returncode == 0, proc.stderr
        array = proc.stdout.strip().split(";")[0]
        started = time.monotonic()
        states = slurm_cluster.wait_for_jobs([array], timeout=JOB_TIMEOUT)
        print(f"\narray of 2 with slurm.conf Epilog: {time.monotonic() - started:.1f}s")
    finally:
        slurm_cluster.remove_epilog("50-nemo-wandb-hook")

    epilog_log = slurm_cluster.epilog_log_text()
    assert states[array] == "COMPLETED", (states, job_output(inv), epilog_log)
    assert_node_idle(slurm_cluster)
    job_ids = array_task_ids(slurm_cluster, array)
    for job_id in job_ids.values():
        assert re.search(rf"50-nemo-wandb-hook job={job_id} rc=0\b", epilog_log), epilog_log
    assert "hook exited" not in epilog_log  # the hook itself exited 0, not just epilog.sh
    stage = inv / "wandb-export"
    hook_log = (stage / "hook.log").read_text()
    assert epilog_log.count(f"running as the job's user {TEST_USER}") == 2, epilog_log
    state = spool_state(stage)
    # Task 0: exported, with the ids scontrol gave (no SLURM_ARRAY_* in an epilogue).
    assert state.done_tasks == [tasks[0].name], (state, hook_log, epilog_log)
    ((delivery,),) = state.done.values()
    assert {k: v for k, v in delivery["entry"]["config"]["task"].items()
            if k.startswith("slurm_")} == {"slurm_job_id": job_ids["0"],
                                           "slurm_array_job_id": array,
                                           "slurm_array_task_id": "0"}
    check_per_task_runs_partial(inv, stage, tasks[0].name)
    # Task 1: bounded by --wait-timeout, recorded as failed with the reason.
    (failure,) = state.failed
    assert failure["task"] == tasks[1].name
    assert "results.yml does not exist after waiting 3s" in failure["error"]
    assert state.pending == []
    # Everything the epilogue created belongs to the job's user, in the results and at home.
    assert not_owned_by(inv, test_user) == []
    new_at_home = {p for p in home.rglob("*")} - home_before
    assert [p for p in new_at_home if p.lstat().st_uid != test_user.pw_uid] == []


# --- epilog.sh's credentials file ---------------------------------------------------------------


def test_epilog_reads_credentials_with_the_jobs_user_permissions(
    test_user: pwd.struct_passwd, shared_dir: Path
) -> None:
    """A user's credentials file is read as that user: a symlink to a file only root may
    read must not hand its WANDB_* lines to the hook."""
    fake_bin = shared_dir / "fake-hook"
    seen = shared_dir / "seen.env"
    fake_bin.write_text(f"#!/bin/bash\n/usr/bin/env > {seen}\n")
    fake_bin.chmod(0o755)
    secret_dir = Path(tempfile.mkdtemp(prefix="nwh-root-only-", dir="/tmp"))
    home = Path(test_user.pw_dir)
    creds = home / ".config" / "nemo-wandb-hook" / "credentials"
    created = not creds.parent.exists()
    try:
        (secret_dir / "root-secret").write_text("WANDB_API_KEY=root-only-secret\n")
        (secret_dir / "root-secret").chmod(0o600)
        creds.parent.mkdir(parents=True, exist_ok=True)
        for part in (home / ".config", creds.parent):
            os.chown(part, test_user.pw_uid, test_user.pw_gid)
        env = {"SLURM_JOB_ID": "1", "SLURM_JOB_USER": TEST_USER,
               "SLURM_JOB_UID": str(test_user.pw_uid), "SLURM_JOB_GID": str(test_user.pw_gid),
               "NEMO_WANDB_HOOK_BIN": str(fake_bin)}

        # The user's own file is honoured for W&B settings -- but it must not choose what
        # root runs, or for how long.
        evil = shared_dir / "evil"
        evil.write_text(f"#!/bin/bash\n/usr/bin/touch {shared_dir}/evil-ran-as-$(id -u)\n")
        evil.chmod(0o755)
        creds.write_text("WANDB_API_KEY=users-own-key\nPATH=/evil\nWANDB_BAD NAME=x\n"
                         f"NEMO_WANDB_HOOK_BIN={evil}\nNEMO_WANDB_HOOK_BUDGET=99999\n")
        os.chown(creds, test_user.pw_uid, test_user.pw_gid)
        proc = subprocess.run(["/bin/bash", str(EPILOG)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not list(shared_dir.glob("evil-ran-as-*")), "the user's file chose root's binary"
        got = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
        assert got["WANDB_API_KEY"] == "users-own-key"
        assert got["PATH"] != "/evil"
        assert got.get("NEMO_WANDB_HOOK_BUDGET") != "99999"

        # ... a link to root's secret is not.
        creds.unlink()
        creds.symlink_to(secret_dir / "root-secret")
        os.lchown(creds, test_user.pw_uid, test_user.pw_gid)
        seen.unlink()
        proc = subprocess.run(["/bin/bash", str(EPILOG)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "root-only-secret" not in seen.read_text()
    finally:
        creds.unlink(missing_ok=True)
        if created:
            shutil.rmtree(home / ".config" / "nemo-wandb-hook", ignore_errors=True)
        shutil.rmtree(secret_dir, ignore_errors=True)


def test_epilog_sh_exits_0_when_the_hook_is_missing(tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "1", "NEMO_WANDB_HOOK_BIN": str(tmp_path / "nope")}
    proc = subprocess.run(["/bin/bash", str(EPILOG)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "is not executable" in proc.stderr

