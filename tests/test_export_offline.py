"""The whole pipeline with the real wandb SDK in offline mode, read back field by field."""

from __future__ import annotations

import json
import socket

import pytest

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import EXAMPLE_MODEL, gsm8k_task, humaneval_task, mmlu_task
from nemo_wandb_hook.metrics import TABLE_COLUMNS
from nemo_wandb_hook.spool import Spool
from tests.support.results_fixtures import (
    GSM8K,
    HUMANEVAL,
    INV,
    LABELS,
    MMLU,
    ORG,
    by_task,
    edit_results,
    expected_per_task_config,
    files_under,
    large_invocation,
    nested_groups_task,
    offline_run_of,
    several_harnesses,
    single_metric_task,
    statuses,
    task_dirs,
    write_results_text,
)
from tests.support.wandb_reader import find_offline_runs, read_table, user_config

HOST = socket.gethostname()

MMLU_PRO = {
    "mmlu_pro_acc": 0.55, "mmlu_pro_acc_stderr": 0.004,
    "mmlu_pro_stem_acc": 0.5, "mmlu_pro_stem_acc_stderr": 0.008,
    "mmlu_pro_stem_physics_acc": 0.47,
    "mmlu_pro_other_acc": 0.61, "mmlu_pro_other_acc_stderr": 0.01,
    "mmlu_pro_law_acc": 0.33, "mmlu_pro_law_acc_stderr": 0.014,
    "mmlu_pro_math_acc": 0.58, "mmlu_pro_math_acc_stderr": 0.013,
}
# task dir -> (benchmark, harness, flat metrics) for several_harnesses()
SEVERAL = {
    "lm-evaluation-harness.mmlu.0": ("mmlu", "lm-evaluation-harness", MMLU),
    "gsm8k.1": ("gsm8k", "lm-evaluation-harness", GSM8K),
    "bigcode-evaluation-harness.humaneval.2": ("humaneval", "bigcode-evaluation-harness",
                                               HUMANEVAL),
    "lm-evaluation-harness.mmlu_pro.3": ("mmlu_pro", "lm-evaluation-harness", MMLU_PRO),
}
ARTIFACT_FILES = ["config.yaml", "eval_factory_metrics.json", "metadata.yaml", "results.yml",
                  "run_config.yml"]


def summary_metrics(run) -> dict:
    """The flat metric keys of a run summary: without wandb's `_...` and the results table."""
    assert run.summary["results"]["_type"] == "table-file"
    return {k: v for k, v in run.summary.items() if not k.startswith("_") and k != "results"}


def eval_artifacts(run) -> dict:
    return {a.name: a for a in run.artifacts if a.type == "evaluation_result"}


def export(target, **config):
    return export_results(str(target), config={**ORG, **config}, offline=True)


# --- per_task ------------------------------------------------------------------------------


def test_per_task_one_offline_run_per_task_field_by_field(make_invocation, isolated_wandb):
    inv_dir = make_invocation(several_harnesses())
    report = export(inv_dir, **LABELS)
    assert report.ok, report.as_dict()
    assert statuses(report) == dict.fromkeys(SEVERAL, "exported")
    assert len(find_offline_runs(isolated_wandb)) == 4

    for index, (dir_name, (benchmark, harness, metrics)) in enumerate(SEVERAL.items()):
        outcome = by_task(report)[dir_name]
        run = offline_run_of(outcome)
        run_id = f"{INV}-{dir_name.replace('.', '_')}"
        assert (outcome.run_id, run.run_id) == (run_id, run_id)
        assert outcome.job_id == f"{INV}.{index}"
        assert outcome.metrics == metrics
        assert (run.entity, run.project) == ("myorg", "evals")
        assert run.name == f"eval-{INV}-{benchmark}"
        assert run.group == INV
        assert run.job_type == "evaluation"
        assert run.tags == ["nightly", "llama"]
        assert run.notes == "weekly regression eval"
        assert user_config(run) == expected_per_task_config(inv_dir, dir_name, index,
                                                            benchmark, harness)
        assert summary_metrics(run) == metrics
        columns, rows = read_table(run, "results")
        assert columns == TABLE_COLUMNS
        assert {r[5] for r in rows} == {v for k, v in metrics.items() if
                                        not k.endswith("_stderr")}

        (artifact,) = eval_artifacts(run).values()
        assert artifact.name == f"{INV}_{benchmark}"
        assert sorted(artifact.files) == ARTIFACT_FILES
        assert artifact.metadata["invocation_id"] == INV
        assert (artifact.metadata["task"], artifact.metadata["benchmark"],
                artifact.metadata["harness"]) == (dir_name, benchmark, harness)
        results = (inv_dir / dir_name / "artifacts" / "results.yml").read_bytes()
        assert artifact.files["results.yml"].read_bytes() == results


def test_per_task_with_log_logs_uploads_the_logs(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    report = export(inv_dir, copy_logs=True)
    assert report.ok
    (artifact,) = eval_artifacts(offline_run_of(report.tasks[0])).values()
    assert sorted(artifact.files) == sorted(
        [*ARTIFACT_FILES, "logs/client-4242000.log", "logs/slurm-4242000.log"])
    assert artifact.files["logs/client-4242000.log"].read_bytes() == b"requests sent: 200\n"


def test_log_artifacts_false_logs_no_artifact(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    report = export(inv_dir, log_artifacts=False)
    assert report.ok
    run = offline_run_of(report.tasks[0])
    assert eval_artifacts(run) == {}
    assert summary_metrics(run) == GSM8K


def test_name_group_and_job_type_can_be_set(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    report = export(inv_dir, name="my-run", group="sweep-7", job_type="nightly")
    run = offline_run_of(report.tasks[0])
    assert (run.name, run.group, run.job_type) == ("my-run", "sweep-7", "nightly")
    assert run.tags == [] and run.notes == ""


def test_config_from_the_tasks_launcher_config(make_invocation):
    inv_dir = make_invocation([humaneval_task()], wandb={
        "entity": "launcher-org", "project": "launcher-proj", "tags": ["auto"],
        "log_metrics": ["pass@1"]})
    report = export_results(str(inv_dir), offline=True)
    assert report.ok
    run = offline_run_of(report.tasks[0])
    assert (run.entity, run.project, run.tags) == ("launcher-org", "launcher-proj", ["auto"])
    assert summary_metrics(run) == {"humaneval_pass@1": 0.6524}


# --- multi_task ------------------------------------------------------------------------------


def test_multi_task_one_run_for_the_invocation(make_invocation, isolated_wandb):
    inv_dir = make_invocation(several_harnesses())
    report = export(inv_dir, log_mode="multi_task", extra_metadata={"team": "nlp"})
    assert report.ok, report.as_dict()
    assert {t.run_id for t in report.tasks} == {INV}
    assert len({t.offline_dir for t in report.tasks}) == 1
    assert len(find_offline_runs(isolated_wandb)) == 1
    run = offline_run_of(report.tasks[0])
    assert (run.run_id, run.name, run.group, run.job_type) == (
        INV, f"eval-{INV}", INV, "evaluation")
    config = user_config(run)
    assert config["benchmarks"] == ["gsm8k", "humaneval", "mmlu", "mmlu_pro"]
    assert config["harnesses"] == ["bigcode-evaluation-harness", "lm-evaluation-harness"]
    assert sorted(config["tasks"]) == sorted(SEVERAL)
    assert config["tasks"]["gsm8k.1"] == {
        "job_id": f"{INV}.1", "harness": "lm-evaluation-harness", "benchmark": "gsm8k",
        "results_dir": f"{HOST}:{inv_dir / 'gsm8k.1'}", "slurm_job_id": "4242001"}
    assert config["results_dir"] == f"{HOST}:{inv_dir}"
    assert (config["invocation_id"], config["executor"], config["model_id"], config["team"]) == (
        INV, "slurm", EXAMPLE_MODEL, "nlp")
    assert summary_metrics(run) == {**MMLU, **GSM8K, **HUMANEVAL, **MMLU_PRO}
    assert sorted(eval_artifacts(run)) == sorted(f"{INV}_{b}" for b, _, _ in SEVERAL.values())


def test_multi_task_exported_one_task_at_a_time_merges_state(make_invocation, isolated_wandb):
    inv_dir = make_invocation([mmlu_task(), gsm8k_task(), humaneval_task()])
    expected: dict = {}
    benchmarks: list[str] = []
    for number, (task_dir, (benchmark, metrics)) in enumerate(zip(task_dirs(inv_dir), [
        ("mmlu", MMLU), ("gsm8k", GSM8K), ("humaneval", HUMANEVAL),
    ], strict=True), start=1):
        report = export(task_dir, log_mode="multi_task")
        assert statuses(report) == {task_dir.name: "exported"}
        expected.update(metrics)
        benchmarks = sorted([*benchmarks, benchmark])
        pieces = find_offline_runs(isolated_wandb)
        assert len(pieces) == number
        latest = offline_run_of(report.tasks[0])
        assert latest.run_dir == pieces[-1]
        assert latest.run_id == INV
        assert summary_metrics(latest) == expected  # every task exported so far
        assert user_config(latest)["benchmarks"] == benchmarks
        assert sorted(user_config(latest)["tasks"]) == sorted(
            d.name for d in task_dirs(inv_dir)[:number])
        assert sorted(eval_artifacts(latest)) == [f"{INV}_{benchmark}"]  # only the new one
        _, rows = read_table(latest, "results")
        assert {r[1] for r in rows} == set(benchmarks)


def test_multi_task_same_key_from_two_tasks_keeps_both(make_invocation):
    inv_dir = make_invocation([
        single_metric_task("mmlu", "mmlu", "acc", 0.5, harness="simple-evals"),
        single_metric_task("mmlu", "mmlu", "acc", 0.6, harness="lm-evaluation-harness"),
    ])
    report = export(inv_dir, log_mode="multi_task")
    assert report.ok
    run = offline_run_of(report.tasks[-1])
    assert summary_metrics(run) == {
        "mmlu_acc": 0.5, "mmlu_acc_stderr": 0.01,  # same stderr: one key
        "mmlu_acc__task1": 0.6,
    }
    assert user_config(run)["harnesses"] == ["lm-evaluation-harness", "simple-evals"]


def test_multi_task_run_id_and_name_can_be_set(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    report = export(inv_dir, log_mode="multi_task", run_id="rerun-2", name="llama eval")
    run = offline_run_of(report.tasks[0])
    assert (run.run_id, run.name, run.group) == ("rerun-2", "llama eval", INV)
    assert {t.run_id for t in report.tasks} == {"rerun-2"}


def test_invocation_with_24_tasks_in_one_multi_task_run(make_invocation, isolated_wandb):
    specs = large_invocation(24)
    inv_dir = make_invocation(specs)
    report = export(inv_dir, log_mode="multi_task")
    assert report.ok, report.as_dict()
    assert len(report.tasks) == 24 and set(statuses(report).values()) == {"exported"}
    assert len(find_offline_runs(isolated_wandb)) == 1
    run = offline_run_of(report.tasks[0])
    expected = {}
    for i in range(24):
        bench = f"bench{i:03d}"
        expected |= {f"{bench}_score": round(0.5 + i / 1000, 4), f"{bench}_score_stderr": 0.01,
                     f"{bench}_score_micro": round(0.4 + i / 1000, 4)}
    assert summary_metrics(run) == expected
    assert user_config(run)["benchmarks"] == [f"bench{i:03d}" for i in range(24)]
    assert user_config(run)["harnesses"] == ["simple-evals"]
    assert len(eval_artifacts(run)) == 24
    assert len(read_table(run, "results")[1]) == 48


def test_invocation_with_24_tasks_per_task_dry_run(make_invocation):
    inv_dir = make_invocation(large_invocation(24))
    report = export_results(str(inv_dir), config=ORG, dry_run=True)
    assert report.ok
    run_ids = [t.run_id for t in report.tasks]
    assert run_ids == [f"{INV}-simple-evals_bench{i:03d}_{i}" for i in range(24)]
    assert not (inv_dir / "wandb-export").exists()


# --- idempotency -------------------------------------------------------------------------------


@pytest.mark.parametrize("log_mode", ["per_task", "multi_task"])
def test_exporting_twice_changes_nothing(make_invocation, isolated_wandb, log_mode):
    inv_dir = make_invocation()
    first = export(inv_dir, log_mode=log_mode)
    assert set(statuses(first).values()) == {"exported"}
    pieces = find_offline_runs(isolated_wandb)

    second = export(inv_dir, log_mode=log_mode)
    assert second.ok
    assert statuses(second) == dict.fromkeys(statuses(first), "unchanged")
    assert find_offline_runs(isolated_wandb) == pieces
    assert {t.task: (t.run_id, t.offline_dir) for t in second.tasks} == {
        t.task: (t.run_id, t.offline_dir) for t in first.tasks}


def test_a_changed_value_is_exported_again(make_invocation, isolated_wandb):
    inv_dir = make_invocation([mmlu_task(), gsm8k_task()])
    first = export(inv_dir)
    gsm8k_dir = task_dirs(inv_dir)[1]
    results = gsm8k_task().results
    results["tasks"]["gsm8k"]["metrics"]["exact_match"]["scores"]["strict-match"]["value"] = 0.8
    edit_results(gsm8k_dir, results)

    second = export(inv_dir)
    assert statuses(second) == {"lm-evaluation-harness.mmlu.0": "unchanged",
                                "gsm8k.1": "exported"}
    assert len(find_offline_runs(isolated_wandb)) == 3
    again = by_task(second)["gsm8k.1"]
    assert again.run_id == by_task(first)["gsm8k.1"].run_id
    assert again.offline_dir != by_task(first)["gsm8k.1"].offline_dir
    assert summary_metrics(offline_run_of(again)) == {
        **GSM8K, "gsm8k_exact_match_strict-match": 0.8}


def test_a_changed_value_updates_the_multi_task_run(make_invocation, isolated_wandb):
    inv_dir = make_invocation([mmlu_task(), gsm8k_task()])
    export(inv_dir, log_mode="multi_task")
    results = mmlu_task().results
    results["groups"]["mmlu"]["metrics"]["acc"]["scores"]["acc"]["value"] = 0.7
    edit_results(task_dirs(inv_dir)[0], results)

    second = export(inv_dir, log_mode="multi_task")
    assert statuses(second) == {"lm-evaluation-harness.mmlu.0": "exported",
                                "gsm8k.1": "unchanged"}
    pieces = find_offline_runs(isolated_wandb)
    assert len(pieces) == 2
    latest = offline_run_of(by_task(second)["lm-evaluation-harness.mmlu.0"])
    assert (latest.run_dir, latest.run_id) == (pieces[-1], INV)
    assert summary_metrics(latest) == {**MMLU, "mmlu_acc": 0.7, **GSM8K}
    assert sorted(eval_artifacts(latest)) == [f"{INV}_mmlu"]


def test_the_ledger_records_each_delivery(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    report = export(inv_dir)
    spool = Spool(inv_dir / "wandb-export")
    delivered = {d.entry.task: d for d in spool.all_deliveries()}
    assert sorted(delivered) == sorted(statuses(report))
    for outcome in report.tasks:
        d = delivered[outcome.task]
        assert (d.mode, d.location) == ("offline", outcome.offline_dir)
        assert d.entry.metrics == outcome.metrics
    assert spool.pending_runs() == []


# --- the Python API --------------------------------------------------------------------------


def test_export_results_api_by_invocation_id(make_invocation, tmp_path):
    make_invocation()
    root = tmp_path / "results"
    report = export_results(INV, dest="wandb",
                            config={"entity": "myorg", "project": "evals",
                                    "log_mode": "multi_task"},
                            job_dirs=[root], offline=True)
    assert report.ok and report.errors == []
    assert [(t.task, t.job_id, t.status, t.run_id, t.error) for t in report.tasks] == [
        ("lm-evaluation-harness.mmlu.0", f"{INV}.0", "exported", INV, None),
        ("gsm8k.1", f"{INV}.1", "exported", INV, None),
        ("bigcode-evaluation-harness.humaneval.2", f"{INV}.2", "exported", INV, None),
    ]
    assert by_task(report)["gsm8k.1"].metrics == GSM8K
    assert sorted(by_task(report)["gsm8k.1"].files) == ARTIFACT_FILES
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["ok"] is True
    assert [t["status"] for t in as_json["tasks"]] == ["exported"] * 3


# --- broken input: one task fails, the others are exported ------------------------------------

BROKEN = {
    "malformed results.yml": ("results: {tasks: [unclosed\n", "results.yml is not valid YAML"),
    "missing results.yml": (None, "results.yml does not exist"),
    "empty results.yml": ("", "results.yml is empty"),
    "missing value": ("results:\n  tasks:\n    gsm8k:\n      metrics:\n        acc:\n"
                      "          scores:\n            acc: {stats: {stderr: 0.1}}\n",
                      "results.tasks.gsm8k.metrics.acc.scores.acc: missing 'value'"),
    "non-numeric value": ("results:\n  tasks:\n    gsm8k:\n      metrics:\n        acc:\n"
                          "          scores:\n            acc: {value: n/a}\n",
                          "value 'n/a' is not a number"),
    "empty results": ("results: {groups: {}, tasks: {}}\n", "holds no metrics"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_task_fails_naming_why_while_the_others_export(make_invocation, case):
    content, reason = BROKEN[case]
    inv_dir = make_invocation([mmlu_task(), gsm8k_task(), humaneval_task()])
    broken = task_dirs(inv_dir)[1]
    if content is None:
        (broken / "artifacts" / "results.yml").unlink()
    else:
        write_results_text(broken, content)
    report = export(inv_dir)
    assert not report.ok
    assert statuses(report) == {"lm-evaluation-harness.mmlu.0": "exported",
                                "gsm8k.1": "failed",
                                "bigcode-evaluation-harness.humaneval.2": "exported"}
    failed = by_task(report)["gsm8k.1"]
    assert str(broken / "artifacts" / "results.yml") in failed.error
    assert reason in failed.error
    assert (failed.run_id, failed.offline_dir) == (None, None)
    humaneval = by_task(report)["bigcode-evaluation-harness.humaneval.2"]
    assert summary_metrics(offline_run_of(humaneval)) == HUMANEVAL
    assert report.failed == [failed]


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_touches_nothing_and_says_what_it_would_do(make_invocation, tmp_path):
    inv_dir = make_invocation([gsm8k_task(), nested_groups_task()])
    before = sorted(files_under(tmp_path))
    report = export_results(str(inv_dir), config={**ORG, "log_logs": True}, dry_run=True,
                            offline=True)
    assert report.ok
    assert sorted(files_under(tmp_path)) == before
    assert not (inv_dir / "wandb-export").exists()
    gsm8k = by_task(report)["gsm8k.0"]
    assert gsm8k.status == "dry-run"
    assert gsm8k.run_path == f"myorg/evals/{INV}-gsm8k_0"
    assert gsm8k.metrics == GSM8K
    assert gsm8k.files == ["results.yml", "run_config.yml", "metadata.yaml",
                           "eval_factory_metrics.json", "config.yaml",
                           "logs/client-4242000.log", "logs/slurm-4242000.log"]
    assert by_task(report)["lm-evaluation-harness.mmlu_pro.1"].metrics == MMLU_PRO


def test_export_inside_a_slurm_job_keeps_each_tasks_own_job_id(make_invocation, monkeypatch):
    """`export` run from some Slurm job (a login-node allocation, a dependency job) must not
    stamp that job's ids on tasks other jobs ran; each task keeps what its directory records."""
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "999990")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    report = export(make_invocation([gsm8k_task(), humaneval_task()]))
    for index, task in enumerate(report.tasks):
        config = user_config(offline_run_of(task))
        assert config["slurm_job_id"] == str(4242000 + index)
        assert "slurm_array_job_id" not in config and "slurm_array_task_id" not in config
