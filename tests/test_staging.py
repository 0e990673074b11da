"""Staging: the right files, redacted, atomically; never caches, databases or secrets files;
never what a symlink leads to outside the task; a stage dir that cannot be written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import gsm8k_task, humaneval_task
from nemo_wandb_hook.redaction import Redactor
from nemo_wandb_hook.results import locate
from nemo_wandb_hook.staging import StageError, default_stage_dir, planned_files, stage_task
from tests.support.results_fixtures import (
    INV,
    ORG,
    by_task,
    files_containing,
    files_under,
    offline_run_of,
    staged_files,
    statuses,
    task_dirs,
)

ARTIFACTS = ["config.yaml", "eval_factory_metrics.json", "metadata.yaml", "results.yml",
             "run_config.yml"]


def stage(task_dir: Path, stage_dir: Path, log_logs: bool = False):
    (loc,) = locate(str(task_dir))
    return stage_task(loc, stage_dir, log_logs, Redactor())


def test_stages_the_launcher_artifacts_and_a_manifest(make_invocation, tmp_path: Path) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    staged = stage(task_dir, tmp_path / "stage")
    assert staged.directory == tmp_path / "stage" / INV / "gsm8k.0"
    assert sorted(f.path for f in staged.files) == ARTIFACTS
    assert staged_files(staged.directory) == sorted([*ARTIFACTS, "manifest.json"])
    # never: the cache dir, the *.db, progress, run.sub, .secrets.env, logs (log_logs off)
    for f in staged.files:
        data = (staged.directory / f.path).read_bytes()
        assert (f.size, f.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    manifest = json.loads((staged.directory / "manifest.json").read_text())
    assert manifest["task_dir"] == str(task_dir)
    assert manifest["files"] == [
        {"path": f.path, "size": f.size, "sha256": f.sha256} for f in staged.files
    ]


def test_config_yml_is_staged_as_config_yaml(make_invocation, tmp_path: Path) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    staged = stage(task_dir, tmp_path / "stage")
    source = (task_dir / "artifacts" / "config.yml").read_bytes()
    assert (staged.directory / "config.yaml").read_bytes() == source  # nothing to redact


def test_config_yaml_is_made_from_metadata_when_config_yml_is_absent(
    make_invocation, tmp_path: Path
) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()], with_auto_export_files=False))
    staged = stage(task_dir, tmp_path / "stage")
    assert sorted(f.path for f in staged.files) == ARTIFACTS
    config = (staged.directory / "config.yaml").read_text()
    assert "auto_export" in config and "model_id: meta/llama-3.1-8b-instruct" in config


def test_logs_with_log_logs_without_secrets_caches_or_databases(
    make_invocation, tmp_path: Path
) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    logs = task_dir / "logs"
    (logs / "sub").mkdir()
    (logs / "sub" / "eval.log").write_text("nested\n")
    (logs / ".secrets.env").write_text("HF_TOKEN=x\n")
    (logs / "cache").mkdir()
    (logs / "cache" / "c.log").write_text("cached\n")
    (logs / "requests.db").write_bytes(b"SQLite format 3\x00")
    (logs / "run.lock").write_text("")
    staged = stage(task_dir, tmp_path / "stage", log_logs=True)
    assert sorted(f.path for f in staged.files) == sorted([
        *ARTIFACTS, "logs/client-4242000.log", "logs/slurm-4242000.log", "logs/sub/eval.log",
    ])


@pytest.mark.parametrize("with_auto_export_files", [True, False])
def test_dry_run_plan_lists_what_staging_copies(
    make_invocation, tmp_path: Path, with_auto_export_files: bool
) -> None:
    inv_dir = make_invocation([gsm8k_task()], with_auto_export_files=with_auto_export_files)
    (task_dir,) = task_dirs(inv_dir)
    (loc,) = locate(str(task_dir))
    staged = stage_task(loc, tmp_path / "stage", True, Redactor())
    assert sorted(planned_files(loc, True)) == sorted(f.path for f in staged.files)


def test_restaging_replaces_atomically_and_leaves_no_temporaries(
    make_invocation, tmp_path: Path
) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    first = stage(task_dir, tmp_path / "stage")
    (task_dir / "artifacts" / "eval_factory_metrics.json").write_text('{"changed": 1}')
    second = stage(task_dir, tmp_path / "stage")
    assert second.directory == first.directory
    assert (second.directory / "eval_factory_metrics.json").read_text() == '{"changed": 1}'
    assert second.digest != first.digest
    assert sorted(p.name for p in (tmp_path / "stage" / INV).iterdir()) == ["gsm8k.0"]


# --- symlinks ----------------------------------------------------------------------------------


def plant_outside_links(task_dir: Path, outside: Path) -> str:
    """Links from the task dir to files outside it; returns the text those files hold."""
    marker = "OUTSIDE-THE-TASK-DIR-do-not-upload"
    outside.mkdir()
    (outside / "private.json").write_text(json.dumps({"note": marker}))
    (outside / "dir").mkdir()
    (outside / "dir" / "other.log").write_text(marker)
    metrics = task_dir / "artifacts" / "eval_factory_metrics.json"
    metrics.unlink()
    metrics.symlink_to(outside / "private.json")
    (task_dir / "logs" / "outside.log").symlink_to(outside / "private.json")
    (task_dir / "logs" / "linked-dir").symlink_to(outside / "dir", target_is_directory=True)
    (task_dir / "logs" / "progress.log").symlink_to(task_dir / "artifacts" / "progress")
    return marker


def test_symlinks_leading_outside_the_task_are_not_staged(
    make_invocation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    marker = plant_outside_links(task_dir, tmp_path / "outside")
    with caplog.at_level(logging.WARNING):
        staged = stage(task_dir, tmp_path / "stage", log_logs=True)
    paths = sorted(f.path for f in staged.files)
    assert "eval_factory_metrics.json" not in paths
    assert "logs/outside.log" not in paths
    assert not any(p.startswith("logs/linked-dir") for p in paths)
    assert "logs/progress.log" in paths  # a link that stays inside the task is fine
    assert "leads outside the task directory" in caplog.text
    assert files_containing(tmp_path / "stage", marker) == []


def test_symlinks_leading_outside_are_not_uploaded(make_invocation, tmp_path: Path) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    (task_dir,) = task_dirs(inv_dir)
    marker = plant_outside_links(task_dir, tmp_path / "outside")
    report = export_results(str(inv_dir), config={**ORG, "log_logs": True}, offline=True)
    assert report.ok, report.as_dict()
    run = offline_run_of(by_task(report)["gsm8k.0"])
    (artifact,) = [a for a in run.artifacts if a.type == "evaluation_result"]
    assert sorted(artifact.files) == sorted([
        "config.yaml", "metadata.yaml", "results.yml", "run_config.yml",
        "logs/client-4242000.log", "logs/slurm-4242000.log", "logs/progress.log",
    ])
    leaked = files_containing(tmp_path, marker, exclude=[tmp_path / "outside"])
    assert leaked == []


# --- where staging goes ----------------------------------------------------------------------


def obstruct(path: Path) -> None:
    """Make `path` impossible to create as a directory, even for root (permission bits do not
    bind root, and these tests run as root in CI): a regular file stands in its place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory\n")


def test_default_stage_dir_is_inside_the_invocation(make_invocation) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    assert default_stage_dir(inv_dir) == inv_dir / "wandb-export"
    assert (inv_dir / "wandb-export").is_dir()
    assert list((inv_dir / "wandb-export").iterdir()) == []  # its write probe is gone


def test_unwritable_default_stage_dir_falls_back_to_the_cache_dir(
    make_invocation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    obstruct(inv_dir / "wandb-export")
    with caplog.at_level(logging.WARNING):
        report = export_results(str(inv_dir), config=ORG, offline=True)
    assert report.ok, report.as_dict()
    fallback = tmp_path / "home" / ".cache" / "nemo-wandb-hook" / inv_dir.name
    assert f"cannot write {inv_dir / 'wandb-export'}" in caplog.text
    assert f"staging in {fallback} instead" in caplog.text
    assert staged_files(fallback / INV / "gsm8k.0") == sorted([*ARTIFACTS, "manifest.json"])
    assert (fallback / "spool" / "done").is_dir()
    assert set(statuses(report).values()) == {"exported"}


def test_explicit_unwritable_stage_dir_fails_each_task_naming_the_dir(
    make_invocation, tmp_path: Path
) -> None:
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    blocker = tmp_path / "blocker"
    obstruct(blocker)
    stage_dir = blocker / "stage"
    report = export_results(str(inv_dir), config=ORG, offline=True, stage_dir=stage_dir)
    assert not report.ok
    assert statuses(report) == {"gsm8k.0": "failed", "bigcode-evaluation-harness.humaneval.1":
                                "failed"}
    for outcome in report.tasks:
        assert f"cannot stage {outcome.task} into {stage_dir / INV / outcome.task}" \
            in outcome.error
    assert not (inv_dir / "wandb-export").exists()  # no silent fallback for an explicit dir


def test_explicit_stage_dir_holds_the_stage_the_spool_and_wandbs_files(
    make_invocation, tmp_path: Path
) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    stage_dir = tmp_path / "elsewhere"
    report = export_results(str(inv_dir), config=ORG, offline=True, stage_dir=stage_dir)
    assert report.ok, report.as_dict()
    assert staged_files(stage_dir / INV / "gsm8k.0") == sorted([*ARTIFACTS, "manifest.json"])
    assert list((stage_dir / "spool" / "done").rglob("*.json"))
    assert (stage_dir / ".wandb-data").is_dir()
    assert not (inv_dir / "wandb-export").exists()


def test_stage_error_names_the_directory(make_invocation, tmp_path: Path) -> None:
    (task_dir,) = task_dirs(make_invocation([gsm8k_task()]))
    obstruct(tmp_path / "blocker")
    with pytest.raises(StageError, match=r"cannot stage gsm8k\.0 into .*blocker/s/"):
        stage(task_dir, tmp_path / "blocker" / "s")


def test_staging_leaves_the_task_directory_untouched(make_invocation, tmp_path: Path) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    (task_dir,) = task_dirs(inv_dir)
    before = {p: p.read_bytes() for p in files_under(task_dir)}
    report = export_results(str(inv_dir), config={**ORG, "log_logs": True}, offline=True)
    assert report.ok
    assert {p: p.read_bytes() for p in files_under(task_dir)} == before


def test_a_fifo_among_the_logs_is_skipped_not_read(make_invocation, tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes: staging must not touch special files."""
    inv_dir = make_invocation([gsm8k_task()])
    task_dir = inv_dir / "gsm8k.0"
    os.mkfifo(task_dir / "logs" / "progress.pipe")
    staged = stage(task_dir, tmp_path / "stage", log_logs=True)
    names = [f.path for f in staged.files]
    assert "logs/progress.pipe" not in names
    assert any(n.startswith("logs/slurm-") for n in names)
