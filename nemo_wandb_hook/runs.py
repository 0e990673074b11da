"""What one W&B run holds, built from tasks and spool entries: ids, names, config, summary,
artifacts and tables. Plain data; the sink turns it into W&B calls."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemo_wandb_hook.config import ExportConfig
from nemo_wandb_hook.results import TaskResult
from nemo_wandb_hook.spool import Delivery, RunSpec, SpoolEntry

log = logging.getLogger(__name__)

RUN_ID_MAX = 64


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def per_task_run_id(invocation_id: str, task_dir_name: str) -> str:
    """Deterministic, a valid W&B id, and short enough: hashed when too long."""
    run_id = safe_name(f"{invocation_id}-{task_dir_name}").replace(".", "_")
    if len(run_id) > RUN_ID_MAX:
        digest = hashlib.sha256(task_dir_name.encode()).hexdigest()[:12]
        run_id = f"{invocation_id}-{digest}"
    return run_id


def run_spec(cfg: ExportConfig, task: TaskResult) -> RunSpec:
    inv = task.location.invocation_id
    if cfg.log_mode == "multi_task":
        run_id, name = cfg.run_id or inv, cfg.name or f"eval-{inv}"
    else:
        run_id, name = per_task_run_id(inv, task.location.dir_name), cfg.name or (
            f"eval-{inv}-{task.benchmark}"
        )
    return RunSpec(
        entity=cfg.entity,
        project=cfg.project,
        run_id=run_id,
        name=name,
        group=cfg.group or inv,
        job_type=cfg.job_type,
        log_mode=cfg.log_mode,
        tags=list(cfg.tags),
        notes=cfg.description,
    )


def slurm_ids(task: TaskResult, env: Mapping[str, str]) -> dict[str, str]:
    ids = {"slurm_job_id": env.get("SLURM_JOB_ID") or task.slurm_job_id}
    ids["slurm_array_job_id"] = env.get("SLURM_ARRAY_JOB_ID")
    ids["slurm_array_task_id"] = env.get("SLURM_ARRAY_TASK_ID")
    return {k: str(v) for k, v in ids.items() if v}


def build_entry(
    cfg: ExportConfig,
    task: TaskResult,
    staged_dir: Path | None,
    files: list[dict[str, Any]],
    mode: str,
    slurm_env: Mapping[str, str],
) -> SpoolEntry:
    loc = task.location
    task_info = {
        "job_id": loc.job_id,
        "harness": task.harness,
        "benchmark": task.benchmark,
        "results_dir": task.results_dir,
        **slurm_ids(task, slurm_env),
    }
    run_level = {
        "invocation_id": loc.invocation_id,
        "executor": task.executor,
        "model_id": task.model_id,
        "launcher_command": task.launcher_command,
        **cfg.webhook_fields(),
        **cfg.extra_metadata,
    }
    return SpoolEntry(
        run=run_spec(cfg, task),
        invocation_id=loc.invocation_id,
        task=loc.dir_name,
        index=loc.index,
        benchmark=task.benchmark,
        harness=task.harness,
        config={"run": {k: v for k, v in run_level.items() if v is not None}, "task": task_info},
        metrics=task.metrics,
        staged_dir=str(staged_dir or ""),
        files=files,
        artifact_name=safe_name(f"{loc.invocation_id}_{task.benchmark}"),
        log_artifacts=cfg.log_artifacts,
        mode=mode,
        table=task.table,
        log_tables=cfg.log_tables,
        samples=[f["path"] for f in files if f["path"].startswith("samples/")],
        samples_limit=cfg.samples_limit if cfg.log_samples else 0,
    )


def merged_summary(entries: list[SpoolEntry]) -> dict[str, float]:
    """All tasks' metrics; a key two tasks give different values is kept for both."""
    summary: dict[str, float] = {}
    owner: dict[str, str] = {}
    for entry in entries:
        for key, value in entry.metrics.items():
            if key in summary and summary[key] != value:
                alt = f"{key}__task{entry.index}"
                log.warning("metric %r of %s differs from %s's; kept as %r",
                            key, entry.task, owner[key], alt)
                summary[alt] = value
                continue
            summary[key] = value
            owner.setdefault(key, entry.task)
    return summary


def run_config(entries: list[SpoolEntry]) -> dict[str, Any]:
    newest = max(entries, key=lambda e: e.created_at)
    if newest.run.log_mode != "multi_task":
        return {**newest.config["task"], **newest.config["run"]}
    return {
        "benchmarks": sorted({e.benchmark for e in entries}),
        "harnesses": sorted({e.harness for e in entries}),
        "tasks": {e.task: e.config["task"] for e in entries},
        "results_dir": newest.config["task"]["results_dir"].rsplit("/", 1)[0],
        **newest.config["run"],
    }


def build_payload(pending: list[SpoolEntry], delivered: list[Delivery]) -> Any:
    """The run's full state: delivered tasks plus pending ones (pending wins)."""
    from nemo_wandb_hook.tables import results_table, sample_tables
    from nemo_wandb_hook.wandb_sink import ArtifactPayload, RunPayload

    multi = pending[0].run.log_mode == "multi_task"
    state = {d.entry.name: d.entry for d in delivered} if multi else {}
    state.update({e.name: e for e in pending})
    entries = sorted(state.values(), key=lambda e: (e.index, e.name))
    artifacts = [
        ArtifactPayload(
            name=e.artifact_name,
            files={f["path"]: Path(e.staged_dir) / f["path"] for f in e.files},
            metadata={"invocation_id": e.invocation_id, "task": e.task,
                      "benchmark": e.benchmark, "harness": e.harness, "digest": e.digest},
        )
        for e in pending
        if e.log_artifacts and e.files
    ]
    tables = sample_tables(entries)
    if pending[-1].log_tables:
        tables["results"] = results_table(entries)
    return RunPayload(
        spec=pending[-1].run,
        config=run_config(entries),
        summary=merged_summary(entries),
        artifacts=artifacts,
        tables=tables,
    )
