"""Issue 5: `sync` uploads offline runs once each with the real `wandb sync`; `status` says where
every task stands, from local state only.

Offline pieces are written first (mode offline, several processes where that is the point),
then uploaded to the test-only W&B backend on 127.0.0.1 that the real `wandb sync` talks to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_wandb_hook.example import (
    example_tasks,
    gsm8k_task,
    humaneval_task,
    synthetic_task,
    write_invocation,
)
from nemo_wandb_hook.spool import Spool
from tests.support.results_fixtures import (
    ALL_METRICS,
    CLI_TIMEOUT,
    INV,
    files_under,
    run_cli,
    task_dirs,
    write_results_text,
)
from tests.support.wandb_backend import WandbBackend
from tests.support.wandb_reader import read_offline_run

ENTITY, PROJECT = "e", "p"
ORG_ARGS = ["-o", f"entity={ENTITY}", "-o", f"project={PROJECT}"]
MULTI = ["-o", "log_mode=multi_task"]
# An online export against a stopped backend must give up quickly and leave the task pending.
FAST_GIVE_UP = ["-o", "retry={attempts: 1, max_wait: 1, deadline: 5}"]
TASKS = ["lm-evaluation-harness.mmlu.0", "gsm8k.1", "bigcode-evaluation-harness.humaneval.2"]
UPLOAD_KINDS = ("file_stream", "UpsertBucket")


# --- helpers ---------------------------------------------------------------------------------


def cli_json(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], object]:
    proc = run_cli(*args, "--json")
    assert proc.stdout.strip(), f"no JSON on stdout (exit {proc.returncode}): {proc.stderr}"
    return proc, json.loads(proc.stdout)


def export_offline(target: Path, *extra: str) -> list[str]:
    """`export TARGET --offline` in its own process; returns the offline dirs it wrote."""
    proc, report = cli_json("export", target, "--offline", *ORG_ARGS, *extra)
    assert proc.returncode == 0, proc.stderr
    assert {t["status"] for t in report["tasks"]} == {"exported"}, report
    return sorted({t["offline_dir"] for t in report["tasks"]})


def next_second() -> None:
    """Offline run directories are named by start second: make the next one start later."""
    time.sleep(1.02 - time.time() % 1)


def export_each_task_separately(inv_dir: Path, *extra: str) -> list[Path]:
    """One `export <task dir> --offline` process per task, one after the other, as array tasks
    on compute nodes without internet do; returns the offline pieces, oldest first."""
    pieces: list[Path] = []
    for task_dir in task_dirs(inv_dir):
        (piece,) = export_offline(task_dir, *MULTI, *extra)
        pieces.append(Path(piece))
        next_second()
    return pieces


def sync_markers(pieces: list[Path]) -> list[bool]:
    return [any(p.glob("run-*.wandb.synced")) for p in pieces]


def states(inv_dir: Path, *extra: str | Path) -> dict[str, str]:
    proc, rows = cli_json("status", inv_dir, *extra)
    assert proc.returncode == 0, proc.stderr
    return {r["task"]: r["state"] for r in rows}


def upload_requests(backend: WandbBackend) -> int:
    return sum(backend.count(kind) for kind in UPLOAD_KINDS)


def table_rows(backend: WandbBackend, run_id: str, key: str = "results") -> list[list]:
    """The rows of the table the backend holds under summary `key` of the run."""
    rec = backend.run(ENTITY, PROJECT, run_id)
    ref = rec.summary[key]
    assert ref["_type"] == "table-file", ref
    return json.loads(rec.files[ref["path"]])["data"]


def assert_one_complete_multi_task_run(backend: WandbBackend, inv_dir: Path) -> None:
    """The backend holds one run with every task's metrics, merged config, every artifact."""
    assert backend.runs() == [(ENTITY, PROJECT, INV)]
    rec = backend.run(ENTITY, PROJECT, INV)
    assert rec.finished and rec.exit_code == 0
    assert rec.name == f"eval-{INV}" and rec.group == INV
    summary = {k: v for k, v in rec.user_summary().items() if k != "results"}
    assert summary == ALL_METRICS
    config = rec.user_config()
    assert config["benchmarks"] == ["gsm8k", "humaneval", "mmlu"]
    assert config["harnesses"] == ["bigcode-evaluation-harness", "lm-evaluation-harness"]
    assert sorted(config["tasks"]) == sorted(TASKS)
    assert config["invocation_id"] == INV
    # the last piece synced is the newest: its results table covers every task
    assert sorted({row[1] for row in table_rows(backend, INV)}) == ["gsm8k", "humaneval", "mmlu"]
    for task_dir, benchmark in zip(task_dirs(inv_dir), ["mmlu", "gsm8k", "humaneval"],
                                   strict=True):
        name = f"{INV}_{benchmark}"
        assert f"{name}:v0" in rec.artifacts_logged
        (version,) = backend.artifact_versions(ENTITY, PROJECT, name)
        assert version.missing_files == []
        assert sorted(version.files) == ["config.yaml", "eval_factory_metrics.json",
                                         "metadata.yaml", "results.yml", "run_config.yml"]
        original = (task_dir / "artifacts" / "results.yml").read_bytes()
        assert version.files["results.yml"] == original


# --- uploading the pieces of one multi_task run ------------------------------------------------


def test_plain_wandb_sync_of_pieces_from_separate_processes_gives_one_complete_run(
    wandb_backend, make_invocation
):
    inv_dir = make_invocation(example_tasks())
    pieces = export_each_task_separately(inv_dir)
    starts = [p.name.split("-")[2] for p in pieces]  # offline-run-<start second>-<run id>
    assert starts == sorted(set(starts)), starts  # three pieces, distinct start times
    assert wandb_backend.requests == []  # offline: nothing was sent

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", *map(str, pieces)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, env=dict(os.environ),
        stdin=subprocess.DEVNULL, cwd=inv_dir.parent, check=False,
    )
    print(f"\n`wandb sync` of 3 pieces took {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_one_complete_multi_task_run(wandb_backend, inv_dir)
    assert sync_markers(pieces) == [True, True, True]


def test_cli_sync_uploads_every_piece_once_in_start_order(wandb_backend, make_invocation):
    inv_dir = make_invocation(example_tasks())
    pieces = export_each_task_separately(inv_dir)
    assert states(inv_dir) == dict.fromkeys(TASKS, "exported-offline")

    proc = run_cli("sync", inv_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"synced    {ENTITY}/{PROJECT}/{INV}  (3 offline piece(s))" in proc.stdout
    assert_one_complete_multi_task_run(wandb_backend, inv_dir)
    assert sync_markers(pieces) == [True, True, True]
    assert states(inv_dir) == dict.fromkeys(TASKS, "synced")
    ledger = list(Spool(inv_dir / "wandb-export").all_deliveries())
    assert len(ledger) == 3 and all(d.synced_at is not None for d in ledger)

    before, requests = upload_requests(wandb_backend), len(wandb_backend.requests)
    artifacts = wandb_backend.run(ENTITY, PROJECT, INV).artifacts_logged
    again = run_cli("sync", inv_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to sync" in again.stdout
    assert upload_requests(wandb_backend) == before
    assert len(wandb_backend.requests) == requests  # not even a probe
    assert wandb_backend.run(ENTITY, PROJECT, INV).artifacts_logged == artifacts


def test_sync_after_a_later_task_uploads_only_the_new_piece(wandb_backend, make_invocation):
    inv_dir = make_invocation(example_tasks())
    first, second, third = task_dirs(inv_dir)
    (piece1,) = export_offline(first, *MULTI)
    next_second()
    (piece2,) = export_offline(second, *MULTI)
    next_second()
    assert run_cli("sync", inv_dir).returncode == 0
    (piece3,) = export_offline(third, *MULTI)
    streams = wandb_backend.count("file_stream")

    proc, result = cli_json("sync", inv_dir)
    assert proc.returncode == 0, proc.stderr
    assert [(r["status"], r["pieces"]) for r in result["runs"]] == [("synced", [piece3])]
    assert wandb_backend.count("file_stream") > streams
    assert_one_complete_multi_task_run(wandb_backend, inv_dir)
    assert sync_markers([Path(piece1), Path(piece2), Path(piece3)]) == [True, True, True]


# --- when uploading cannot work ----------------------------------------------------------------


def test_sync_with_the_backend_down_is_bounded_and_marks_nothing(wandb_backend, make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    (piece,) = export_offline(inv_dir, *MULTI)
    wandb_backend.stop()

    started = time.monotonic()
    proc, result = cli_json("sync", inv_dir, "--timeout", "60")
    elapsed = time.monotonic() - started
    print(f"\nsync with the backend down took {elapsed:.1f}s")
    assert elapsed < 30  # the host probe gives up after 3 s; nothing waits for --timeout
    assert proc.returncode != 0
    (run,) = result["runs"]
    assert run["status"] == "skipped"
    assert run["run_path"] == f"{ENTITY}/{PROJECT}/{INV}"
    assert f"W&B host {wandb_backend.base_url} did not answer" in run["error"]
    assert sync_markers([Path(piece)]) == [False]
    assert states(inv_dir) == {"gsm8k.0": "exported-offline",
                               "bigcode-evaluation-harness.humaneval.1": "exported-offline"}
    table = run_cli("sync", inv_dir)
    assert table.returncode != 0
    assert "skipped" in table.stdout and "reason: W&B host" in table.stdout

    wandb_backend.start()  # same port
    proc = run_cli("sync", inv_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "synced" in proc.stdout
    assert sync_markers([Path(piece)]) == [True]
    assert set(states(inv_dir).values()) == {"synced"}
    rec = wandb_backend.run(ENTITY, PROJECT, INV)
    assert rec.finished and "gsm8k_exact_match_strict-match" in rec.user_summary()


def test_sync_when_wandb_refuses_the_run_marks_nothing_synced(wandb_backend, make_invocation):
    """`wandb sync` exits 0 even when the upload failed: only its `.synced` marker counts."""
    inv_dir = make_invocation([gsm8k_task()])
    (piece,) = export_offline(inv_dir)
    wandb_backend.inject("UpsertBucket", status=403, count=50)

    proc, result = cli_json("sync", inv_dir, "--timeout", "60")
    assert proc.returncode != 0
    (run,) = result["runs"]
    assert run["status"] == "failed"
    assert "not uploaded: " + Path(piece).name in run["error"]
    assert "403" in run["error"]
    assert sync_markers([Path(piece)]) == [False]
    assert states(inv_dir) == {"gsm8k.0": "exported-offline"}

    wandb_backend.clear_faults()
    proc = run_cli("sync", inv_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert states(inv_dir) == {"gsm8k.0": "synced"}
    assert "gsm8k_exact_match_strict-match" in wandb_backend.run(
        ENTITY, PROJECT, f"{INV}-gsm8k_0").user_summary()


def test_sync_against_a_hanging_backend_stops_at_the_timeout(wandb_backend, make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    (piece,) = export_offline(inv_dir)
    wandb_backend.inject("UpsertBucket", delay=25, count=1)

    started = time.monotonic()
    proc, result = cli_json("sync", inv_dir, "--timeout", "4")
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed
    assert proc.returncode != 0
    (run,) = result["runs"]
    assert run["status"] == "failed"
    assert "did not finish within 4s" in run["error"]
    assert states(inv_dir) == {"gsm8k.0": "exported-offline"}

    proc = run_cli("sync", inv_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sync_markers([Path(piece)]) == [True]
    assert states(inv_dir) == {"gsm8k.0": "synced"}


def test_sync_without_an_api_key_is_skipped_and_contacts_nothing(
    wandb_backend, make_invocation, monkeypatch
):
    inv_dir = make_invocation([gsm8k_task()])
    (piece,) = export_offline(inv_dir)
    monkeypatch.delenv("WANDB_API_KEY")

    proc = run_cli("sync", inv_dir)
    assert proc.returncode != 0
    assert "skipped" in proc.stdout
    assert f"no W&B API key for {wandb_backend.base_url}" in proc.stdout
    assert "WANDB_API_KEY" in proc.stdout  # says how to fix it
    proc, result = cli_json("sync", inv_dir)
    assert proc.returncode != 0
    assert [r["status"] for r in result["runs"]] == ["skipped"]
    assert wandb_backend.requests == []
    assert sync_markers([Path(piece)]) == [False]
    assert states(inv_dir) == {"gsm8k.0": "exported-offline"}


# --- status ----------------------------------------------------------------------------------

EVERY_STATE = {  # task index -> the state it is left in
    0: "waiting", 1: "failed", 2: "staged", 3: "pending",
    4: "exported-offline", 5: "synced", 6: "exported-online",
}


def test_status_shows_every_state(wandb_backend, make_invocation):
    inv_dir = make_invocation([synthetic_task(i) for i in range(7)])
    dirs = task_dirs(inv_dir)
    names = [d.name for d in dirs]
    (dirs[0] / "artifacts" / "results.yml").unlink()
    export_offline(dirs[5])
    assert run_cli("sync", dirs[5]).returncode == 0
    export_offline(dirs[4])
    proc = run_cli("export", dirs[6], *ORG_ARGS, "-o", "mode=online")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", dirs[2], *ORG_ARGS, "--dest", "local")
    assert proc.returncode == 0, proc.stderr
    write_results_text(dirs[1], "results:\n  tasks: {x: {metrics: {acc: {scores: "
                                "{acc: {value: high}}}}}}\n")
    proc = run_cli("export", dirs[1], *ORG_ARGS, "--offline")
    assert proc.returncode == 1
    wandb_backend.stop()
    proc = run_cli("export", dirs[3], *ORG_ARGS, "-o", "mode=online", *FAST_GIVE_UP)
    assert proc.returncode == 1, proc.stderr

    proc, rows = cli_json("status", inv_dir)
    assert proc.returncode == 0, proc.stderr
    assert [(r["task"], r["state"]) for r in rows] == [
        (names[i], state) for i, state in EVERY_STATE.items()]
    by_state = {r["state"]: r for r in rows}
    assert by_state["waiting"]["reason"] == "results.yml not written yet"
    assert "value 'high' is not a number" in by_state["failed"]["reason"]
    assert by_state["pending"]["where"] == f"{ENTITY}/{PROJECT}/{INV}-{names[3].replace('.', '_')}"
    assert by_state["pending"]["reason"], "a pending task says why it is pending"
    assert by_state["exported-online"]["where"] == (
        f"{ENTITY}/{PROJECT}/{INV}-{names[6].replace('.', '_')}")
    assert "offline-run-" in by_state["exported-offline"]["where"]
    assert "offline-run-" in by_state["synced"]["where"]
    assert Path(by_state["staged"]["where"]).is_dir()
    assert all(r["invocation_id"] == INV for r in rows)
    stage = inv_dir / "wandb-export"
    assert by_state["exported-offline"]["next"] == f"nemo-wandb-hook sync --stage-dir {stage}"
    assert by_state["pending"]["next"] == f"nemo-wandb-hook flush --stage-dir {stage}"

    table = run_cli("status", inv_dir)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["INVOCATION", "TASK", "STATE", "AGE"]
    for index, state in EVERY_STATE.items():
        (row,) = [li for li in lines if li.startswith(INV) and f" {names[index]} " in li]
        assert row.split()[2] == state, row
    (failed_row,) = [li for li in lines if f" {names[1]} " in li]
    assert "value 'high' is not a number" in failed_row
    assert f"  nemo-wandb-hook sync --stage-dir {stage}" in lines
    assert f"  nemo-wandb-hook flush --stage-dir {stage}" in lines
    assert lines[-1] == ("1 waiting, 1 failed, 1 staged, 1 pending, 1 exported-online, "
                         "1 exported-offline, 1 synced")

    # status reads local state only: it never imports wandb (checked with -X importtime)
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nemo_wandb_hook", "status", str(inv_dir)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, env=dict(os.environ),
        stdin=subprocess.DEVNULL, check=False,
    )
    assert timed.returncode == 0, timed.stderr
    imported = [li.rsplit("|", 1)[1].strip() for li in timed.stderr.splitlines()
                if li.startswith("import time:") and "|" in li]
    assert "nemo_wandb_hook.status" in imported
    assert [m for m in imported if m == "wandb" or m.startswith("wandb.")] == []
    assert timed.stdout.splitlines()[-1] == lines[-1]  # the same answer


def test_status_of_100_offline_tasks_is_quick(make_invocation):
    """Not an assertion on speed: prints the wall time of the command for the record."""
    inv_dir = make_invocation([synthetic_task(i) for i in range(100)])
    (piece,) = export_offline(inv_dir, *MULTI)
    assert read_offline_run(Path(piece)).exit_code == 0
    timings = []
    for args in ([], [], ["--json"], ["--json"]):
        started = time.monotonic()
        proc = run_cli("status", inv_dir, *args)
        timings.append(time.monotonic() - started)
        assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 100 and {r["state"] for r in rows} == {"exported-offline"}
    started = time.monotonic()
    assert run_cli("--help").returncode == 0
    baseline = time.monotonic() - started
    print(f"\nstatus of 100 tasks exported offline: table {timings[0]:.2f}s/{timings[1]:.2f}s, "
          f"--json {timings[2]:.2f}s/{timings[3]:.2f}s (CLI wall time; "
          f"`nemo-wandb-hook --help` takes {baseline:.2f}s)")


# --- prune -----------------------------------------------------------------------------------


def staging_cache(stage: Path) -> Path:
    return stage / ".wandb-data" / "artifacts" / "staging"


def test_sync_prune_removes_only_what_was_synced(wandb_backend, make_invocation, tmp_path):
    stage = tmp_path / "shared-stage"
    first_inv = make_invocation([gsm8k_task(), humaneval_task()])
    second_id = "0badc0ffee123456"
    second_inv = write_invocation(tmp_path / "other-results", [gsm8k_task(), humaneval_task()],
                                  invocation_id=second_id)
    common = ["--stage-dir", str(stage)]
    first_pieces = [Path(p) for p in export_offline(first_inv, *common)]
    (other_piece,) = export_offline(task_dirs(second_inv)[0], *common)
    other_piece = Path(other_piece)
    wandb_backend.stop()
    proc = run_cli("export", task_dirs(second_inv)[1], *ORG_ARGS, *common, "-o", "mode=online",
                   *FAST_GIVE_UP)
    assert proc.returncode == 1, proc.stderr
    wandb_backend.start()
    spool = Spool(stage)
    (pending_slug,) = spool.pending_runs()
    pending_files = sorted((stage / "spool" / "pending").rglob("*.json"))
    other_files = {f.path: Path(f.local_path)
                   for a in read_offline_run(other_piece).artifacts for f in a.files.values()}
    assert other_files and all(p.is_relative_to(staging_cache(stage))
                               for p in other_files.values())
    assert len(first_pieces) == 2 and all(p.is_dir() for p in first_pieces)

    # 1. the first invocation: synced, then its pieces go; everything else stays
    proc = run_cli("sync", first_inv, *common, "--prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for piece in first_pieces:
        assert f"pruned    {piece}" in proc.stdout
        assert not piece.exists()
    assert other_piece.is_dir() and sync_markers([other_piece]) == [False]
    assert all(p.is_file() for p in other_files.values()), "unsynced piece lost its files"
    assert staging_cache(stage).is_dir()
    assert sorted((stage / "spool" / "pending").rglob("*.json")) == pending_files
    assert spool.pending_runs() == [pending_slug]
    assert (stage / INV / "gsm8k.0" / "results.yml").is_file()  # staged files are not pruned
    assert states(first_inv, *common) == {"gsm8k.0": "synced",
                                          "bigcode-evaluation-harness.humaneval.1": "synced"}

    # 2. the other invocation's offline piece: synced and pruned, but the staging cache stays
    #    for the pending entry
    proc = run_cli("sync", second_inv, *common, "--prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pruned    {other_piece}" in proc.stdout
    assert not other_piece.exists()
    (version,) = wandb_backend.artifact_versions(ENTITY, PROJECT, f"{second_id}_gsm8k")
    assert version.missing_files == []
    assert version.files["results.yml"] == (
        task_dirs(second_inv)[0] / "artifacts" / "results.yml").read_bytes()
    assert staging_cache(stage).is_dir()
    assert spool.pending_runs() == [pending_slug]
    assert states(second_inv, *common) == {"gsm8k.0": "synced",
                                           "bigcode-evaluation-harness.humaneval.1": "pending"}

    # 3. once nothing is unsynced or pending, the caches go too
    proc = run_cli("flush", "--stage-dir", stage)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli("sync", "--stage-dir", stage, "--prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to sync" in proc.stdout
    assert f"pruned    {staging_cache(stage)}" in proc.stdout
    assert not staging_cache(stage).exists()
    assert not (stage / ".wandb-cache").exists()
    assert (stage / "spool" / "done").is_dir()  # the ledger is kept


def test_a_piece_uploaded_by_plain_wandb_sync_is_recorded_then_pruned(
    wandb_backend, make_invocation
):
    """Plain `wandb sync` works too. Its marker alone does not make prune remove a piece;
    the next `sync` records the piece without uploading it again, and only then prunes it."""
    inv_dir = make_invocation([gsm8k_task()])
    (piece,) = export_offline(inv_dir)
    proc = subprocess.run([sys.executable, "-m", "wandb", "sync", piece], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, env=dict(os.environ),
                          stdin=subprocess.DEVNULL, cwd=inv_dir.parent, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sync_markers([Path(piece)]) == [True]

    wandb_backend.stop()
    proc = run_cli("sync", inv_dir, "--prune")
    assert proc.returncode != 0
    assert "skipped" in proc.stdout
    assert "pruned" not in proc.stdout
    assert Path(piece).is_dir()
    assert states(inv_dir) == {"gsm8k.0": "exported-offline"}

    wandb_backend.start()
    uploads = upload_requests(wandb_backend)
    proc = run_cli("sync", inv_dir, "--prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert upload_requests(wandb_backend) == uploads
    assert states(inv_dir) == {"gsm8k.0": "synced"}
    assert f"pruned    {piece}" in proc.stdout
    assert not Path(piece).exists()


@pytest.mark.parametrize("broken", ["gone", "truncated"])
def test_sync_of_a_damaged_piece_fails_and_keeps_it(wandb_backend, make_invocation, broken):
    inv_dir = make_invocation([gsm8k_task()])
    (piece,) = export_offline(inv_dir)
    piece = Path(piece)
    (log,) = piece.glob("run-*.wandb")
    if broken == "gone":
        for path in files_under(piece):
            path.unlink()
    else:
        log.write_bytes(log.read_bytes()[:7])  # the header only
    proc, result = cli_json("sync", inv_dir, "--prune")
    assert proc.returncode != 0
    (run,) = result["runs"]
    assert run["status"] == "failed", run
    assert run["error"]
    assert states(inv_dir) == {"gsm8k.0": "exported-offline"}
    assert piece.is_dir()
    assert result["pruned"] == []


def test_status_without_anything_exported(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    proc, rows = cli_json("status", inv_dir)
    assert proc.returncode == 0
    assert [(r["task"], r["state"]) for r in rows] == [("gsm8k.0", "new")]
    assert rows[0]["next"] == "nemo-wandb-hook export <invocation>"
    assert not (inv_dir / "wandb-export").exists()  # status writes nothing
    proc = run_cli("status", "--stage-dir", inv_dir / "nowhere")
    assert proc.returncode == 0
    assert "nothing exported or staged here yet" in proc.stdout


def test_a_vanished_piece_does_not_block_the_other_pieces_of_its_run(
    wandb_backend, make_invocation
):
    inv_dir = make_invocation()
    pieces = export_each_task_separately(inv_dir)
    for path in files_under(pieces[0]):
        path.unlink()  # the oldest piece is gone (deleted by hand, scratch purge, ...)
    proc, result = cli_json("sync", inv_dir)
    assert proc.returncode != 0
    (run,) = result["runs"]
    assert run["status"] == "failed" and f"offline run directory gone: {pieces[0]}" in run["error"]
    assert sync_markers(pieces[1:]) == [True, True]
    # the newest piece carries the merged state: the run is complete all the same
    rec = wandb_backend.run(ENTITY, PROJECT, INV)
    assert {k: v for k, v in rec.user_summary().items() if k != "results"} == ALL_METRICS
    assert states(inv_dir) == {TASKS[0]: "exported-offline", TASKS[1]: "synced",
                               TASKS[2]: "synced"}


def test_two_syncs_at_once_upload_each_piece_once(wandb_backend, make_invocation):
    # Reference: what one sync of three pieces sends.
    alone = make_invocation(invocation_id="aaaaaaaaaaaaaaaa")
    export_each_task_separately(alone)
    before = upload_requests(wandb_backend)
    assert run_cli("sync", alone).returncode == 0
    one_sync = upload_requests(wandb_backend) - before

    inv_dir = make_invocation()
    export_each_task_separately(inv_dir)
    before = upload_requests(wandb_backend)
    procs = [subprocess.Popen([sys.executable, "-m", "nemo_wandb_hook", "sync", str(inv_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert upload_requests(wandb_backend) - before == one_sync  # not twice as many
    rec = wandb_backend.run(ENTITY, PROJECT, INV)
    assert {k: v for k, v in rec.user_summary().items() if k != "results"} == ALL_METRICS
    assert set(states(inv_dir).values()) == {"synced"}


def test_status_shows_a_failed_re_export_after_a_delivery(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    export_offline(inv_dir)
    results = inv_dir / "gsm8k.0" / "artifacts" / "results.yml"
    results.write_text("results: [not, metrics]\n")
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS)
    assert proc.returncode == 1
    proc, rows = cli_json("status", inv_dir)
    ((row),) = rows
    assert row["state"] == "failed" and "results.yml" in row["reason"]
