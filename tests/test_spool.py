"""The spool: atomic entries, the pending/done ledger, and the per-run lock."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_wandb_hook.spool import LockTimeout, RunLock, RunSpec, Spool, SpoolEntry
from tests.support.results_fixtures import INV, REPO_ROOT

SPEC = RunSpec(entity="myorg", project="evals", run_id=f"{INV}-gsm8k_1", name="eval", group=INV,
               job_type="evaluation", log_mode="per_task")


def entry(task: str = "gsm8k.1", index: int = 1, value: float = 0.5) -> SpoolEntry:
    return SpoolEntry(
        run=SPEC, invocation_id=INV, task=task, index=index, benchmark=task.split(".")[0],
        harness="lm-evaluation-harness", config={"run": {}, "task": {}},
        metrics={f"{task.split('.')[0]}_acc": value}, staged_dir="/stage", files=[],
        artifact_name=f"{INV}_gsm8k", log_artifacts=True, mode="offline",
    )


def leftovers(root: Path) -> list[Path]:
    """Temporary files of atomic writes (`.<name>.<random>`)."""
    return [p for p in root.rglob(".*") if p.is_file()]


def test_enqueue_writes_one_pending_entry_that_reads_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    assert spool.enqueue(e) is True
    path = tmp_path / "spool" / "pending" / SPEC.slug / f"{INV}__gsm8k.1.json"
    assert path.is_file()
    assert spool.pending_runs() == [SPEC.slug]
    (back,) = spool.pending(SPEC.slug)
    assert back == e
    assert back.digest == e.content_digest()
    assert leftovers(tmp_path) == []


def test_enqueue_is_atomic_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(entry(value=0.5))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        spool.enqueue(entry(value=0.9))
    monkeypatch.undo()
    (kept,) = spool.pending(SPEC.slug)
    assert kept.metrics == {"gsm8k_acc": 0.5}  # the old entry, whole
    assert leftovers(tmp_path) == []


def test_pending_is_ordered_by_task_index(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for task, index in [("b.10", 10), ("a.2", 2), ("c.0", 0)]:
        spool.enqueue(entry(task, index))
    assert [e.task for e in spool.pending(SPEC.slug)] == ["c.0", "a.2", "b.10"]


def test_ledger_marks_delivery_and_skips_unchanged_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    spool.enqueue(e)
    spool.record_failure(SPEC.slug, "W&B did not answer")
    assert spool.failure(SPEC.slug)["error"] == "W&B did not answer"

    spool.mark_delivered(e, "offline", "/wandb/offline-run-x")
    assert spool.pending(SPEC.slug) == []
    assert spool.pending_runs() == []
    assert spool.failure(SPEC.slug) is None
    done = spool.delivery(SPEC.slug, e.name)
    assert (done.mode, done.location, done.entry) == ("offline", "/wandb/offline-run-x", e)
    assert [d.entry.name for d in spool.deliveries(SPEC.slug)] == [e.name]

    assert spool.enqueue(entry()) is False  # same content: nothing to do
    assert spool.pending(SPEC.slug) == []
    assert spool.enqueue(entry(value=0.75)) is True  # changed: pending again
    assert [p.metrics for p in spool.pending(SPEC.slug)] == [{"gsm8k_acc": 0.75}]


def test_unreadable_spool_file_is_skipped_and_left_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(entry("a.0", 0))
    broken = tmp_path / "spool" / "pending" / SPEC.slug / f"{INV}__b.1.json"
    broken.write_text('{"run": ')
    with caplog.at_level(logging.WARNING):
        assert [e.task for e in spool.pending(SPEC.slug)] == ["a.0"]
    assert "unreadable" in caplog.text
    assert broken.exists()


# --- the run lock --------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from nemo_wandb_hook.spool import RunLock
with RunLock(Path(sys.argv[1]), timeout=30, stale_after=3600):
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin, or kills this process
"""


def start_holder(lock: Path, slurm_job: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SLURM_JOB_ID", None)
    if slurm_job:
        env["SLURM_JOB_ID"] = slurm_job
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def holder_info(lock: Path) -> dict:
    return json.loads(lock.with_suffix(".holder").read_text())


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "run.lock"
    proc = start_holder(lock, slurm_job="777")
    try:
        with pytest.raises(LockTimeout) as err, RunLock(lock, timeout=0.5, stale_after=3600):
            pass
        assert str(err.value) == (
            f"lock {lock} still held after 0.5s by host {socket.gethostname()} "
            f"pid {proc.pid} (Slurm job 777)"
        )
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert not lock.with_suffix(".holder").exists()  # released on exit
    with RunLock(lock, timeout=5, stale_after=3600):
        assert holder_info(lock)["pid"] == os.getpid()


def test_lock_of_a_killed_holder_is_broken_and_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = tmp_path / "locks" / "run.lock"
    proc = start_holder(lock)
    proc.kill()  # SIGKILL: no chance to release
    proc.wait(timeout=60)  # reaped, so its pid is really gone
    assert lock.exists() and holder_info(lock)["pid"] == proc.pid
    with caplog.at_level(logging.WARNING), RunLock(lock, timeout=30, stale_after=3600):
        assert holder_info(lock)["pid"] == os.getpid()
    assert f"breaking stale lock {lock} held by host {socket.gethostname()} pid {proc.pid}: " \
           "its holder is gone" in caplog.text


def foreign_lock(lock: Path, age: float) -> None:
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    lock.with_suffix(".holder").write_text(json.dumps({"host": "node-7", "pid": 4242}))
    stamp = time.time() - age
    os.utime(lock, (stamp, stamp))


def test_a_fresh_lock_held_on_another_host_is_respected(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "run.lock"
    foreign_lock(lock, age=0)
    with pytest.raises(LockTimeout, match=r"by host node-7 pid 4242$"), \
            RunLock(lock, timeout=0.3, stale_after=3600):
        pass
    assert lock.exists()


def test_a_lock_older_than_stale_after_is_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = tmp_path / "locks" / "run.lock"
    foreign_lock(lock, age=7200)
    with caplog.at_level(logging.WARNING), RunLock(lock, timeout=5, stale_after=600):
        assert holder_info(lock)["host"] == socket.gethostname()
    assert re.search(r"held by host node-7 pid 4242: it is 72\d\ds old", caplog.text)
