"""Shared helpers for the export-pipeline tests: result shapes, file edits, reading runs back.

Invocations are written with `nemo_wandb_hook.example` (the launcher's on-disk layout); the
helpers here add the shapes the tests need on top of it and read offline runs back with
`tests.support.wandb_reader`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from nemo_wandb_hook.example import (
    EXAMPLE_INVOCATION,
    EXAMPLE_MODEL,
    TaskSpec,
    gsm8k_task,
    humaneval_task,
    metric,
    mmlu_task,
    score,
    synthetic_task,
)
from nemo_wandb_hook.report import ExportReport, TaskOutcome
from tests.support.wandb_reader import OfflineRun, find_offline_runs, read_offline_run

INV = EXAMPLE_INVOCATION
ORG = {"entity": "myorg", "project": "evals"}
REPO_ROOT = Path(__file__).resolve().parents[2]
# The flat keys (and values) the launcher names for example.example_tasks(), written out.
MMLU = {
    "mmlu_acc": 0.6812, "mmlu_acc_stderr": 0.0037,
    "mmlu_humanities_acc": 0.6419, "mmlu_humanities_acc_stderr": 0.0067,
    "mmlu_abstract_algebra_acc": 0.41, "mmlu_abstract_algebra_acc_stderr": 0.0494,
}
GSM8K = {
    "gsm8k_exact_match_flexible-extract": 0.8044,
    "gsm8k_exact_match_flexible-extract_stderr": 0.0109,
    "gsm8k_exact_match_strict-match": 0.7794,
    "gsm8k_exact_match_strict-match_stderr": 0.0114,
}
HUMANEVAL = {"humaneval_pass@1": 0.6524, "humaneval_pass@10": 0.8171,
             "humaneval_pass@10_stderr": 0.021}
ALL_METRICS = {**MMLU, **GSM8K, **HUMANEVAL}
# Run labels every field of which must land in W&B, and what they add to run.config.
LABELS = {
    "tags": ["nightly", "llama"],
    "description": "weekly regression eval",
    "extra_metadata": {"team": "nlp", "budget": 3},
    "triggered_by_webhook": True,
    "webhook_source": "github",
    "source_artifact": "org/models/llama:v3",
    "config_source": "evals.yaml",
}
WEBHOOK_AND_EXTRA = {  # the launcher merges extra_metadata into run.config key by key
    "team": "nlp",
    "budget": 3,
    "triggered_by_webhook": True,
    "webhook_source": "github",
    "source_artifact": "org/models/llama:v3",
    "config_source": "evals.yaml",
}


def expected_per_task_config(inv_dir: Path, dir_name: str, index: int, benchmark: str,
                             harness: str) -> dict:
    """run.config of a per_task run of an example task exported with LABELS."""
    return {
        "invocation_id": INV,
        "executor": "slurm",
        "job_id": f"{INV}.{index}",
        "harness": harness,
        "benchmark": benchmark,
        "model_id": EXAMPLE_MODEL,
        "launcher_command": f"nemo-evaluator-launcher run --config-name {benchmark}",
        "results_dir": f"{socket.gethostname()}:{inv_dir / dir_name}",
        "slurm_job_id": str(4242000 + index),
        **WEBHOOK_AND_EXTRA,
    }


CLI_TIMEOUT = 300  # a hang guard for subprocesses, not an assertion on speed


# --- result shapes -------------------------------------------------------------------------


def nested_groups_task() -> TaskSpec:
    """Groups nested three deep, each level with stats, plus two tasks."""
    return TaskSpec(
        name="lm-evaluation-harness.mmlu_pro",
        harness="lm-evaluation-harness",
        benchmark="mmlu_pro",
        results={
            "groups": {
                "mmlu_pro": {
                    "metrics": {"acc": metric(acc=score(0.55, stderr=0.004, count=12032))},
                    "groups": {
                        "stem": {
                            "metrics": {"acc": metric(acc=score(0.5, stderr=0.008))},
                            "groups": {
                                "physics": {"metrics": {"acc": metric(acc=score(0.47))}},
                            },
                        },
                        "other": {"metrics": {"acc": metric(acc=score(0.61, stderr=0.01))}},
                    },
                }
            },
            "tasks": {
                "mmlu_pro_law": {"metrics": {"acc": metric(acc=score(0.33, stderr=0.014))}},
                "mmlu_pro_math": {"metrics": {"acc": metric(acc=score(0.58, stderr=0.013))}},
            },
        },
    )


def clashing_task(group_value: float = 0.7, task_value: float = 0.6) -> TaskSpec:
    """A group and a task both named `mmlu` with metric `acc`: the same flat key twice."""
    return TaskSpec(
        name="lm-evaluation-harness.mmlu",
        harness="lm-evaluation-harness",
        benchmark="mmlu",
        results={
            "groups": {"mmlu": {"metrics": {"acc": metric(acc=score(group_value, stderr=0.01))}}},
            "tasks": {"mmlu": {"metrics": {"acc": metric(acc=score(task_value, stderr=0.02))}}},
        },
    )


def single_metric_task(
    name: str, benchmark: str, key_metric: str, value: float, harness: str = "simple-evals"
) -> TaskSpec:
    return TaskSpec(
        name=f"{harness}.{name}",
        harness=harness,
        benchmark=benchmark,
        results={"tasks": {benchmark: {"metrics": {key_metric: metric(
            **{key_metric: score(value, stderr=0.01)})}}}},
    )


def several_harnesses() -> list[TaskSpec]:
    """Four harnesses: nested groups, multi-score metrics, a score without stats."""
    return [mmlu_task(), gsm8k_task(), humaneval_task(), nested_groups_task()]


def large_invocation(n: int = 24) -> list[TaskSpec]:
    return [synthetic_task(i) for i in range(n)]


def results_doc(results: dict[str, Any]) -> dict[str, Any]:
    return {"git_hash": "0123abc", "config": {"type": "custom"}, "results": results}


# --- editing written invocations --------------------------------------------------------------


def task_dirs(inv_dir: Path) -> list[Path]:
    dirs = [p for p in inv_dir.iterdir() if p.is_dir() and (p / "artifacts").is_dir()]
    return sorted(dirs, key=lambda p: int(p.name.rsplit(".", 1)[1]))


def results_file(task_dir: Path) -> Path:
    return task_dir / "artifacts" / "results.yml"


def write_results_text(task_dir: Path, text: str) -> None:
    results_file(task_dir).write_text(text)


def edit_results(task_dir: Path, results: dict[str, Any]) -> None:
    """Replace the `results` section of a task's results.yml, keeping the rest."""
    doc = yaml.safe_load(results_file(task_dir).read_text())
    doc["results"] = results
    results_file(task_dir).write_text(yaml.safe_dump(doc, sort_keys=True))


def edit_yaml(path: Path, update: dict[str, Any]) -> None:
    doc = yaml.safe_load(path.read_text()) or {}
    doc.update(update)
    path.write_text(yaml.safe_dump(doc, sort_keys=True))


def set_launcher_wandb(task_dir: Path, wandb: dict[str, Any], files: Iterable[str]) -> None:
    """Set the W&B exporter section in the given launcher config files of one task."""
    artifacts = task_dir / "artifacts"
    for name in files:
        path = artifacts / name
        doc = yaml.safe_load(path.read_text())
        if name == "config.yml":
            doc["execution"]["auto_export"]["configs"]["wandb"] = wandb
        elif name == "metadata.yaml":
            doc["launcher_resolved_config"]["execution"]["auto_export"]["configs"]["wandb"] = wandb
        elif name == "export_config.yml":
            doc["export"]["wandb"] = wandb
        else:
            raise ValueError(name)
        path.write_text(yaml.safe_dump(doc, sort_keys=True))


# --- looking at what an export left -----------------------------------------------------------


def by_task(report: ExportReport) -> dict[str, TaskOutcome]:
    return {t.task: t for t in report.tasks}


def statuses(report: ExportReport) -> dict[str, str]:
    return {t.task: t.status for t in report.tasks}


def offline_run_at(run_dir: str | Path) -> OfflineRun:
    """A complete, successfully finished offline run."""
    run = read_offline_run(Path(run_dir))
    assert not run.truncated, f"{run_dir}: .wandb file is truncated"
    assert run.exit_code == 0, f"{run_dir}: exit code {run.exit_code}"
    return run


def offline_run_of(outcome: TaskOutcome) -> OfflineRun:
    assert outcome.offline_dir, f"{outcome.task} has no offline run: {outcome}"
    return offline_run_at(outcome.offline_dir)


def offline_runs(root: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in find_offline_runs(root)]


def metrics_of(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary without wandb's own `_...` keys."""
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def files_under(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every regular file below `root` (symlinks not followed), except below `exclude`."""
    skip = [Path(e) for e in exclude]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found += [here / f for f in filenames if not (here / f).is_symlink()]
    return found


def files_containing(root: Path, needle: str, exclude: Iterable[Path] = ()) -> list[Path]:
    data = needle.encode()
    return [p for p in files_under(root, exclude) if data in p.read_bytes()]


def staged_files(stage_task_dir: Path) -> list[str]:
    return sorted(p.relative_to(stage_task_dir).as_posix() for p in files_under(stage_task_dir))


# --- the real command line --------------------------------------------------------------------


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m nemo_wandb_hook ARGS` in a subprocess, with the test's (isolated) env."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "nemo_wandb_hook", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
