"""Locate invocation and task directories, wait until results are complete, read them."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemo_wandb_hook import execdb
from nemo_wandb_hook.metrics import MetricScore, MetricsError, flatten, select, table_rows

log = logging.getLogger(__name__)

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
INVOCATION_ID = re.compile(r"^[0-9a-f]{8,16}$")
JOB_ID = re.compile(r"^(?P<inv>[0-9a-f]{8,16})\.(?P<idx>\d+)$")
TASK_DIR = re.compile(r"^(?P<name>.+)\.(?P<idx>\d+)$")
FIRST_RECHECK = 0.1  # seconds before the first stability re-check
SETTLED_AFTER = 2.0  # seconds without modification after which a file counts as complete


class LocateError(LookupError):
    """A TARGET matched no directory, or more than one."""


class TaskError(RuntimeError):
    """One task cannot be exported; the message names the task and the reason."""


class WaitTimeout(TaskError):
    """results.yml did not become complete within the wait limit."""


@dataclass(frozen=True)
class TaskLocation:
    invocation_id: str
    invocation_dir: Path
    task_dir: Path

    @property
    def dir_name(self) -> str:
        return self.task_dir.name

    @property
    def index(self) -> int:
        match = TASK_DIR.match(self.task_dir.name)
        return int(match["idx"]) if match else 0

    @property
    def task_name(self) -> str:
        match = TASK_DIR.match(self.task_dir.name)
        return match["name"] if match else self.task_dir.name

    @property
    def job_id(self) -> str:
        return f"{self.invocation_id}.{self.index}"

    @property
    def results_file(self) -> Path:
        return self.task_dir / "artifacts" / "results.yml"


@dataclass
class TaskResult:
    """Everything read from one task directory; plain data for the stages after."""

    location: TaskLocation
    benchmark: str
    harness: str
    model_id: str | None
    launcher_command: str | None
    executor: str
    results_dir: str
    slurm_job_id: str | None
    metrics: dict[str, float]
    scores: list[MetricScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    table: list[list[Any]] = field(default_factory=list)


def invocation_id_of(inv_dir: Path) -> str:
    tail = inv_dir.name.rsplit("-", 1)[-1]
    return tail if INVOCATION_ID.match(tail) else inv_dir.name


def is_task_dir(path: Path) -> bool:
    return bool(TASK_DIR.match(path.name)) and (path / "artifacts").is_dir()


def task_dirs(inv_dir: Path) -> list[Path]:
    found = [p for p in inv_dir.iterdir() if p.is_dir() and TASK_DIR.match(p.name)]
    return sorted(found, key=lambda p: (int(TASK_DIR.match(p.name)["idx"]), p.name))


def _locations(inv_dir: Path, index: int | None = None) -> list[TaskLocation]:
    inv_id = invocation_id_of(inv_dir)
    dirs = task_dirs(inv_dir)
    if index is not None:
        dirs = [d for d in dirs if TASK_DIR.match(d.name)["idx"] == str(index)]
    return [TaskLocation(inv_id, inv_dir, d) for d in dirs]


def _search_roots(inv_id: str, roots: Iterable[Path]) -> list[Path]:
    hits: list[Path] = []
    for root in roots:
        if root.is_dir() and root.name.endswith(inv_id):
            hits.append(root)
        for pattern in (f"*{inv_id}", f"*/*{inv_id}"):
            hits.extend(p for p in root.glob(pattern) if p.is_dir())
    return hits


def locate(target: str, job_dirs: Iterable[Path] = ()) -> list[TaskLocation]:
    """Resolve one TARGET (id or path) to its task directories."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = path.resolve()
        if is_task_dir(path):
            return [TaskLocation(invocation_id_of(path.parent), path.parent, path)]
        found = _locations(path)
        if not found:
            raise LocateError(f"{target}: a directory, but neither a task directory (with "
                              f"artifacts/) nor an invocation directory (with <task>.<idx>/)")
        return found
    job = JOB_ID.match(target)
    inv_id = job["inv"] if job else target
    if not INVOCATION_ID.match(inv_id):
        raise LocateError(f"{target}: not a directory, an invocation id (8-16 hex characters) "
                          f"or a job id (<invocation>.<index>)")
    roots = [Path(r).expanduser() for r in job_dirs]
    searched = [f"exec DB {execdb.db_path()}"] + [f"--job-dirs {r}" for r in roots]
    candidates = execdb.invocation_dirs(inv_id) + _search_roots(inv_id, roots)
    unique = sorted({c.resolve() for c in candidates if c.is_dir()})
    if not unique:
        raise LocateError(f"{target}: no directory found; searched " + ", ".join(searched))
    if len(unique) > 1:
        raise LocateError(f"{target}: ambiguous, matches " + ", ".join(map(str, unique)))
    found = _locations(unique[0], int(job["idx"]) if job else None)
    if not found:
        what = f"task index {job['idx']}" if job else "task directories"
        raise LocateError(f"{target}: {unique[0]} has no {what}")
    return found


def locate_all(targets: Iterable[str], job_dirs: Iterable[Path] = ()) -> list[TaskLocation]:
    """Several targets; a task named twice is exported once."""
    seen: dict[Path, TaskLocation] = {}
    for target in targets:
        for loc in locate(target, job_dirs):
            seen.setdefault(loc.task_dir, loc)
    return list(seen.values())


def load_yaml_file(path: Path) -> Any:
    with path.open("rb") as fh:
        return yaml.load(fh, Loader=YAML_LOADER)


def wait_for_results(loc: TaskLocation, timeout: float, poll: float = 0.25) -> Any:
    """Return results.yml parsed once it exists, parses, and has stopped growing (same size
    and mtime on two polls, or untouched for SETTLED_AFTER seconds).

    Listing the directory on each poll refreshes NFS attribute caches.
    """
    deadline = time.monotonic() + timeout
    last_stat: tuple[int, int] | None = None
    reason = "results.yml does not exist"
    rechecked = False
    while True:
        artifacts = loc.task_dir / "artifacts"
        if artifacts.is_dir():
            os.listdir(artifacts)
        try:
            st = loc.results_file.stat()
            stat = (st.st_size, st.st_mtime_ns)
            if st.st_size == 0:
                reason = "results.yml is empty"
            elif stat == last_stat or timeout == 0 or time.time() - st.st_mtime > SETTLED_AFTER:
                doc = load_yaml_file(loc.results_file)
                if isinstance(doc, Mapping) and "results" in doc:
                    return doc
                reason = "results.yml has no 'results' section"
            else:
                reason = "results.yml is still being written"
            last_stat = stat
        except FileNotFoundError:
            reason = "results.yml does not exist"
        except yaml.YAMLError as err:
            reason = f"results.yml is not valid YAML ({str(err).splitlines()[0]})"
            last_stat = stat  # parse it again only once it changes: the reason stays this one
        if time.monotonic() >= deadline:
            waited = f" after waiting {timeout:g}s" if timeout else ""
            raise WaitTimeout(f"{loc.results_file}: {reason}{waited}")
        # A file seen for the first time is looked at again soon: most are complete already.
        pause = FIRST_RECHECK if last_stat is not None and not rechecked else poll
        rechecked = rechecked or last_stat is not None
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))


def _optional_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = load_yaml_file(path)
    except yaml.YAMLError as err:
        log.warning("%s is not valid YAML, ignoring it: %s", path, str(err).splitlines()[0])
        return {}
    return doc if isinstance(doc, dict) else {}


def read_task(
    loc: TaskLocation,
    results_doc: Any,
    log_stats: Iterable[str] = ("stderr",),
    log_metrics: list[str] | None = None,
) -> TaskResult:
    artifacts = loc.task_dir / "artifacts"
    run_config = _optional_yaml(artifacts / "run_config.yml")
    metadata = _optional_yaml(artifacts / "metadata.yaml")
    try:
        flat = flatten(results_doc, log_stats)
    except MetricsError as err:
        raise TaskError(f"{loc.results_file}: {err}") from None
    cfg = run_config.get("config") or results_doc.get("config") or {}
    target = run_config.get("target") or results_doc.get("target") or {}
    launcher_cfg = metadata.get("launcher_resolved_config") or {}
    slurm_ids = loc.task_dir / ".slurm_job_id.list"
    slurm_job_id = slurm_ids.read_text().split()[0] if slurm_ids.is_file() else None
    executor = (launcher_cfg.get("execution") or {}).get("type") or (
        "slurm" if slurm_job_id else "local"
    )
    results_dir = str(loc.task_dir)
    if executor == "slurm":
        results_dir = f"{socket.gethostname()}:{results_dir}"
    benchmark = str(cfg.get("type") or loc.task_name.rsplit(".", 1)[-1])
    harness = str(run_config.get("framework_name") or loc.task_name.split(".", 1)[0])
    kept = select(flat, log_metrics)
    for message in flat.warnings:
        log.warning("%s: %s", loc.dir_name, message)
    return TaskResult(
        location=loc,
        benchmark=benchmark,
        harness=harness,
        model_id=(target.get("api_endpoint") or {}).get("model_id"),
        launcher_command=metadata.get("launcher_command"),
        executor=executor,
        results_dir=results_dir,
        slurm_job_id=slurm_job_id,
        metrics=kept,
        scores=flat.scores,
        warnings=flat.warnings,
        table=table_rows(flat, kept, benchmark, harness),
    )
