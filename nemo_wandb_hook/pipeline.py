"""locate -> wait -> read -> stage -> enqueue -> flush, for one call of `export` or `hook`.

Everything up to the enqueue never imports wandb (flush.py does, only when it pushes): an
epilogue that only enqueues stays fast.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_wandb_hook import config as config_mod
from nemo_wandb_hook.config import ConfigError, ExportConfig
from nemo_wandb_hook.flush import flush
from nemo_wandb_hook.redaction import Redactor
from nemo_wandb_hook.report import ExportReport, TaskOutcome, delivered_outcome, outcome
from nemo_wandb_hook.results import (
    LocateError,
    TaskError,
    TaskLocation,
    locate_all,
    read_task,
    wait_for_results,
)
from nemo_wandb_hook.runs import build_entry
from nemo_wandb_hook.spool import Spool, SpoolEntry
from nemo_wandb_hook.staging import StageError, default_stage_dir, planned_files, stage_task

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A task that passed wait, read and stage, with what it needs to be enqueued."""

    location: TaskLocation
    config: ExportConfig
    stage_dir: Path
    entry: SpoolEntry


def prepare(
    loc: TaskLocation,
    cfg: ExportConfig,
    stage_dir: Path,
    wait_timeout: float,
    mode: str,
    slurm_env: Mapping[str, str],
    dry_run: bool = False,
) -> Prepared:
    """wait -> read -> stage for one task; raises TaskError/StageError naming the task."""
    try:
        redactor = Redactor(cfg.redact)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    doc = wait_for_results(loc, wait_timeout)
    task = read_task(loc, doc, cfg.log_stats, cfg.log_metrics)
    if task.launcher_command:  # goes into the run config; may carry `-o ...HF_TOKEN=...`
        task.launcher_command = redactor.line(task.launcher_command)
    if dry_run:
        files = [{"path": p} for p in planned_files(loc, cfg.log_logs)]
        return Prepared(loc, cfg, stage_dir, build_entry(cfg, task, None, files, mode, slurm_env))
    limit = cfg.samples_limit if cfg.log_samples else None
    staged = stage_task(loc, stage_dir, cfg.log_logs, redactor, limit)
    files = [asdict(f) for f in staged.files]
    entry = build_entry(cfg, task, staged.directory, files, mode, slurm_env)
    return Prepared(loc, cfg, stage_dir, entry)


def resolve_configs(
    locations: list[TaskLocation],
    config: Mapping[str, Any] | None,
    config_file: Path | None,
    overrides: list[str] | None,
) -> list[ExportConfig]:
    """One config per task (each may carry its own launcher config); errors are usage errors."""
    return [
        config_mod.resolve(loc.task_dir / "artifacts", config_file, overrides, config)
        for loc in locations
    ]


def _stage_dir_for(loc: TaskLocation, cfg: ExportConfig, override: Path | None) -> Path:
    chosen = override or cfg.stage_dir
    return Path(chosen) if chosen else default_stage_dir(loc.invocation_dir)


def _record_failure(stage: Path, loc: TaskLocation, error: str) -> None:
    try:
        Spool(stage).record_task_failure(loc.invocation_id, loc.dir_name, error)
    except OSError as err:
        log.warning("cannot record the failure of %s in %s: %s", loc.dir_name, stage, err)


def export_results(
    targets: str | Iterable[str],
    dest: str | Iterable[str] = "wandb",
    config: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    job_dirs: Iterable[str | Path] = (),
    offline: bool = False,
    stage_dir: str | Path | None = None,
    dry_run: bool = False,
    wait_timeout: float | None = 0.0,
) -> ExportReport:
    """Export invocations (ids or paths) to W&B and/or the local stage; see ExportReport.

    Raises ConfigError for configuration problems; everything about one task is reported in
    that task's outcome while the other tasks go on.
    """
    targets = [targets] if isinstance(targets, str) else list(targets)
    config_path = Path(config_file) if config_file else None
    roots = [Path(j) for j in job_dirs] + config_mod.search_roots(config_path, overrides, config)
    try:
        locations = locate_all(targets, roots)
    except LocateError as err:
        return ExportReport(errors=[str(err)])
    configs = resolve_configs(locations, config, config_path, overrides)
    run = ExportRun(dest=dest, offline=offline, stage_dir=stage_dir, dry_run=dry_run,
                    wait_timeout=wait_timeout)
    return run.export(locations, configs)


@dataclass
class ExportRun:
    """How one call exports its tasks; `deadline` (time.monotonic) bounds the whole call."""

    dest: str | Iterable[str] = "wandb"
    offline: bool = False
    stage_dir: str | Path | None = None
    dry_run: bool = False
    wait_timeout: float | None = None  # None: each task's config decides
    lock_wait: float = 60.0
    deadline: float | None = None
    slurm_env: Mapping[str, str] | None = None

    def remaining(self, default: float) -> float:
        if self.deadline is None:
            return default
        return max(0.0, min(default, self.deadline - time.monotonic()))

    def export(self, locations: list[TaskLocation], configs: list[ExportConfig]) -> ExportReport:
        dests = {self.dest} if isinstance(self.dest, str) else set(self.dest)
        if dests - {"wandb", "local"}:
            raise ConfigError(f"unknown --dest {sorted(dests - {'wandb', 'local'})}; "
                              "choose wandb or local")
        report = ExportReport()
        env = self.slurm_env or {}  # only `hook` knows which task its Slurm job ran
        override = Path(self.stage_dir) if self.stage_dir else None
        prepared: list[Prepared] = []
        for loc, cfg in zip(locations, configs, strict=True):
            mode = "offline" if self.offline else cfg.mode
            wait = self.remaining(cfg.wait_timeout if self.wait_timeout is None
                                  else self.wait_timeout)
            stage = Path() if self.dry_run else _stage_dir_for(loc, cfg, override)
            try:
                prepared.append(prepare(loc, cfg, stage, wait, mode, env, self.dry_run))
            except (TaskError, StageError) as err:
                log.error("%s: %s", loc.dir_name, err)
                if not self.dry_run and not isinstance(err, StageError):
                    _record_failure(stage, loc, str(err))
                report.tasks.append(TaskOutcome(loc.invocation_id, loc.dir_name, loc.job_id,
                                                "failed", error=str(err)))
        if self.dry_run:
            report.tasks += [outcome(p.entry, "dry-run", run_path=p.entry.run.path)
                             for p in prepared]
            return report
        if "local" in dests:
            from nemo_wandb_hook.local import write_processed_results

            write_processed_results(prepared)
            if "wandb" not in dests:
                report.tasks += [outcome(p.entry, "staged") for p in prepared]
                return report
        report.tasks += self.deliver(prepared)
        return report

    def deliver(self, prepared: list[Prepared]) -> list[TaskOutcome]:
        """Enqueue each prepared task, then flush the runs they belong to."""
        outcomes: list[TaskOutcome] = []
        runs: dict[Path, dict[str, ExportConfig]] = {}
        enqueued: list[Prepared] = []
        for item in prepared:
            spool = Spool(item.stage_dir)
            if spool.enqueue(item.entry):
                runs.setdefault(item.stage_dir, {})[item.entry.run.slug] = item.config
                enqueued.append(item)
            else:
                done = spool.delivery(item.entry.run.slug, item.entry.name)
                outcomes.append(delivered_outcome(done, "unchanged") if done
                                else outcome(item.entry, "unchanged"))
        for stage, slugs in runs.items():
            policy = next(iter(slugs.values())).retry
            retry = policy.model_copy(update={"deadline": self.remaining(policy.deadline)})
            outcomes += flush(stage, list(slugs), retry=retry, lock_wait=self.lock_wait)
        # Another process holding the run's lock may have delivered our entries meanwhile:
        # flush then reports nothing for them, but each task still gets its outcome.
        reported = {(o.invocation_id, o.task) for o in outcomes}
        for item in enqueued:
            entry = item.entry
            if (entry.invocation_id, entry.task) in reported:
                continue
            spool = Spool(item.stage_dir)
            done = spool.delivery(entry.run.slug, entry.name)
            if done is not None and done.entry.digest == entry.digest:
                outcomes.append(delivered_outcome(done))
            else:
                stage = shlex.quote(str(item.stage_dir))
                outcomes.append(outcome(entry, "pending", error=(
                    f"not delivered yet; another process holds the lock of run "
                    f"{entry.run.path}. Run `nemo-wandb-hook flush --stage-dir {stage}` if it "
                    "stays pending")))
        return outcomes
