"""The post-job entrypoint: export the task a Slurm job just ran, never hanging the node.

A failing or hanging epilogue drains the node, so by default `hook` exits 0 and a watchdog
ends it at its budget; what it could not deliver by then stays pending in the spool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nemo_wandb_hook.config import ConfigError, ExportConfig
from nemo_wandb_hook.pipeline import ExportRun, resolve_configs
from nemo_wandb_hook.report import ExportReport
from nemo_wandb_hook.results import (
    LocateError,
    TaskLocation,
    invocation_id_of,
    is_task_dir,
    locate,
    task_dirs,
)
from nemo_wandb_hook.slurm import SlurmJob, UnknownOwner, current_job, drop_privileges
from nemo_wandb_hook.staging import default_stage_dir

log = logging.getLogger(__name__)

GIVE_UP_EXIT = 3  # --strict only: the budget ran out
SEARCH_UP = 3  # how many parents of the job's working directory may be the task directory


@dataclass
class HookRequest:
    task_dir: Path | None = None
    invocation_dir: Path | None = None
    config_file: Path | None = None
    overrides: list[str] | None = None
    stage_dir: Path | None = None
    wait_timeout: float | None = None
    budget: float | None = None
    strict: bool = False


def _task_of(directory: Path, array_task_id: str | None) -> list[TaskLocation]:
    """The task a job's directory stands for: the task dir itself or one of its parents, or
    the array task's directory inside an invocation directory."""
    for candidate in [directory, *list(directory.parents)[:SEARCH_UP]]:
        if is_task_dir(candidate):
            return [TaskLocation(invocation_id_of(candidate.parent), candidate.parent, candidate)]
    dirs = task_dirs(directory) if directory.is_dir() else []
    if dirs and array_task_id is not None:
        inv = invocation_id_of(directory)
        return [TaskLocation(inv, directory, d) for d in dirs
                if d.name.rsplit(".", 1)[-1] == array_task_id]
    return []


def find_tasks(request: HookRequest, job: SlurmJob | None, cwd: Path) -> list[TaskLocation]:
    if request.task_dir is not None:
        return locate(str(request.task_dir))
    if request.invocation_dir is not None:
        return locate(str(request.invocation_dir))
    places = [job.work_dir, job.stdout.parent if job.stdout else None] if job else []
    array_task = job.array_task_id if job else None
    for place in [*places, cwd]:
        if place is not None:
            found = _task_of(Path(place), array_task)
            if found:
                return found
    where = ", ".join(str(p) for p in [*places, cwd] if p)
    raise LocateError(f"cannot tell which task to export: no task directory at or above {where}"
                      "; pass --task-dir or --invocation-dir")


class _HookLog(logging.FileHandler):
    """<stage_dir>/hook.log, attached for one hook call."""


def _log_to_file(stage_dir: Path) -> None:
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        handler = _HookLog(stage_dir / "hook.log")
    except OSError as err:
        log.warning("cannot log to %s: %s", stage_dir / "hook.log", err)
        return
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {os.uname().nodename} pid={os.getpid()} "
        f"job={os.environ.get('SLURM_JOB_ID', '-')} %(levelname)s %(message)s"))
    logging.getLogger("nemo_wandb_hook").addHandler(handler)


def _detach_hook_logs() -> None:
    logger = logging.getLogger("nemo_wandb_hook")
    for handler in [h for h in logger.handlers if isinstance(h, _HookLog)]:
        logger.removeHandler(handler)
        handler.close()


def process_age() -> float:
    """Seconds since this process started (Linux /proc), 0 when unknown. The budget counts
    from there: starting Python and importing can take seconds on a busy node or a venv on a
    shared filesystem, and Slurm's KillWait started before the hook did."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _watchdog(budget: float, strict: bool, started: float) -> threading.Timer:
    def give_up() -> None:
        log.error("budget of %gs used up; what was not delivered stays pending in the spool "
                  "(run `nemo-wandb-hook flush`)", budget)
        logging.shutdown()
        os._exit(GIVE_UP_EXIT if strict else 0)

    timer = threading.Timer(max(0.0, started + budget - time.monotonic()), give_up)
    timer.daemon = True
    timer.start()
    return timer


def run_hook(request: HookRequest, env: Mapping[str, str] | None = None,
             started: float | None = None) -> ExportReport:
    """Locate, wait, stage, enqueue and try one bounded flush; raises ConfigError/LocateError.

    The budget counts from `started` (time.monotonic()), by default from this call."""
    env = os.environ if env is None else env
    started = time.monotonic() if started is None else started
    job = current_job(env)
    if job is not None:
        drop_privileges(job)
    locations = find_tasks(request, job, Path.cwd())
    configs: list[ExportConfig] = resolve_configs(
        locations, None, request.config_file, request.overrides)
    budget = request.budget if request.budget is not None else configs[0].budget
    watchdog = _watchdog(budget, request.strict, started)
    try:
        stage = request.stage_dir or configs[0].stage_dir or default_stage_dir(
            locations[0].invocation_dir)
        _log_to_file(Path(stage))
        log.info("hook for %s (Slurm job %s)", ", ".join(loc.job_id for loc in locations),
                 job.job_id if job else "-")
        # This job's ids belong to the task only when the job ran it: a dependency job
        # exporting a whole invocation leaves each task the ids its own files record.
        own = request.invocation_dir is None
        slurm_env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        if own and job is not None:
            slurm_env.update(job.ids())
        run = ExportRun(
            stage_dir=request.stage_dir,
            wait_timeout=request.wait_timeout,
            # The lock holder drains our entry too (see flush.py); only --strict, which
            # must tell whether the export succeeded, waits for the lock.
            lock_wait=budget if request.strict else 0.0,
            deadline=started + budget * 0.9,
            slurm_env=slurm_env,
        )
        report = run.export(locations, configs)
        # The lock holder reports the other tasks it delivered; this hook answers for its own.
        mine = {(loc.invocation_id, loc.dir_name) for loc in locations}
        report.tasks = [t for t in report.tasks if (t.invocation_id, t.task) in mine]
        log.log(logging.INFO if report.ok else logging.WARNING, "result:\n%s", report.summary())
    finally:
        watchdog.cancel()  # a caller in the same process must not be killed later
    return report


def exit_code(report: ExportReport, strict: bool) -> int:
    if not strict:
        return 0
    return 0 if report.ok else 1


def hook_main(request: HookRequest) -> int:
    """The `hook` command: never raise and, unless strict, never fail (an epilogue must not
    drain the node). Its budget counts from the start of the process."""
    try:
        report = run_hook(request, started=time.monotonic() - process_age())
    except (ConfigError, LocateError, UnknownOwner) as err:
        log.error("%s", err)
        return 2 if request.strict else 0
    except Exception:  # the node must survive whatever happened; the traceback is logged
        log.exception("hook failed unexpectedly")
        return 1 if request.strict else 0
    finally:
        _detach_hook_logs()
    return exit_code(report, request.strict)
