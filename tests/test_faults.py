"""A flaky W&B (GitHub issue "Online export that survives a flaky W&B"), with the recording
backend: retried faults end delivered, permanent ones fail fast and say what to do, an absent
W&B is given up on in bounded time with everything kept pending, and `flush` later delivers it
exactly once, also after a server death mid-run or a lock holder killed with SIGKILL.

Times are asserted only as generous upper bounds (a loaded 2-core box); what is asserted
exactly is what reached the backend: how many attempts, runs and artifact versions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import time

import pytest

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import gsm8k_task, write_invocation
from nemo_wandb_hook.flush import flush
from nemo_wandb_hook.probe import decide_mode
from nemo_wandb_hook.spool import Spool
from tests.support.online_checks import (
    ENTITY,
    EXAMPLE,
    GSM8K,
    ORG,
    ORG_ARGS,
    PROJECT,
    Stopwatch,
    assert_artifact_matches_stage,
    assert_complete_multi_task_run,
    export_online,
    export_with_lock_wait,
    hold_lock,
    lock_path,
    pending_names,
    per_task_run_id,
    sigkill,
    summary_metrics,
)
from tests.support.results_fixtures import INV, by_task, offline_run_of, run_cli, statuses

GSM8K_ID = per_task_run_id("gsm8k.0")
MULTI = {"log_mode": "multi_task"}
MULTI_ARGS = ["-o", "log_mode=multi_task", "-o", "mode=online"]
# Slack for "bounded time": the deadline is the contract, the rest is process start-up, the
# wandb service and a loaded machine.
SLACK = 30.0


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "nemo_wandb_hook.wandb_sink" and "retrying" in r.getMessage()]


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.fixture
def gsm8k_inv(make_invocation):
    return make_invocation([gsm8k_task()])


def assert_gsm8k_delivered(backend, inv_dir) -> None:
    assert backend.runs() == [(ENTITY, PROJECT, GSM8K_ID)]
    run = backend.run(ENTITY, PROJECT, GSM8K_ID)
    assert summary_metrics(run) == GSM8K
    assert run.finished and run.exit_code == 0
    assert_artifact_matches_stage(backend, inv_dir / "wandb-export", "gsm8k.0", "gsm8k")


# --- transient faults: retried, delivered --------------------------------------------------


def test_file_stream_500s_are_retried_and_the_run_is_delivered(gsm8k_inv, wandb_backend):
    wandb_backend.inject("file_stream", status=500, count=3)
    report = export_online(gsm8k_inv)
    assert statuses(report) == {"gsm8k.0": "exported"}, report.as_dict()
    assert wandb_backend.count("file_stream", 500) == 3
    assert_gsm8k_delivered(wandb_backend, gsm8k_inv)


def test_429_burst_waits_for_retry_after_then_delivers(gsm8k_inv, wandb_backend, caplog):
    caplog.set_level(logging.INFO)
    wandb_backend.inject("UpsertBucket", status=429, count=2, retry_after=1)
    with Stopwatch() as took:
        report = export_online(gsm8k_inv)
    assert statuses(report) == {"gsm8k.0": "exported"}, report.as_dict()
    assert wandb_backend.count("UpsertBucket", 429) == 2
    assert took.elapsed >= 2.0  # two Retry-After: 1 waits, at least
    assert retry_warnings(caplog) == []  # the SDK absorbed it: one session attempt
    assert_gsm8k_delivered(wandb_backend, gsm8k_inv)


# --- permanent faults: no retries, a clear message, the entry kept --------------------------


def test_rejected_api_key_fails_fast_names_the_run_and_keeps_the_entry(
        gsm8k_inv, wandb_backend, caplog):
    caplog.set_level(logging.INFO)
    wandb_backend.reject_auth = True
    with Stopwatch() as took:
        report = export_online(gsm8k_inv)
    (outcome,) = report.tasks
    assert outcome.status == "failed"
    assert f"{ENTITY}/{PROJECT}/{GSM8K_ID}" in outcome.error
    assert "401" in outcome.error and "WANDB_API_KEY" in outcome.error
    # one session attempt: the first request was refused and nothing was tried again
    assert wandb_backend.count("RunResumeStatus") == 1
    assert [s for _, _, s in wandb_backend.requests] == [401]
    assert retry_warnings(caplog) == []
    assert took.elapsed < SLACK
    assert pending_names(gsm8k_inv / "wandb-export", GSM8K_ID) == ["gsm8k.0"]
    assert wandb_backend.runs() == []


def test_unknown_project_404_is_permanent_without_retries(gsm8k_inv, wandb_backend, caplog):
    caplog.set_level(logging.INFO)
    wandb_backend.inject("UpsertBucket", status=404, count=5)
    report = export_online(gsm8k_inv)
    (outcome,) = report.tasks
    assert outcome.status == "failed"
    assert outcome.error.startswith(f"W&B refused run {ENTITY}/{PROJECT}/{GSM8K_ID}")
    assert "entity and project exist" in outcome.error
    assert wandb_backend.count("UpsertBucket") == 1
    assert retry_warnings(caplog) == []
    stage = gsm8k_inv / "wandb-export"
    assert pending_names(stage, GSM8K_ID) == ["gsm8k.0"]
    assert "refused" in Spool(stage).failure(f"{ENTITY}__{PROJECT}__{GSM8K_ID}")["error"]


# --- no answer: bounded, pending, delivered later ------------------------------------------


def test_slow_server_is_given_up_on_at_the_deadline_then_flush_delivers(gsm8k_inv,
                                                                       wandb_backend):
    wandb_backend.inject("UpsertBucket", delay=60, count=50)
    with Stopwatch() as took:
        report = export_results(str(gsm8k_inv), config=ORG,
                                overrides=["mode=online", "retry.deadline=8"])
    (outcome,) = report.tasks
    assert outcome.status == "pending", outcome
    assert "nemo-wandb-hook flush" in outcome.error
    assert took.elapsed < 8 + SLACK
    stage = gsm8k_inv / "wandb-export"
    assert pending_names(stage, GSM8K_ID) == ["gsm8k.0"]

    wandb_backend.clear_faults()
    outcomes = flush(stage)
    assert [(o.task, o.status) for o in outcomes] == [("gsm8k.0", "exported")]
    assert_gsm8k_delivered(wandb_backend, gsm8k_inv)


def test_stopped_server_export_pending_then_cli_flush_delivers_exactly_once(make_invocation,
                                                                           wandb_backend):
    inv_dir = make_invocation()
    stage = inv_dir / "wandb-export"
    wandb_backend.stop()
    with Stopwatch() as took:
        proc = run_cli("export", inv_dir, *ORG_ARGS, *MULTI_ARGS, "-o", "retry.deadline=8")
    assert proc.returncode == 1, proc.stderr
    assert took.elapsed < 8 + SLACK
    for task in EXAMPLE:
        line = next(li for li in proc.stderr.splitlines() if li.startswith(task))
        assert "pending" in line
    assert sorted(pending_names(stage, INV)) == sorted(EXAMPLE)

    # The message names the command that delivers later; it works as printed.
    command = re.search(r"run `(nemo-wandb-hook flush [^`]*)` later", proc.stderr)
    assert command, proc.stderr
    wandb_backend.start()
    proc = run_cli(*shlex.split(command[1])[1:])
    assert proc.returncode == 0, proc.stderr
    assert_complete_multi_task_run(wandb_backend, stage)
    assert pending_names(stage, INV) == []

    requests = len(wandb_backend.requests)
    again = run_cli("flush", inv_dir)
    assert again.returncode == 0, again.stderr
    assert len(wandb_backend.requests) == requests  # nothing left: a no-op
    assert_complete_multi_task_run(wandb_backend, stage)


def test_absent_w_and_b_costs_one_deadline_not_one_per_run(make_invocation, wandb_backend,
                                                          caplog):
    """per_task, three runs, W&B down: the first run uses the retry deadline, the others are
    not tried; all stay pending and one later flush delivers them."""
    caplog.set_level(logging.INFO)
    inv_dir = make_invocation()
    wandb_backend.stop()
    with Stopwatch() as took:
        report = export_results(str(inv_dir), config=ORG,
                                overrides=["mode=online", "retry.deadline=8"])
    assert statuses(report) == dict.fromkeys(EXAMPLE, "pending"), report.as_dict()
    tried = {m.split()[2].rstrip(":") for m in retry_warnings(caplog)}
    assert tried == {f"{ENTITY}/{PROJECT}/{per_task_run_id(next(iter(EXAMPLE)))}"}, tried
    skipped = [t for t in report.tasks if "not tried" in t.error]
    assert len(skipped) == 2, report.as_dict()
    assert took.elapsed < 8 + SLACK
    stage = inv_dir / "wandb-export"
    for task in EXAMPLE:
        assert pending_names(stage, per_task_run_id(task)) == [task]

    wandb_backend.start()
    outcomes = flush(stage)
    assert sorted((o.task, o.status) for o in outcomes) == sorted(
        (t, "exported") for t in EXAMPLE)
    assert len(wandb_backend.runs()) == 3


@pytest.mark.parametrize(("kind", "before"), [("CommitArtifact", 1), ("file_stream", 1)])
def test_server_killed_mid_multi_task_flush_then_flush_completes_without_duplicates(
        make_invocation, wandb_backend, kind, before):
    inv_dir = make_invocation()
    stage = inv_dir / "wandb-export"
    wandb_backend.inject(kind, delay=0.01, count=before)  # let the first one through
    wandb_backend.inject(kind, die=True)  # the server dies on the next
    with Stopwatch() as took:
        report = export_results(str(inv_dir), config={**ORG, **MULTI},
                                overrides=["mode=online", "retry.deadline=10"])
    assert not wandb_backend.running
    assert statuses(report) == dict.fromkeys(EXAMPLE, "pending"), report.as_dict()
    assert took.elapsed < 10 + SLACK
    assert sorted(pending_names(stage, INV)) == sorted(EXAMPLE)

    wandb_backend.start()
    proc = run_cli("flush", inv_dir)
    assert proc.returncode == 0, proc.stderr
    assert_complete_multi_task_run(wandb_backend, stage)  # one run, v0 only, bytes equal
    assert pending_names(stage, INV) == []


def test_failed_online_export_leaves_the_process_clean(gsm8k_inv, wandb_backend):
    """After a failed online push, the same process writes the same run id offline, and
    delivers online again once W&B is back (no "run ID in use")."""
    wandb_backend.stop()
    failed = export_results(str(gsm8k_inv), config=ORG,
                            overrides=["mode=online", "retry.deadline=3"])
    assert statuses(failed) == {"gsm8k.0": "pending"}

    offline = export_results(str(gsm8k_inv), config=ORG, offline=True)
    (outcome,) = offline.tasks
    assert outcome.status == "exported" and outcome.offline_dir, outcome
    run = offline_run_of(outcome)
    assert run.run_id == GSM8K_ID
    assert {k: v for k, v in run.summary.items() if k in GSM8K} == GSM8K

    wandb_backend.start()
    other = gsm8k_inv.parent / "other"
    inv2 = write_invocation(other, [gsm8k_task()], invocation_id="0a1b2c3d4e5f6a7b")
    online = export_online(inv2)
    assert statuses(online) == {"gsm8k.0": "exported"}, online.as_dict()
    assert wandb_backend.runs() == [(ENTITY, PROJECT, "0a1b2c3d4e5f6a7b-gsm8k_0")]


# --- mode auto ---------------------------------------------------------------------------


def test_auto_with_key_and_answering_host_goes_online(gsm8k_inv, wandb_backend, caplog):
    caplog.set_level(logging.INFO)
    report = export_results(str(gsm8k_inv), config=ORG)  # mode auto is the default
    (outcome,) = report.tasks
    assert (outcome.status, outcome.run_path) == ("exported", f"{ENTITY}/{PROJECT}/{GSM8K_ID}")
    assert wandb_backend.count("healthz") == 1
    assert (f"writing online W&B runs: W&B host {wandb_backend.base_url} answered and an "
            "API key is set") in messages(caplog, "nemo_wandb_hook.flush")
    assert_gsm8k_delivered(wandb_backend, gsm8k_inv)


def test_auto_without_api_key_goes_offline(gsm8k_inv, wandb_backend, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("WANDB_API_KEY")
    report = export_results(str(gsm8k_inv), config=ORG)
    (outcome,) = report.tasks
    assert outcome.status == "exported" and outcome.offline_dir and not outcome.run_path
    assert offline_run_of(outcome).run_id == GSM8K_ID
    assert any(m.startswith("writing offline W&B runs: no W&B API key")
               for m in messages(caplog, "nemo_wandb_hook.flush"))
    assert wandb_backend.requests == []  # not even the probe


def test_auto_with_server_stopped_writes_offline_runs_and_says_why(make_invocation,
                                                                   wandb_backend, caplog):
    caplog.set_level(logging.INFO)
    inv_dir = make_invocation()
    wandb_backend.stop()
    report = export_results(str(inv_dir), config={**ORG, **MULTI})
    assert statuses(report) == dict.fromkeys(EXAMPLE, "exported"), report.as_dict()
    assert all(t.offline_dir and not t.run_path for t in report.tasks)
    run = offline_run_of(report.tasks[0])
    assert run.run_id == INV
    reason = [m for m in messages(caplog, "nemo_wandb_hook.flush")
              if m.startswith("writing offline W&B runs:")]
    assert reason and f"W&B host {wandb_backend.base_url} did not answer" in reason[0]


def test_auto_host_that_never_answers_is_offline_within_the_probe_timeout(
        gsm8k_inv, wandb_backend, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    silent = socket.socket()  # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        with Stopwatch() as took:
            mode, reason = decide_mode("auto")
        assert (mode, reason.startswith(f"W&B host {url} did not answer within 3s")) == (
            "offline", True), reason
        assert 2.5 < took.elapsed < 3 + SLACK
        report = export_results(str(gsm8k_inv), config=ORG)
        (outcome,) = report.tasks
        assert outcome.status == "exported" and outcome.offline_dir, outcome
    finally:
        silent.close()


def test_auto_falls_back_offline_when_w_and_b_fails_after_the_probe(gsm8k_inv, wandb_backend,
                                                                    caplog):
    caplog.set_level(logging.INFO)
    wandb_backend.inject("RunResumeStatus", status=503, count=1000)
    report = export_results(str(gsm8k_inv), config=ORG, overrides=["retry.deadline=5"])
    (outcome,) = report.tasks
    assert outcome.status == "exported" and outcome.offline_dir, outcome
    assert offline_run_of(outcome).run_id == GSM8K_ID
    assert any("writing an offline run instead" in m
               for m in messages(caplog, "nemo_wandb_hook.flush"))
    assert wandb_backend.runs() == []


# --- a lock holder killed with SIGKILL ---------------------------------------------------


def test_sigkilled_lock_holder_on_this_host_is_taken_over_by_flush(make_invocation,
                                                                    wandb_backend):
    inv_dir = make_invocation()
    stage = inv_dir / "wandb-export"
    lock = lock_path(stage)
    holder = hold_lock(lock)
    try:
        report = export_with_lock_wait(inv_dir, 1.0, **MULTI)
        assert statuses(report) == dict.fromkeys(EXAMPLE, "pending"), report.as_dict()
        assert f"pid {holder.pid}" in report.tasks[0].error
        assert wandb_backend.runs() == []
    finally:
        sigkill(holder)
    assert lock.exists()  # left behind by the killed holder

    proc = run_cli("flush", inv_dir)
    assert proc.returncode == 0, proc.stderr
    assert "breaking stale lock" in proc.stderr and "its holder is gone" in proc.stderr
    assert_complete_multi_task_run(wandb_backend, stage)
    assert not lock.exists()

    requests = len(wandb_backend.requests)
    assert run_cli("flush", inv_dir).returncode == 0
    assert len(wandb_backend.requests) == requests


def test_lock_of_another_host_is_respected_until_stale_then_broken(make_invocation,
                                                                   wandb_backend):
    inv_dir = make_invocation()
    stage = inv_dir / "wandb-export"
    lock = lock_path(stage)
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    lock.with_suffix(".holder").write_text(json.dumps(
        {"host": "node-elsewhere-17", "pid": os.getpid(), "since": time.time() - 700,
         "slurm_job_id": "991"}))

    # fresh: a live holder elsewhere, maybe; wait for it and leave the entries pending
    report = export_with_lock_wait(inv_dir, 1.0, **MULTI)
    assert statuses(report) == dict.fromkeys(EXAMPLE, "pending"), report.as_dict()
    assert "node-elsewhere-17" in report.tasks[0].error
    assert "Slurm job 991" in report.tasks[0].error
    assert lock.exists() and wandb_backend.runs() == []

    old = time.time() - 700  # older than the 600 s after which any host may break it
    os.utime(lock, (old, old))
    proc = run_cli("flush", inv_dir)
    assert proc.returncode == 0, proc.stderr
    assert "breaking stale lock" in proc.stderr and "s old" in proc.stderr
    assert_complete_multi_task_run(wandb_backend, stage)
    assert not lock.exists()


# --- the figure for the issue note --------------------------------------------------------


def test_time_to_give_up_on_an_unreachable_w_and_b_with_default_settings(
        gsm8k_inv, wandb_backend, capsys):
    """Measured, not asserted: mode online, retry defaults, connection refused."""
    wandb_backend.stop()
    with Stopwatch() as took:
        report = export_online(gsm8k_inv)
    (outcome,) = report.tasks
    assert outcome.status == "pending", outcome
    assert pending_names(gsm8k_inv / "wandb-export", GSM8K_ID) == ["gsm8k.0"]
    with capsys.disabled():
        print(f"\n[measure] unreachable W&B (connection refused), default settings: "
              f"gave up after {took.elapsed:.1f}s")
    assert by_task(report)["gsm8k.0"].error
