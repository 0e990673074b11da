"""The durable spool: what must reach W&B, what did, and the lock that lets one writer do it.

A task's result is safe once its pending entry exists. Layout under `<stage_dir>/spool/`:
`pending/<run>/<task>.json`, `done/<run>/<task>.json` (the ledger: what was pushed, where,
with which content digest), `errors/<run>.json` (the last failure), `locks/<run>.lock`.
Every file is written with temp + rename, so a killed process never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import filelock

from nemo_wandb_hook.staging import atomic_write

log = logging.getLogger(__name__)


LOCK_STALE_AFTER = 600.0  # seconds after which any holder's lock counts as abandoned


class LockTimeout(TimeoutError):
    """Another process held the run's lock for longer than we may wait."""


class PushError(RuntimeError):
    """A run could not be written to W&B; `transient` says whether a later try may succeed.

    Defined here, not in wandb_sink, so the flush loop can catch it without importing wandb.
    """

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RunSpec:
    """Which W&B run an entry goes to, and how it is labelled."""

    entity: str
    project: str
    run_id: str
    name: str
    group: str
    job_type: str
    log_mode: str
    tags: list[str] = field(default_factory=list)
    notes: str | None = None

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.entity}__{self.project}__{self.run_id}")


@dataclass
class SpoolEntry:
    """One task's export, self-contained: a flush needs nothing but this and the staged files."""

    run: RunSpec
    invocation_id: str
    task: str  # task directory name, e.g. "gsm8k.1"
    index: int
    benchmark: str
    harness: str
    config: dict[str, Any]
    metrics: dict[str, float]
    staged_dir: str
    files: list[dict[str, Any]]
    artifact_name: str
    log_artifacts: bool
    mode: str  # "online" | "offline" | "auto"
    table: list[list[Any]] = field(default_factory=list)  # rows of the `results` table
    log_tables: bool = True
    samples: list[str] = field(default_factory=list)  # staged per-sample files (JSONL)
    samples_limit: int = 0
    created_at: float = field(default_factory=time.time)
    digest: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.run, dict):
            self.run = RunSpec(**self.run)
        if not self.digest:
            self.digest = self.content_digest()

    @property
    def name(self) -> str:
        return f"{self.invocation_id}__{self.task}"

    def content_digest(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k not in ("created_at", "digest", "mode")}
        # Which Slurm job exported the task is provenance, not content: an export job after
        # the array must find the tasks the array's own hooks delivered unchanged.
        task = body["config"].get("task")
        if isinstance(task, dict):
            task = {k: v for k, v in task.items() if not k.startswith("slurm_")}
            body["config"] = {**body["config"], "task": task}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Delivery:
    """A ledger record: the entry as pushed, and where it went."""

    entry: SpoolEntry
    mode: str  # "online" | "offline"
    location: str  # run path online, offline run directory offline
    pushed_at: float = field(default_factory=time.time)
    synced_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.entry, dict):
            self.entry = SpoolEntry(**self.entry)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        log.warning("spool file %s is unreadable (%s); leaving it in place", path, err)
        return None


def _write_json(path: Path, body: Any) -> None:
    atomic_write(path, json.dumps(body, indent=1, sort_keys=True, default=str).encode())


class Spool:
    def __init__(self, stage_dir: Path) -> None:
        self.root = Path(stage_dir) / "spool"

    def _file(self, kind: str, slug: str, name: str) -> Path:
        return self.root / kind / slug / f"{name}.json"

    def enqueue(self, entry: SpoolEntry) -> bool:
        """Record the entry; False when the ledger already holds this exact content."""
        (self.root / "failed" / f"{entry.name}.json").unlink(missing_ok=True)
        done = self.delivery(entry.run.slug, entry.name)
        if done is not None and done.entry.digest == entry.digest:
            self._file("pending", entry.run.slug, entry.name).unlink(missing_ok=True)
            return False
        _write_json(self._file("pending", entry.run.slug, entry.name), asdict(entry))
        return True

    def pending(self, slug: str) -> list[SpoolEntry]:
        entries = []
        for path in sorted((self.root / "pending" / slug).glob("*.json")):
            body = _read_json(path)
            if body is not None:
                entries.append(SpoolEntry(**body))
        return sorted(entries, key=lambda e: (e.index, e.name))

    def pending_runs(self) -> list[str]:
        base = self.root / "pending"
        if not base.is_dir():
            return []
        return sorted(d.name for d in base.iterdir() if d.is_dir() and any(d.glob("*.json")))

    def delivery(self, slug: str, name: str) -> Delivery | None:
        body = _read_json(self._file("done", slug, name))
        return Delivery(**body) if body is not None else None

    def deliveries(self, slug: str) -> list[Delivery]:
        found = []
        for path in sorted((self.root / "done" / slug).glob("*.json")):
            body = _read_json(path)
            if body is not None:
                found.append(Delivery(**body))
        return found

    def all_deliveries(self) -> Iterator[Delivery]:
        base = self.root / "done"
        if base.is_dir():
            for run_dir in sorted(base.iterdir()):
                yield from self.deliveries(run_dir.name)

    def mark_delivered(self, entry: SpoolEntry, mode: str, location: str) -> None:
        """Ledger first, then drop the pending file: a crash between the two re-pushes the same
        content, which W&B absorbs (same run id, same artifact digest)."""
        _write_json(self._file("done", entry.run.slug, entry.name),
                    asdict(Delivery(entry, mode, location)))
        self._file("pending", entry.run.slug, entry.name).unlink(missing_ok=True)
        (self.root / "errors" / f"{entry.run.slug}.json").unlink(missing_ok=True)

    def mark_synced(self, delivery: Delivery) -> None:
        delivery.synced_at = time.time()
        _write_json(self._file("done", delivery.entry.run.slug, delivery.entry.name),
                    asdict(delivery))

    def record_failure(self, slug: str, error: str) -> None:
        _write_json(self.root / "errors" / f"{slug}.json", {"error": error, "at": time.time()})

    def record_task_failure(self, invocation_id: str, task: str, error: str) -> None:
        """A task that could not be read or staged (never completed, broken results)."""
        _write_json(self.root / "failed" / f"{invocation_id}__{task}.json",
                    {"invocation_id": invocation_id, "task": task, "error": error,
                     "at": time.time()})

    def task_failures(self) -> list[dict[str, Any]]:
        base = self.root / "failed"
        found = [_read_json(p) for p in sorted(base.glob("*.json"))] if base.is_dir() else []
        return [f for f in found if f]

    def failure(self, slug: str) -> dict[str, Any] | None:
        return _read_json(self.root / "errors" / f"{slug}.json")

    @contextmanager
    def lock(self, slug: str, timeout: float, stale_after: float) -> Iterator[None]:
        with RunLock(self.root / "locks" / f"{slug}.lock", timeout, stale_after):
            yield


class RunLock:
    """A lock file that works on NFS/Lustre (O_EXCL create, no flock), bounded and self-healing.

    The holder's host, pid and Slurm job are written beside it. A lock whose holder is a dead
    process on this host, or that is older than `stale_after` seconds, is broken.
    """

    def __init__(self, path: Path, timeout: float, stale_after: float) -> None:
        self.path = path
        self.holder = path.with_suffix(".holder")
        self.timeout = timeout
        self.stale_after = stale_after
        self._lock = filelock.SoftFileLock(str(path), timeout=timeout)

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            self._break_if_stale()
            try:
                self._lock.acquire(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                break
            except filelock.Timeout:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"lock {self.path} still held after {self.timeout:g}s by "
                        f"{self._holder_text()}"
                    ) from None
        _write_json(self.holder, {
            "host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        })
        return self

    def __exit__(self, *exc: object) -> None:
        self.holder.unlink(missing_ok=True)
        self._lock.release()

    def _holder_text(self) -> str:
        info = _read_json(self.holder) or {}
        return f"host {info.get('host', '?')} pid {info.get('pid', '?')}" + (
            f" (Slurm job {info['slurm_job_id']})" if info.get("slurm_job_id") else ""
        )

    def _break_if_stale(self) -> None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        info = _read_json(self.holder) or {}
        dead = info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", 0)))
        if dead or age > self.stale_after:
            why = "its holder is gone" if dead else f"it is {age:.0f}s old"
            log.warning("breaking stale lock %s held by %s: %s", self.path,
                        self._holder_text(), why)
            self.path.unlink(missing_ok=True)
            self.holder.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
