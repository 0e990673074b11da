"""Online export against the recording W&B backend: what README "What lands in W&B" promises
arrives, field by field and byte by byte; multi_task runs written by separate processes (one
after another and at the same time) end whole; re-exports create nothing new."""

from __future__ import annotations

import json
import shutil
import socket

from nemo_wandb_hook.example import EXAMPLE_MODEL, gsm8k_task
from tests.support.online_checks import (
    ALL_METRICS,
    ENTITY,
    EXAMPLE,
    HANG_GUARD,
    ORG_ARGS,
    PLANTED_SECRETS,
    PROJECT,
    TABLE_COLUMNS,
    assert_artifact_matches_stage,
    assert_complete_multi_task_run,
    eval_artifact_versions,
    export_online,
    per_task_run_id,
    plant_secrets,
    results_table,
    start_cli,
    summary_metrics,
)
from tests.support.results_fixtures import (
    INV,
    LABELS,
    WEBHOOK_AND_EXTRA,
    by_task,
    edit_results,
    expected_per_task_config,
    large_invocation,
    run_cli,
    statuses,
    task_dirs,
)

HOST = socket.gethostname()
MULTI = ["-o", "log_mode=multi_task", "-o", "mode=online"]


def assert_no_secret_in_run(run) -> None:
    recorded = json.dumps([run.config, run.summary]).encode() + b"".join(run.files.values())
    for secret in PLANTED_SECRETS:
        assert secret.encode() not in recorded, secret


# --- per_task ------------------------------------------------------------------------------


def test_per_task_runs_carry_what_the_readme_promises(make_invocation, wandb_backend):
    inv_dir = make_invocation()
    plant_secrets(inv_dir)
    stage = inv_dir / "wandb-export"
    report = export_online(inv_dir, **LABELS)
    assert report.ok, report.as_dict()
    assert statuses(report) == dict.fromkeys(EXAMPLE, "exported")
    assert wandb_backend.runs() == sorted(
        (ENTITY, PROJECT, per_task_run_id(t)) for t in EXAMPLE)

    for index, (dir_name, (benchmark, harness, metrics, nrows)) in enumerate(EXAMPLE.items()):
        run_id = per_task_run_id(dir_name)
        outcome = by_task(report)[dir_name]
        assert (outcome.run_id, outcome.run_path, outcome.offline_dir) == (
            run_id, f"{ENTITY}/{PROJECT}/{run_id}", None)
        run = wandb_backend.run(ENTITY, PROJECT, run_id)
        assert run.name == f"eval-{INV}-{benchmark}"
        assert run.group == INV
        assert run.job_type == "evaluation"
        assert run.tags == ["nightly", "llama"]
        assert run.notes == "weekly regression eval"
        assert run.finished and run.exit_code == 0
        assert run.user_config() == expected_per_task_config(inv_dir, dir_name, index,
                                                             benchmark, harness)
        assert summary_metrics(run) == metrics
        assert run.history == []  # no step= logging: the summary is the record
        columns, rows = results_table(run)
        assert columns == TABLE_COLUMNS
        assert len(rows) == nrows
        assert {r[5] for r in rows} == {v for k, v in metrics.items()
                                        if not k.endswith("_stderr")}
        if benchmark == "gsm8k":
            assert [r[5:] for r in rows if r[4] == "strict-match"] == [[0.7794, 0.0114, 1319]]
        assert all(r[1:3] == [benchmark, harness] for r in rows)
        assert_artifact_matches_stage(wandb_backend, stage, dir_name, benchmark)
        assert run.artifacts_logged.count(f"{INV}_{benchmark}:v0") == 1
        assert_no_secret_in_run(run)


def test_per_task_re_export_creates_no_new_run_or_artifact_version(make_invocation,
                                                                   wandb_backend):
    inv_dir = make_invocation()
    assert export_online(inv_dir).ok
    runs = wandb_backend.runs()
    upserts = {r: wandb_backend.run(*r).upsert_count for r in runs}
    requests = len(wandb_backend.requests)

    again = export_online(inv_dir)
    assert statuses(again) == dict.fromkeys(EXAMPLE, "unchanged")
    assert {t.run_path for t in again.tasks} == {"/".join(r) for r in runs}
    assert len(wandb_backend.requests) == requests  # the ledger: nothing is pushed at all
    assert wandb_backend.runs() == runs
    assert {r: wandb_backend.run(*r).upsert_count for r in runs} == upserts

    # Without the ledger (stage dir lost), a re-export writes the same runs: deterministic
    # run ids, same artifact content, so still one version per artifact.
    shutil.rmtree(inv_dir / "wandb-export")
    third = export_online(inv_dir)
    assert statuses(third) == dict.fromkeys(EXAMPLE, "exported")
    assert wandb_backend.runs() == runs
    for benchmark, *_ in EXAMPLE.values():
        assert len(eval_artifact_versions(wandb_backend, benchmark)) == 1


# --- multi_task ----------------------------------------------------------------------------


def test_multi_task_run_carries_what_the_readme_promises(make_invocation, wandb_backend):
    inv_dir = make_invocation()
    plant_secrets(inv_dir)
    report = export_online(inv_dir, log_mode="multi_task", **LABELS)
    assert report.ok, report.as_dict()
    assert statuses(report) == dict.fromkeys(EXAMPLE, "exported")
    assert {t.run_path for t in report.tasks} == {f"{ENTITY}/{PROJECT}/{INV}"}

    run = assert_complete_multi_task_run(wandb_backend, inv_dir / "wandb-export")
    assert (run.name, run.group, run.job_type) == (f"eval-{INV}", INV, "evaluation")
    assert (run.tags, run.notes) == (["nightly", "llama"], "weekly regression eval")
    config = run.user_config()
    assert config["harnesses"] == ["bigcode-evaluation-harness", "lm-evaluation-harness"]
    assert config["results_dir"] == f"{HOST}:{inv_dir}"
    assert config["tasks"]["gsm8k.1"] == {
        "job_id": f"{INV}.1", "harness": "lm-evaluation-harness", "benchmark": "gsm8k",
        "results_dir": f"{HOST}:{inv_dir / 'gsm8k.1'}", "slurm_job_id": "4242001"}
    assert {k: config[k] for k in WEBHOOK_AND_EXTRA} == WEBHOOK_AND_EXTRA
    assert (config["invocation_id"], config["executor"], config["model_id"]) == (
        INV, "slurm", EXAMPLE_MODEL)
    assert "launcher_command" in config
    assert_no_secret_in_run(run)


def test_multi_task_re_export_and_a_changed_task(make_invocation, wandb_backend):
    inv_dir = make_invocation()
    stage = inv_dir / "wandb-export"
    assert export_online(inv_dir, log_mode="multi_task").ok
    upserts = wandb_backend.run(ENTITY, PROJECT, INV).upsert_count
    creates = wandb_backend.count("CreateArtifact")

    assert statuses(export_online(inv_dir, log_mode="multi_task")) == dict.fromkeys(
        EXAMPLE, "unchanged")
    assert wandb_backend.run(ENTITY, PROJECT, INV).upsert_count == upserts
    assert wandb_backend.count("CreateArtifact") == creates
    assert_complete_multi_task_run(wandb_backend, stage)

    # One task re-run with a new score: only its entry is pushed, its artifact gets v1, and
    # the run still holds every task.
    results = gsm8k_task().results
    results["tasks"]["gsm8k"]["metrics"]["exact_match"]["scores"]["strict-match"]["value"] = 0.9
    edit_results(task_dirs(inv_dir)[1], results)
    report = export_online(inv_dir, log_mode="multi_task")
    assert statuses(report) == {"lm-evaluation-harness.mmlu.0": "unchanged",
                                "gsm8k.1": "exported",
                                "bigcode-evaluation-harness.humaneval.2": "unchanged"}
    assert wandb_backend.runs() == [(ENTITY, PROJECT, INV)]
    run = wandb_backend.run(ENTITY, PROJECT, INV)
    assert summary_metrics(run) == ALL_METRICS | {"gsm8k_exact_match_strict-match": 0.9}
    assert [v.version for v in eval_artifact_versions(wandb_backend, "gsm8k")] == ["v0", "v1"]
    for benchmark in ("mmlu", "humaneval"):
        assert len(eval_artifact_versions(wandb_backend, benchmark)) == 1


def test_multi_task_exported_task_by_task_from_separate_processes(make_invocation,
                                                                  wandb_backend):
    inv_dir = make_invocation()
    seen: dict[str, float] = {}
    for task_dir in task_dirs(inv_dir):
        proc = run_cli("export", task_dir, "--json", *ORG_ARGS, *MULTI)
        assert proc.returncode == 0, proc.stderr
        (outcome,) = json.loads(proc.stdout)["tasks"]
        assert (outcome["task"], outcome["status"], outcome["run_path"]) == (
            task_dir.name, "exported", f"{ENTITY}/{PROJECT}/{INV}")
        seen |= EXAMPLE[task_dir.name][2]
        # every export writes the merged summary of every task exported so far
        assert summary_metrics(wandb_backend.run(ENTITY, PROJECT, INV)) == seen
    assert_complete_multi_task_run(wandb_backend, inv_dir / "wandb-export")


def test_multi_task_six_processes_at_the_same_time_end_in_one_complete_run(make_invocation,
                                                                           wandb_backend):
    tasks = large_invocation(6)
    inv_dir = make_invocation(tasks)
    dirs = task_dirs(inv_dir)
    procs = [start_cli("export", d, "--json", *ORG_ARGS, *MULTI) for d in dirs]
    results = [p.communicate(timeout=HANG_GUARD) for p in procs]
    for d, proc, (out, err) in zip(dirs, procs, results, strict=True):
        assert proc.returncode == 0, f"{d.name}: {err}"
        # The lock holder also reports the other tasks it delivered; a process whose entry
        # another process delivered still reports it, and where it went.
        result = json.loads(out)
        assert result["ok"] is True, err
        mine = [t for t in result["tasks"] if t["task"] == d.name]
        assert [(t["status"], t["run_path"]) for t in mine] == [
            ("exported", f"{ENTITY}/{PROJECT}/{INV}")], err

    assert wandb_backend.runs() == [(ENTITY, PROJECT, INV)]
    run = wandb_backend.run(ENTITY, PROJECT, INV)
    expected = {}
    for i in range(6):
        base, micro = round(0.5 + i / 1000, 4), round(0.4 + i / 1000, 4)
        expected |= {f"bench{i:03d}_score": base, f"bench{i:03d}_score_stderr": 0.01,
                     f"bench{i:03d}_score_micro": micro}
    assert summary_metrics(run) == expected
    _columns, rows = results_table(run)
    assert sorted({r[1] for r in rows}) == [t.benchmark for t in tasks] and len(rows) == 12
    assert run.user_config()["benchmarks"] == [f"bench{i:03d}" for i in range(6)]
    stage = inv_dir / "wandb-export"
    for d, task in zip(dirs, tasks, strict=True):
        versions = eval_artifact_versions(wandb_backend, task.benchmark)
        assert len(versions) == 1, task.benchmark
        assert versions[0].files["results.yml"] == (
            stage / INV / d.name / "results.yml").read_bytes()
