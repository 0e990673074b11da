"""`python -m nemo_wandb_hook export` as a user runs it: exit codes, --json, --dry-run,
--dest local. Exit codes: 0 all exported, 1 a task failed, 2 the command or config is wrong."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from nemo_wandb_hook.example import example_tasks, gsm8k_task, humaneval_task, write_invocation
from tests.support.results_fixtures import (
    INV,
    edit_results,
    files_under,
    offline_run_at,
    run_cli,
    task_dirs,
    write_results_text,
)
from tests.support.wandb_reader import find_offline_runs, user_config

ORG_ARGS = ["-o", "entity=myorg", "-o", "project=evals"]
TASKS = ["lm-evaluation-harness.mmlu.0", "gsm8k.1", "bigcode-evaluation-harness.humaneval.2"]


def outcome_json(proc) -> dict:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def test_export_exit_0_and_summary(make_invocation, isolated_wandb) -> None:
    inv_dir = make_invocation()
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    for name in TASKS:
        line = next(li for li in proc.stderr.splitlines() if li.startswith(name))
        assert "exported" in line and "offline-run-" in line
    assert len(find_offline_runs(isolated_wandb)) == 3


def test_export_json_and_mode_offline_override(make_invocation, isolated_wandb) -> None:
    inv_dir = make_invocation()
    proc = run_cli("export", inv_dir, "--json", "-o", "mode=offline", *ORG_ARGS,
                   "-o", "extra_metadata.team=nlp", "-o", "tags=[nightly]")
    assert proc.returncode == 0, proc.stderr
    result = outcome_json(proc)
    assert result["ok"] is True and result["errors"] == []
    assert [(t["task"], t["status"], t["job_id"]) for t in result["tasks"]] == [
        (name, "exported", f"{INV}.{i}") for i, name in enumerate(TASKS)]
    gsm8k = result["tasks"][1]
    assert gsm8k["run_id"] == f"{INV}-gsm8k_1"
    assert gsm8k["metrics"]["gsm8k_exact_match_strict-match"] == 0.7794
    run = offline_run_at(gsm8k["offline_dir"])
    assert run.tags == ["nightly"]
    assert user_config(run)["team"] == "nlp"
    assert len(find_offline_runs(isolated_wandb)) == 3


def test_without_an_api_key_mode_auto_writes_offline_runs(make_invocation, isolated_wandb):
    inv_dir = make_invocation([gsm8k_task()])
    proc = run_cli("export", inv_dir, "--json", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    (task,) = outcome_json(proc)["tasks"]
    assert task["status"] == "exported" and task["offline_dir"]
    assert "no W&B API key" in proc.stderr


def test_export_by_invocation_id_under_job_dirs(make_invocation, tmp_path) -> None:
    make_invocation()
    proc = run_cli("export", INV, "--job-dirs", tmp_path / "results", "--offline", "--json",
                   *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert [t["task"] for t in outcome_json(proc)["tasks"]] == TASKS


def test_second_export_is_unchanged(make_invocation, isolated_wandb) -> None:
    inv_dir = make_invocation()
    assert run_cli("export", inv_dir, "--offline", *ORG_ARGS).returncode == 0
    pieces = find_offline_runs(isolated_wandb)
    proc = run_cli("export", inv_dir, "--offline", "--json", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert {t["status"] for t in outcome_json(proc)["tasks"]} == {"unchanged"}
    assert find_offline_runs(isolated_wandb) == pieces


def test_a_broken_task_exits_1_naming_it_while_the_others_export(
    make_invocation, isolated_wandb
) -> None:
    inv_dir = make_invocation()
    broken = task_dirs(inv_dir)[1]
    write_results_text(broken, "results:\n  tasks: {gsm8k: {metrics: {acc: {scores: "
                               "{acc: {value: high}}}}}}\n")
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS)
    assert proc.returncode == 1
    assert "gsm8k.1: " in proc.stderr
    assert "value 'high' is not a number" in proc.stderr
    failed = next(li for li in proc.stderr.splitlines() if li.startswith("gsm8k.1 "))
    assert "failed" in failed
    assert len(find_offline_runs(isolated_wandb)) == 2

    proc = run_cli("export", inv_dir, "--offline", "--json", *ORG_ARGS)
    assert proc.returncode == 1
    result = outcome_json(proc)
    assert result["ok"] is False
    assert {t["task"]: t["status"] for t in result["tasks"]} == {
        TASKS[0]: "unchanged", TASKS[1]: "failed", TASKS[2]: "unchanged"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "projcet=evals"], "unknown key 'projcet'; did you mean 'project'?"),
        (["-o", "log_artifacts=maybe"], "log_artifacts: 'maybe' is not valid"),
        (["-o", "log_mode=both"], "log_mode: 'both' is not valid"),
        (["-o", "entity"], "-o 'entity': expected KEY=VALUE"),
        (["-o", "redact=[\"(unclosed\"]"], "redact pattern '(unclosed' is not a valid regex"),
    ],
)
def test_config_errors_exit_2(make_invocation, args: list[str], message: str) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS, *args)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: " in proc.stderr
    assert message in proc.stderr
    assert not list(inv_dir.glob("wandb-export/*"))  # nothing staged or spooled


def test_missing_entity_exits_2_saying_where_it_looked(make_invocation) -> None:
    inv_dir = make_invocation([gsm8k_task()], wandb={})
    proc = run_cli("export", inv_dir, "--offline", "-o", "project=evals")
    assert proc.returncode == 2
    assert "configuration error: missing entity:" in proc.stderr
    assert str(inv_dir / "gsm8k.0" / "artifacts") in proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entity: myorg\nproject: [evals\n", "is not valid YAML"),
        ("- entity\n- myorg\n", "expected a mapping of settings, got list"),
        ("export:\n  wandb:\n    entity: myorg\n    project: evals\n    grup: g\n",
         "unknown key 'grup'; did you mean 'group'?"),
    ],
)
def test_bad_config_file_exits_2(make_invocation, tmp_path, text: str, message: str) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    config = tmp_path / "wandb.yaml"
    config.write_text(text)
    proc = run_cli("export", inv_dir, "--offline", "--config", config)
    assert proc.returncode == 2
    assert str(config) in proc.stderr and message in proc.stderr


def test_config_file_in_the_launchers_export_shape(make_invocation, tmp_path) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"export": {"wandb": {
        "entity": "file-org", "project": "file-proj", "job_type": "from-file"}}}))
    proc = run_cli("export", inv_dir, "--offline", "--json", "--config", config,
                   "-o", "job_type=from-o")
    assert proc.returncode == 0, proc.stderr
    (task,) = outcome_json(proc)["tasks"]
    run = offline_run_at(task["offline_dir"])
    assert (run.entity, run.project, run.job_type) == ("file-org", "file-proj", "from-o")


def test_unknown_target_exits_2_naming_it(tmp_path) -> None:
    (tmp_path / "results").mkdir()
    proc = run_cli("export", "deadbeef00112233", "--job-dirs", tmp_path / "results",
                   "--offline", *ORG_ARGS)
    assert proc.returncode == 2  # a target that names nothing is a usage error
    assert "error: deadbeef00112233: no directory found; searched exec DB" in proc.stderr


def test_ambiguous_target_exits_2_listing_the_matches(tmp_path) -> None:
    root = tmp_path / "results"
    first = write_invocation(root, example_tasks(), timestamp="20261204_120000")
    second = write_invocation(root, example_tasks(), timestamp="20261205_090000")
    proc = run_cli("export", INV, "--job-dirs", root, "--offline", "--json", *ORG_ARGS)
    assert proc.returncode == 2
    result = outcome_json(proc)
    assert result["ok"] is False and result["tasks"] == []
    assert result["errors"] == [f"{INV}: ambiguous, matches {first}, {second}"]
    assert not (first / "wandb-export").exists() and not (second / "wandb-export").exists()


def test_unwritable_explicit_stage_dir_exits_1_naming_it(make_invocation, tmp_path) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    (tmp_path / "blocker").write_text("a file, so nothing can be created below it\n")
    stage = tmp_path / "blocker" / "stage"
    proc = run_cli("export", inv_dir, "--offline", "--json", "--stage-dir", stage, *ORG_ARGS)
    assert proc.returncode == 1
    (task,) = outcome_json(proc)["tasks"]
    assert task["status"] == "failed"
    assert f"into {stage / INV / 'gsm8k.0'}" in task["error"]


# --- --dry-run -------------------------------------------------------------------------------


def test_dry_run_json_lists_runs_keys_and_files_and_touches_nothing(
    make_invocation, tmp_path, isolated_wandb
) -> None:
    inv_dir = make_invocation()
    before = sorted(files_under(tmp_path))
    proc = run_cli("export", inv_dir, "--dry-run", "--json", *ORG_ARGS,
                   "-o", "log_mode=multi_task")
    assert proc.returncode == 0, proc.stderr
    assert sorted(files_under(tmp_path)) == before
    assert not (inv_dir / "wandb-export").exists()
    assert find_offline_runs(isolated_wandb) == []
    tasks = outcome_json(proc)["tasks"]
    assert [t["status"] for t in tasks] == ["dry-run"] * 3
    assert {t["run_path"] for t in tasks} == {f"myorg/evals/{INV}"}
    assert sorted(tasks[2]["metrics"]) == ["humaneval_pass@1", "humaneval_pass@10",
                                           "humaneval_pass@10_stderr"]
    assert sorted(tasks[1]["files"]) == ["config.yaml", "eval_factory_metrics.json",
                                         "metadata.yaml", "results.yml", "run_config.yml"]


# --- --dest local ------------------------------------------------------------------------------


def local_rows(inv_dir: Path) -> tuple[list[dict], list[dict]]:
    out = inv_dir / "wandb-export" / INV
    rows = json.loads((out / "processed_results.json").read_text())["rows"]
    with (out / "processed_results.csv").open(newline="") as fh:
        return rows, list(csv.DictReader(fh))


def test_dest_local_writes_processed_results_upserted(make_invocation, isolated_wandb) -> None:
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    proc = run_cli("export", inv_dir, "--dest", "local", "--json", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert {t["status"] for t in outcome_json(proc)["tasks"]} == {"staged"}
    assert find_offline_runs(isolated_wandb) == []  # local only: no W&B run
    rows, csv_rows = local_rows(inv_dir)
    assert len(rows) == 7 and len(csv_rows) == 7
    strict = next(r for r in rows if r["metric"] == "gsm8k_exact_match_strict-match")
    assert strict == {"invocation_id": INV, "job_id": f"{INV}.0", "task": "gsm8k.0",
                      "harness": "lm-evaluation-harness", "benchmark": "gsm8k",
                      "metric": "gsm8k_exact_match_strict-match", "value": 0.7794}
    assert [r["metric"] for r in csv_rows] == [r["metric"] for r in rows]
    assert float(csv_rows[rows.index(strict)]["value"]) == 0.7794

    # again, with one value changed: same rows, that one updated, no duplicates
    results = gsm8k_task().results
    results["tasks"]["gsm8k"]["metrics"]["exact_match"]["scores"]["strict-match"]["value"] = 0.81
    edit_results(task_dirs(inv_dir)[0], results)
    proc = run_cli("export", inv_dir, "--dest", "local", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    again, csv_again = local_rows(inv_dir)
    assert len(again) == 7 and len(csv_again) == 7
    assert len({(r["job_id"], r["metric"]) for r in again}) == 7
    changed = next(r for r in again if r["metric"] == "gsm8k_exact_match_strict-match")
    assert changed["value"] == 0.81


def test_dest_local_and_wandb_together(make_invocation, isolated_wandb) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    proc = run_cli("export", inv_dir, "--dest", "local", "--dest", "wandb", "--offline",
                   "--json", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert [t["status"] for t in outcome_json(proc)["tasks"]] == ["exported"]
    assert len(local_rows(inv_dir)[0]) == 4
    assert len(find_offline_runs(isolated_wandb)) == 1


def test_job_dirs_from_a_launcher_export_config_locate_the_invocation(tmp_path) -> None:
    """A launcher export config with its own `job_dirs` works without --job-dirs."""
    root = tmp_path / "results"
    write_invocation(root, example_tasks())
    config = tmp_path / "export_config.yml"
    config.write_text(yaml.safe_dump({"export": {"wandb": {
        "entity": "myorg", "project": "evals", "job_dirs": [str(root)], "only_required": True}}}))
    proc = run_cli("export", f"{INV}.1", "--config", config, "--offline", "--json")
    assert proc.returncode == 0, proc.stderr
    (task,) = outcome_json(proc)["tasks"]
    assert (task["job_id"], task["status"]) == (f"{INV}.1", "exported")
