"""locate -> wait -> read -> stage -> enqueue -> flush, for one call of `export` or `hook`.

The part before `flush` never imports wandb: an epilogue that only enqueues stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_wandb_hook import config as config_mod
from nemo_wandb_hook.config import ConfigError, ExportConfig
from nemo_wandb_hook.redaction import Redactor
from nemo_wandb_hook.report import ExportReport, TaskOutcome
from nemo_wandb_hook.results import (
    LocateError,
    TaskError,
    TaskLocation,
    TaskResult,
    locate_all,
    read_task,
    wait_for_results,
)
from nemo_wandb_hook.spool import (
    LOCK_STALE_AFTER,
    Delivery,
    LockTimeout,
    PushError,
    RunSpec,
    Spool,
    SpoolEntry,
)
from nemo_wandb_hook.staging import StageError, default_stage_dir, planned_files, stage_task

log = logging.getLogger(__name__)

RUN_ID_MAX = 64


@dataclass
class Prepared:
    """A task that passed wait, read and stage, with what it needs to be enqueued."""

    location: TaskLocation
    config: ExportConfig
    stage_dir: Path
    entry: SpoolEntry


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


def _outcome(entry: SpoolEntry, status: str, **extra: Any) -> TaskOutcome:
    return TaskOutcome(
        invocation_id=entry.invocation_id,
        task=entry.task,
        job_id=f"{entry.invocation_id}.{entry.index}",
        status=status,
        run_id=entry.run.run_id,
        metrics=dict(entry.metrics),
        files=[f["path"] for f in entry.files],
        **extra,
    )


def delivered_outcome(delivery: Delivery, status: str = "exported") -> TaskOutcome:
    online = delivery.mode == "online"
    return _outcome(
        delivery.entry,
        status,
        run_path=delivery.location if online else None,
        offline_dir=None if online else delivery.location,
    )


def flush(
    stage_dir: Path,
    slugs: Iterable[str] | None = None,
    mode: str | None = None,
    retry: config_mod.RetryPolicy | None = None,
    lock_wait: float = 60.0,
) -> list[TaskOutcome]:
    """Deliver every pending entry of the given runs (all runs when None), one writer per run.

    Whoever holds a run's lock drains everything pending for it in one W&B session; a caller
    that finds the lock busy leaves its entry to the holder, which looks again after release.
    """
    spool = Spool(stage_dir)
    wanted = list(slugs) if slugs is not None else spool.pending_runs()
    wanted = [s for s in wanted if spool.pending(s)]
    if not wanted:
        return []
    with Flusher(spool, mode, retry or config_mod.RetryPolicy()) as flusher:
        return [o for slug in wanted for o in flusher.flush_run(slug, lock_wait)]


class Flusher:
    """One flush call: one W&B session per mode, reused for every run it writes."""

    def __init__(self, spool: Spool, mode: str | None, retry: config_mod.RetryPolicy) -> None:
        self.spool = spool
        self.mode = mode
        self.retry = retry
        self.stack = ExitStack()
        self.sessions: dict[str, Any] = {}
        self.decided: dict[str, str] = {}
        # The run for which W&B did not answer within the retry deadline: the other runs of
        # this call are not tried online, so an absent W&B costs one deadline, not one per run.
        self.unreachable: str | None = None

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _effective(self, requested: str) -> str:
        from nemo_wandb_hook.probe import decide_mode

        if requested not in self.decided:
            self.decided[requested], reason = decide_mode(requested)
            log.info("writing %s W&B runs: %s", self.decided[requested], reason)
        return self.decided[requested]

    def _session(self, mode: str) -> Any:
        from nemo_wandb_hook.wandb_sink import WandbSession

        if mode not in self.sessions:
            session = WandbSession(mode, self.spool.root.parent, self.retry)
            self.sessions[mode] = self.stack.enter_context(session)
        return self.sessions[mode]

    def _push(self, pending: list[SpoolEntry], slug: str) -> Any:
        """Push the run's state; with mode auto, fall back to an offline run if W&B is away."""
        requested = self.mode or pending[-1].mode
        chosen = self._effective(requested)
        payload = build_payload(pending, self.spool.deliveries(slug))
        try:
            if chosen == "online" and self.unreachable:
                stage = shlex.quote(str(self.spool.root.parent))
                raise PushError(
                    f"W&B run {payload.spec.path}: not tried, W&B did not answer for run "
                    f"{self.unreachable} earlier in this call; the export stays pending: run "
                    f"`nemo-wandb-hook flush --stage-dir {stage}` later", transient=True)
            return self._session(chosen).push(payload)
        except PushError as err:
            if err.transient and chosen == "online" and self.unreachable is None:
                self.unreachable = payload.spec.path
            if not (err.transient and requested == "auto" and chosen == "online"):
                raise
            log.warning("%s; writing an offline run instead", err)
            return self._session("offline").push(payload)

    def flush_run(self, slug: str, lock_wait: float) -> list[TaskOutcome]:
        spool = self.spool
        outcomes: list[TaskOutcome] = []
        # Look again after each release: an entry enqueued while we held the lock, whose own
        # caller found the lock busy and left, is ours to deliver, however often that happens
        # (a hook's budget bounds this loop; each round delivers what arrived).
        while True:
            try:
                with spool.lock(slug, timeout=lock_wait, stale_after=LOCK_STALE_AFTER):
                    while pending := spool.pending(slug):
                        result = self._push(pending, slug)
                        for entry in pending:
                            spool.mark_delivered(entry, result.mode, result.location)
                            done = spool.delivery(slug, entry.name)
                            outcomes.append(delivered_outcome(done) if done
                                            else _outcome(entry, "exported"))
            except LockTimeout as err:
                return outcomes + [_outcome(e, "pending", error=str(err))
                                   for e in spool.pending(slug)]
            except PushError as err:
                spool.record_failure(slug, str(err))
                status = "pending" if err.transient else "failed"
                return outcomes + [_outcome(e, status, error=str(err))
                                   for e in spool.pending(slug)]
            if not spool.pending(slug):
                break
        return outcomes


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
            report.tasks += [_outcome(p.entry, "dry-run", run_path=p.entry.run.path)
                             for p in prepared]
            return report
        if "local" in dests:
            from nemo_wandb_hook.local import write_processed_results

            write_processed_results(prepared)
            if "wandb" not in dests:
                report.tasks += [_outcome(p.entry, "staged") for p in prepared]
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
                                else _outcome(item.entry, "unchanged"))
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
                outcomes.append(_outcome(entry, "pending", error=(
                    f"not delivered yet; another process holds the lock of run "
                    f"{entry.run.path}. Run `nemo-wandb-hook flush --stage-dir {stage}` if it "
                    "stays pending")))
        return outcomes
