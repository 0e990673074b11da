"""The `hook` post-job entrypoint without Slurm: finding the task, the budget watchdog, exit
codes, bounded waiting, and many hooks writing one multi_task run at the same time.

Hooks run as subprocesses (what Slurm runs) with W&B in offline mode; conftest keeps every
wandb directory in tmp_path and points W&B at a closed local port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nemo_wandb_hook import pipeline, slurm
from nemo_wandb_hook import spool as spool_module
from nemo_wandb_hook.example import synthetic_task
from nemo_wandb_hook.flush import flush
from nemo_wandb_hook.hook import HookRequest, find_tasks
from nemo_wandb_hook.results import LocateError, locate
from nemo_wandb_hook.spool import RunSpec, Spool
from tests.support.hook_checks import (
    check_multi_task_run,
    check_per_task_runs,
    hook_bin,
    offline_pieces,
    spool_state,
)
from tests.support.results_fixtures import INV, ORG

OFFLINE = ["-o", "mode=offline"]
MULTI = ["-o", "log_mode=multi_task"]
HANG_GUARD = 300  # seconds; a guard against hangs, not an assertion on speed
MULTI_SLUG = RunSpec(entity="myorg", project="evals", run_id=INV, name="", group="",
                     job_type="", log_mode="multi_task").slug


def hook_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


def job_env(**slurm: str) -> dict[str, str]:
    """A hook's environment inside a Slurm job of the current user (batch scripts and
    `srun --epilog` see SLURM_JOB_UID/GID too)."""
    return hook_env(SLURM_JOB_UID=str(os.getuid()), SLURM_JOB_GID=str(os.getgid()), **slurm)


def run_hook(*args: str | Path, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([str(hook_bin()), "hook", *map(str, args)], capture_output=True,
                          text=True, env=env or hook_env(), cwd=cwd, timeout=HANG_GUARD,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


def task_dir(inv: Path, index: int) -> Path:
    (found,) = inv.glob(f"*.{index}")
    return found


def hide_results(task: Path) -> Path:
    """Move results.yml aside, as if the evaluation had not finished yet."""
    aside = task / "results.yml.aside"
    (task / "artifacts" / "results.yml").rename(aside)
    return aside


@pytest.fixture
def synthetic_invocation(make_invocation: Callable[..., Path]) -> Callable[[int], Path]:
    def make(count: int) -> Path:
        return make_invocation([synthetic_task(i) for i in range(count)], wandb=dict(ORG))

    return make


# --- which task: find_tasks from the job's environment ------------------------------------


@pytest.fixture
def no_scontrol(monkeypatch: pytest.MonkeyPatch) -> None:
    """current_job must not reach a real Slurm: scontrol knows nothing."""
    monkeypatch.setattr(slurm, "show_job", lambda job_id: {})


@pytest.mark.parametrize(
    ("where", "array_task", "expected"),
    [
        ("task", None, 1),
        ("task", "2", 1),  # the directory wins over the array index
        ("invocation", "2", 2),
        ("artifacts", None, 1),
        ("artifacts/cache", None, 1),
        ("logs", "0", 1),
    ],
)
def test_find_tasks_from_the_job_work_dir(
    make_invocation: Callable[..., Path], tmp_path: Path, no_scontrol: None,
    where: str, array_task: str | None, expected: int,
) -> None:
    inv = make_invocation()
    work_dir = inv if where == "invocation" else task_dir(inv, 1) / where.replace("task", "")
    env = {"SLURM_JOB_ID": "4711", "SLURM_JOB_WORK_DIR": str(work_dir)}
    if array_task is not None:
        env |= {"SLURM_ARRAY_JOB_ID": "4700", "SLURM_ARRAY_TASK_ID": array_task}
    job = slurm.current_job(env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    found = find_tasks(HookRequest(), job, elsewhere)

    assert [loc.task_dir for loc in found] == [task_dir(inv, expected)]
    assert found[0].invocation_id == INV
    assert found[0].invocation_dir == inv


def test_find_tasks_from_the_submit_dir_when_work_dir_is_unset(
    make_invocation: Callable[..., Path], tmp_path: Path, no_scontrol: None
) -> None:
    inv = make_invocation()
    job = slurm.current_job({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8",
                             "SLURM_ARRAY_TASK_ID": "0", "SLURM_SUBMIT_DIR": str(inv)})
    assert [loc.task_dir for loc in find_tasks(HookRequest(), job, tmp_path)] == [
        task_dir(inv, 0)]


def test_find_tasks_falls_back_to_stdout_then_cwd(
    make_invocation: Callable[..., Path], tmp_path: Path
) -> None:
    inv = make_invocation()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_stdout = slurm.SlurmJob("5", work_dir=elsewhere,
                               stdout=task_dir(inv, 2) / "logs" / "slurm-5.out")
    assert [loc.task_dir for loc in find_tasks(HookRequest(), by_stdout, elsewhere)] == [
        task_dir(inv, 2)]
    assert [loc.task_dir for loc in find_tasks(HookRequest(), None, task_dir(inv, 0))] == [
        task_dir(inv, 0)]


@pytest.mark.parametrize("array_task", [None, "7"])
def test_find_tasks_without_a_matching_task_names_the_places(
    make_invocation: Callable[..., Path], tmp_path: Path, no_scontrol: None,
    array_task: str | None,
) -> None:
    inv = make_invocation()
    env = {"SLURM_JOB_ID": "4711", "SLURM_JOB_WORK_DIR": str(inv)}
    if array_task:
        env |= {"SLURM_ARRAY_JOB_ID": "4700", "SLURM_ARRAY_TASK_ID": array_task}
    with pytest.raises(LocateError, match=str(inv)):
        find_tasks(HookRequest(), slurm.current_job(env), tmp_path)


def test_explicit_task_and_invocation_dirs_win_over_the_environment(
    make_invocation: Callable[..., Path], tmp_path: Path
) -> None:
    inv = make_invocation()
    job = slurm.SlurmJob("5", work_dir=task_dir(inv, 0))
    by_task = find_tasks(HookRequest(task_dir=task_dir(inv, 2)), job, tmp_path)
    assert [loc.task_dir for loc in by_task] == [task_dir(inv, 2)]
    by_inv = find_tasks(HookRequest(invocation_dir=inv), job, tmp_path)
    assert [loc.task_dir for loc in by_inv] == [task_dir(inv, i) for i in range(3)]


# --- current_job: environment first, `scontrol show job --oneliner` for the rest ---------

# `scontrol show job --oneliner <array job id>` lists every task of the array; the record
# whose JobId is the array job id (the last task) need not come first.
SCONTROL_ARRAY = """\
JobId=102 ArrayJobId=101 ArrayTaskId=0 JobName=eval UserId=alice(1234) GroupId=team(4321) JobState=COMPLETED WorkDir=/data/first StdErr=/data/first/slurm-101_0.out StdOut=/data/first/slurm-101_0.out Power=
JobId=101 ArrayJobId=101 ArrayTaskId=1 JobName=eval UserId=alice(1234) GroupId=team(4321) JobState=COMPLETING TRES=cpu=1,node=1 WorkDir=/data/my results StdErr=/data/my results/slurm-101_1.out StdIn=/dev/null StdOut=/data/my results/logs/slurm-101_1.out Power=
"""  # noqa: E501


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], Path]:
    """Make slurm.current_job call a script that prints `output` and exits `status`."""

    def install(output: str, status: int = 0) -> Path:
        (tmp_path / "scontrol.out").write_text(output)
        script = tmp_path / "scontrol"
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.args\n"
                          f"cat {tmp_path}/scontrol.out\nexit {status}\n")
        script.chmod(0o755)
        monkeypatch.setattr(slurm, "scontrol", lambda: str(script))
        return tmp_path / "scontrol.args"

    return install


def test_current_job_picks_the_record_of_its_own_job_id(
    fake_scontrol: Callable[[str, int], Path],
) -> None:
    args = fake_scontrol(SCONTROL_ARRAY, 0)
    # A slurm.conf epilogue: no array variables, no work dir.
    job = slurm.current_job({"SLURM_JOB_ID": "101", "SLURM_JOB_USER": "alice"})

    assert args.read_text().split() == ["show", "job", "--oneliner", "101"]
    assert job == slurm.SlurmJob(
        job_id="101", array_job_id="101", array_task_id="1",
        work_dir=Path("/data/my results"), stdout=Path("/data/my results/logs/slurm-101_1.out"),
        user="alice", uid=1234, gid=4321,
    )
    other = slurm.current_job({"SLURM_JOB_ID": "102"})
    assert (other.array_task_id, other.work_dir, other.user) == ("0", Path("/data/first"), "alice")


def test_current_job_prefers_the_environment(fake_scontrol: Callable[[str, int], Path]) -> None:
    args = fake_scontrol(SCONTROL_ARRAY, 0)
    env = {"SLURM_JOB_ID": "102", "SLURM_ARRAY_JOB_ID": "101", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_JOB_WORK_DIR": "/elsewhere", "SLURM_JOB_UID": "77", "SLURM_JOB_GID": "78",
           "SLURM_JOB_USER": "bob"}
    job = slurm.current_job(env)
    assert not args.exists(), "scontrol is not needed when the environment says it all"
    assert (job.work_dir, job.uid, job.gid, job.user) == (Path("/elsewhere"), 77, 78, "bob")
    assert job.ids() == {"SLURM_JOB_ID": "102", "SLURM_ARRAY_JOB_ID": "101",
                         "SLURM_ARRAY_TASK_ID": "0"}


@pytest.mark.parametrize(("output", "status"), [("", 0), ("slurm_load_jobs error\n", 1),
                                                ("JobId=5 JobState=PENDING\n", 0)])
def test_current_job_survives_an_unhelpful_scontrol(
    fake_scontrol: Callable[[str, int], Path], output: str, status: int
) -> None:
    fake_scontrol(output, status)
    job = slurm.current_job({"SLURM_JOB_ID": "101", "SLURM_SUBMIT_DIR": "/submit"})
    assert job == slurm.SlurmJob(job_id="101", work_dir=Path("/submit"))


def test_no_slurm_job_without_a_job_id() -> None:
    assert slurm.current_job({"SLURM_ARRAY_TASK_ID": "1"}) is None


# --- exit codes: 0 unless --strict, whatever happens ----------------------------------------


def _broken(kind: str, inv: Path, tmp_path: Path) -> list[str]:
    """Arguments for a hook run that cannot succeed, of the given kind."""
    task = task_dir(inv, 1)
    if kind == "unknown-key":
        return ["--task-dir", str(task), "-o", "entitty=x"]
    if kind == "bad-value":
        return ["--task-dir", str(task), "-o", "budget=-5"]
    if kind == "missing-config-file":
        return ["--task-dir", str(task), "--config", str(tmp_path / "nope.yaml")]
    if kind == "invalid-yaml-config":
        (tmp_path / "bad.yaml").write_text("entity: [unclosed\n")
        return ["--task-dir", str(task), "--config", str(tmp_path / "bad.yaml")]
    if kind == "no-entity":
        for name in ("config.yml", "export_config.yml", "metadata.yaml"):
            (task / "artifacts" / name).unlink()
        return ["--task-dir", str(task)]
    if kind == "missing-task-dir":
        return ["--task-dir", str(tmp_path / "gone" / "gsm8k.1")]
    if kind == "no-task-anywhere":
        return []
    if kind == "broken-results":
        (task / "artifacts" / "results.yml").write_text("results: [unclosed\n")
        return ["--task-dir", str(task), "--wait-timeout", "0"]
    if kind == "results-missing":
        hide_results(task)
        return ["--task-dir", str(task), "--wait-timeout", "0"]
    raise AssertionError(kind)


USAGE_ERRORS = ["unknown-key", "bad-value", "missing-config-file", "invalid-yaml-config",
                "no-entity", "missing-task-dir", "no-task-anywhere"]
TASK_ERRORS = ["broken-results", "results-missing"]


@pytest.mark.parametrize("kind", USAGE_ERRORS + TASK_ERRORS)
def test_hook_exits_0_by_default_and_non_zero_with_strict(
    make_invocation: Callable[..., Path], tmp_path: Path, kind: str
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    args = _broken(kind, inv, tmp_path)
    cwd = tmp_path / "empty-cwd"
    cwd.mkdir()

    lenient, _ = run_hook(*args, *OFFLINE, cwd=cwd)
    strict, _ = run_hook(*args, *OFFLINE, "--strict", cwd=cwd)

    assert lenient.returncode == 0, lenient.stderr
    assert strict.returncode == (2 if kind in USAGE_ERRORS else 1), strict.stderr
    assert "Traceback" not in lenient.stderr + strict.stderr
    assert "ERROR" in lenient.stderr or "WARNING" in lenient.stderr, lenient.stderr
    if kind in TASK_ERRORS:  # recorded for `status`, nothing half-delivered
        state = spool_state(inv / "wandb-export")
        assert [f["task"] for f in state.failed] == [task_dir(inv, 1).name]
        assert state.pending == [] and state.done == {}


def test_strict_hook_exits_0_when_the_task_is_exported(
    make_invocation: Callable[..., Path], isolated_wandb: Path
) -> None:
    inv = make_invocation(wandb=dict(ORG))

    proc, _ = run_hook("--task-dir", task_dir(inv, 0), *OFFLINE, "--strict")

    assert proc.returncode == 0, proc.stderr
    assert "exported" in proc.stderr
    check_per_task_runs(inv / "wandb-export", isolated_wandb, [task_dir(inv, 0).name])
    assert (inv / "wandb-export" / "hook.log").read_text().count("exported") >= 1


# --- bounded: waiting, the budget, the watchdog --------------------------------------------


def test_results_that_never_appear_are_recorded_as_failed_within_the_wait(
    make_invocation: Callable[..., Path],
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    task = task_dir(inv, 2)
    hide_results(task)

    proc, elapsed = run_hook("--task-dir", task, *OFFLINE, "--wait-timeout", "1.5")

    assert proc.returncode == 0, proc.stderr
    assert elapsed < 15, f"the hook took {elapsed:.1f}s for a 1.5s wait"
    (failure,) = spool_state(inv / "wandb-export").failed
    assert failure["task"] == task.name
    assert failure["invocation_id"] == INV
    assert "results.yml does not exist after waiting 1.5s" in failure["error"]
    assert spool_state(inv / "wandb-export").done == {}


def test_results_that_appear_while_the_hook_waits_are_exported(
    make_invocation: Callable[..., Path], isolated_wandb: Path
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    task = task_dir(inv, 0)
    aside = hide_results(task)
    timer = threading.Timer(1.5, aside.rename, [task / "artifacts" / "results.yml"])
    timer.start()
    try:
        proc, _ = run_hook("--task-dir", task, *OFFLINE, "--wait-timeout", "60")
    finally:
        timer.cancel()

    assert proc.returncode == 0, proc.stderr
    check_per_task_runs(inv / "wandb-export", isolated_wandb, [task.name])


@pytest.mark.parametrize("strict", [False, True])
def test_budget_bounds_a_long_wait(make_invocation: Callable[..., Path], strict: bool) -> None:
    inv = make_invocation(wandb=dict(ORG))
    task = task_dir(inv, 1)
    hide_results(task)

    proc, elapsed = run_hook("--task-dir", task, *OFFLINE, "--wait-timeout", "30",
                             "--budget", "2", *(["--strict"] if strict else []))

    print(f"hook with --budget 2 and a 30 s wait took {elapsed:.2f}s")
    assert elapsed < 10, f"took {elapsed:.1f}s"
    if strict:  # the task failed (1), or the watchdog ended the hook (3)
        assert proc.returncode in (1, 3), proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    (failure,) = spool_state(inv / "wandb-export").failed
    assert "results.yml does not exist" in failure["error"]


WATCHDOG_SCRIPT = """\
import sys, time
from pathlib import Path
from nemo_wandb_hook import hook
def hang(self, locations, configs):
    time.sleep(60)
hook.ExportRun.export = hang  # a hang the hook's own deadlines cannot bound
sys.exit(hook.hook_main(hook.HookRequest(task_dir=Path(sys.argv[1]), budget=2,
                                         strict=sys.argv[2] == "strict")))
"""


@pytest.mark.parametrize(("mode", "expected"), [("lenient", 0), ("strict", 3)])
def test_watchdog_ends_a_hanging_hook_at_its_budget(
    make_invocation: Callable[..., Path], tmp_path: Path, mode: str, expected: int
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WATCHDOG_SCRIPT, str(task_dir(inv, 0)), mode],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=hook_env())
    elapsed = time.monotonic() - started

    assert proc.returncode == expected, proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert "budget of 2s used up" in (inv / "wandb-export" / "hook.log").read_text()


LATE_SCRIPT = """\
import sys, time
from pathlib import Path
from nemo_wandb_hook import hook
time.sleep(4)  # as if starting Python and importing took that long on a busy node
hook.ExportRun.export = lambda self, locations, configs: time.sleep(60)
sys.exit(hook.hook_main(hook.HookRequest(task_dir=Path(sys.argv[1]), budget=4, strict=True)))
"""


def test_budget_counts_from_the_start_of_the_hook_process(
    make_invocation: Callable[..., Path],
) -> None:
    """Slurm's KillWait runs from the signal: time the process spent before the hook's code
    ran counts against the budget."""
    inv = make_invocation(wandb=dict(ORG))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", LATE_SCRIPT, str(task_dir(inv, 0))],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=hook_env())
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 7, f"the watchdog gave the hook {elapsed:.1f}s of a 4s budget"


def test_process_age() -> None:
    script = ("import time; time.sleep(1); from nemo_wandb_hook import hook; "
              "print(hook.process_age())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=HANG_GUARD, check=True).stdout
    assert 1.0 <= float(out) < HANG_GUARD


IN_PROCESS_SCRIPT = """\
import sys, time
from pathlib import Path
from nemo_wandb_hook import hook
code = hook.hook_main(hook.HookRequest(task_dir=Path(sys.argv[1]), budget=1.5,
                                       overrides=["mode=offline"]))
time.sleep(3)  # the watchdog of the finished hook must not end this process
print("still alive", code)
sys.exit(5)
"""


def test_watchdog_of_a_finished_hook_does_not_end_its_caller(
    make_invocation: Callable[..., Path],
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    hide_results(task_dir(inv, 0))
    proc = subprocess.run(
        [sys.executable, "-c", IN_PROCESS_SCRIPT, str(task_dir(inv, 0))],
        capture_output=True, text=True, timeout=HANG_GUARD, env=hook_env(),
    )
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout.strip() == "still alive 0"


# --- the lock: one writer per run ------------------------------------------------------------


def _hold_lock(stage: Path, seconds: float) -> threading.Thread:
    held = threading.Event()

    def hold() -> None:
        with Spool(stage).lock(MULTI_SLUG, timeout=10, stale_after=600):
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread


def test_hook_leaves_its_entry_to_the_lock_holder_and_strict_waits_for_it(
    make_invocation: Callable[..., Path], isolated_wandb: Path
) -> None:
    inv = make_invocation(wandb=dict(ORG))
    stage = inv / "wandb-export"
    holder = _hold_lock(stage, 10)

    lenient, _ = run_hook("--task-dir", task_dir(inv, 0), *OFFLINE, *MULTI)
    assert lenient.returncode == 0, lenient.stderr
    assert holder.is_alive(), "without --strict the hook does not wait for the lock"
    assert len(spool_state(stage).pending) == 1  # durable; the holder or a flush delivers it

    strict, _ = run_hook("--task-dir", task_dir(inv, 1), *OFFLINE, *MULTI, "--strict")
    holder.join()
    assert strict.returncode == 0, strict.stderr
    check_multi_task_run(stage, isolated_wandb, [task_dir(inv, i).name for i in (0, 1)])


# --- a dependency job re-exporting an invocation ---------------------------------------------


def test_invocation_export_after_task_hooks_changes_nothing(
    synthetic_invocation: Callable[[int], Path], isolated_wandb: Path
) -> None:
    inv = synthetic_invocation(3)
    for i in range(3):  # each array task's own hook, with its Slurm ids
        env = job_env(SLURM_JOB_ID=str(601 + i), SLURM_ARRAY_JOB_ID="600",
                       SLURM_ARRAY_TASK_ID=str(i), SLURM_SUBMIT_DIR=str(inv))
        proc, _ = run_hook(*OFFLINE, *MULTI, env=env, cwd=inv)
        assert proc.returncode == 0, proc.stderr
    pieces_before = len(offline_pieces(isolated_wandb))

    # The export job after the array: another job, exporting every task.
    proc, _ = run_hook("--invocation-dir", inv, *OFFLINE, *MULTI, "--strict",
                       env=job_env(SLURM_JOB_ID="700", SLURM_SUBMIT_DIR=str(inv)))

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("unchanged") == 3, proc.stderr
    assert len(offline_pieces(isolated_wandb)) == pieces_before, "nothing new to write"
    pieces = check_multi_task_run(inv / "wandb-export", isolated_wandb,
                                  [task_dir(inv, i).name for i in range(3)])
    tasks = pieces[-1].config["tasks"]
    assert {t: (v["slurm_job_id"], v["slurm_array_job_id"], v["slurm_array_task_id"])
            for t, v in tasks.items()} == {
        task_dir(inv, i).name: (str(601 + i), "600", str(i)) for i in range(3)}


def test_invocation_export_does_not_stamp_its_own_job_id_on_the_tasks(
    synthetic_invocation: Callable[[int], Path], isolated_wandb: Path
) -> None:
    inv = synthetic_invocation(2)
    proc, _ = run_hook("--invocation-dir", inv, *OFFLINE, *MULTI, "--strict",
                       env=job_env(SLURM_JOB_ID="700", SLURM_SUBMIT_DIR=str(inv)))
    assert proc.returncode == 0, proc.stderr
    (piece,) = offline_pieces(isolated_wandb)
    # The ids the launcher recorded in each task's .slurm_job_id.list, not the export job's.
    assert {t: v["slurm_job_id"] for t, v in piece.config["tasks"].items()} == {
        task_dir(inv, i).name: str(4242000 + i) for i in range(2)}


# --- many hooks at once on one multi_task run ------------------------------------------------

CONCURRENT = 32


@pytest.mark.parametrize("repeat", range(3))
def test_concurrent_hooks_write_one_multi_task_run(
    synthetic_invocation: Callable[[int], Path], isolated_wandb: Path, repeat: int
) -> None:
    inv = synthetic_invocation(CONCURRENT)
    tasks = [task_dir(inv, i) for i in range(CONCURRENT)]
    logs = inv.parent / "hook-logs"
    logs.mkdir()
    env = hook_env()

    started = time.monotonic()
    procs = []
    for task in tasks:
        with (logs / f"{task.name}.log").open("w") as out:
            procs.append(subprocess.Popen(
                [str(hook_bin()), "hook", "--task-dir", str(task), *OFFLINE, *MULTI],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
    codes = [p.wait(timeout=HANG_GUARD) for p in procs]
    wall = time.monotonic() - started

    pieces = check_multi_task_run(inv / "wandb-export", isolated_wandb, [t.name for t in tasks])
    print(f"\n{CONCURRENT} concurrent hooks (run {repeat + 1}/3): wall {wall:.1f}s, "
          f"{len(pieces)} offline piece(s)")
    failed = {t.name: (logs / f"{t.name}.log").read_text()
              for t, code in zip(tasks, codes, strict=True) if code != 0}
    assert not failed, failed
    assert len(spool_state(inv / "wandb-export").done[MULTI_SLUG]) == CONCURRENT
    shutil.rmtree(logs)


def test_hook_log_lines_name_the_job(make_invocation: Callable[..., Path]) -> None:
    inv = make_invocation(wandb=dict(ORG))
    hide_results(task_dir(inv, 0))
    env = job_env(SLURM_JOB_ID="31337", SLURM_ARRAY_JOB_ID="31330", SLURM_ARRAY_TASK_ID="0",
                   SLURM_SUBMIT_DIR=str(inv))
    proc, _ = run_hook(*OFFLINE, "--wait-timeout", "0", env=env, cwd=inv)
    assert proc.returncode == 0, proc.stderr
    text = (inv / "wandb-export" / "hook.log").read_text()
    assert "job=31337" in text
    assert "hook for 3f9a1c2b7d4e8f60.0 (Slurm job 31337)" in text
    assert [f["task"] for f in spool_state(inv / "wandb-export").failed] == [
        task_dir(inv, 0).name]


def test_lock_holder_drains_entries_that_arrive_as_it_lets_go(
    synthetic_invocation: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hooks do not wait for the lock (lock_wait=0): an entry enqueued just before the holder
    releases, whose own hook found the lock busy, must still be delivered by the holder --
    however often that happens in a row."""
    inv = synthetic_invocation(6)
    stage = inv / "wandb-export"
    locations = locate(str(inv))
    configs = pipeline.resolve_configs(locations, None, None, ["log_mode=multi_task"])
    entries = [pipeline.prepare(loc, cfg, stage, 0, "offline", {}).entry
               for loc, cfg in zip(locations, configs, strict=True)]
    spool = Spool(stage)
    spool.enqueue(entries[0])
    late = entries[1:]
    release = spool_module.RunLock.__exit__

    def arrive_then_release(self: spool_module.RunLock, *exc: object) -> None:
        if late:  # another task's hook: enqueued, found the lock busy, left
            spool.enqueue(late.pop(0))
        release(self, *exc)

    monkeypatch.setattr(spool_module.RunLock, "__exit__", arrive_then_release)

    outcomes = flush(stage, [MULTI_SLUG], lock_wait=0)

    assert spool.pending(MULTI_SLUG) == []
    assert sorted(o.task for o in outcomes) == sorted(loc.dir_name for loc in locations)


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what the hook does when run as root")
def test_root_hook_for_a_job_of_unknown_owner_touches_nothing(
    make_invocation: Callable[..., Path], tmp_path: Path
) -> None:
    """As root (a slurm.conf epilogue), the hook acts as the job's user; when it cannot tell
    who that is, it must not write into the job's directories as root."""
    inv = make_invocation(wandb=dict(ORG))
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id' >&2\n"
                                   "exit 1\n")
    (fake / "scontrol").chmod(0o755)
    env = hook_env(SLURM_JOB_ID="4711", SLURM_JOB_WORK_DIR=str(task_dir(inv, 0)),
                   PATH=f"{fake}:{os.environ['PATH']}")

    lenient, _ = run_hook(*OFFLINE, env=env)
    strict, _ = run_hook(*OFFLINE, "--strict", env=env)

    assert lenient.returncode == 0, lenient.stderr
    assert strict.returncode == 2, strict.stderr
    assert "owner of Slurm job 4711 is unknown" in lenient.stderr
    assert not (inv / "wandb-export").exists()


def test_current_job_keeps_uid_0_from_the_environment(
    fake_scontrol: Callable[[str, int], Path],
) -> None:
    args = fake_scontrol(SCONTROL_ARRAY, 0)
    job = slurm.current_job({"SLURM_JOB_ID": "101", "SLURM_JOB_UID": "0", "SLURM_JOB_GID": "0"})
    assert (job.uid, job.gid) == (0, 0)  # root's job, not alice's from the scontrol record
    assert args.exists()


def test_a_typo_in_the_hooks_arguments_does_not_fail_the_epilogue() -> None:
    lenient, _ = run_hook("--wait-timout", "5")
    strict, _ = run_hook("--wait-timout", "5", "--strict")
    assert lenient.returncode == 0, lenient.stderr
    assert "unrecognized arguments: --wait-timout" in lenient.stderr
    assert "exiting 0 as epilogues must" in lenient.stderr
    assert strict.returncode == 2
