"""Where every task stands, from local state only (no wandb import, no network)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_wandb_hook.results import TaskLocation
from nemo_wandb_hook.spool import Spool
from nemo_wandb_hook.staging import MANIFEST

STATES = ("waiting", "new", "failed", "staged", "pending", "exported-online",
          "exported-offline", "synced")


@dataclass
class TaskStatus:
    invocation_id: str
    task: str
    state: str
    where: str = ""  # W&B run path, offline run directory, or staged directory
    reason: str = ""
    since: float | None = None
    next: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(stage_dir: Path, locations: list[TaskLocation] | None = None) -> list[TaskStatus]:
    """One status per task: the tasks of `locations`, or every task the stage dir knows."""
    spool = Spool(stage_dir)
    found: dict[tuple[str, str], TaskStatus] = {}
    for loc in locations or []:
        state = "new" if loc.results_file.exists() else "waiting"
        reason = "" if state == "new" else "results.yml not written yet"
        found[(loc.invocation_id, loc.dir_name)] = TaskStatus(loc.invocation_id, loc.dir_name,
                                                               state, reason=reason)
    for manifest in stage_dir.glob(f"*/*/{MANIFEST}"):
        inv, task = manifest.parent.parent.name, manifest.parent.name
        found[(inv, task)] = TaskStatus(inv, task, "staged", where=str(manifest.parent),
                                        since=manifest.stat().st_mtime)
    for delivery in spool.all_deliveries():
        e = delivery.entry
        if delivery.synced_at is not None:
            state, since = "synced", delivery.synced_at
        else:
            state, since = f"exported-{delivery.mode}", delivery.pushed_at
        found[(e.invocation_id, e.task)] = TaskStatus(e.invocation_id, e.task, state,
                                                      where=delivery.location, since=since)
    for failure in spool.task_failures():  # a failed re-export after a delivery shows
        key = (failure["invocation_id"], failure["task"])
        earlier = found.get(key)
        if earlier is None or earlier.state in ("waiting", "new", "staged") or (
                earlier.since or 0) < failure["at"]:
            found[key] = TaskStatus(*key, "failed", reason=failure["error"],
                                    since=failure["at"], where=earlier.where if earlier else "")
    for slug in spool.pending_runs():
        failure = spool.failure(slug) or {}
        for e in spool.pending(slug):
            found[(e.invocation_id, e.task)] = TaskStatus(
                e.invocation_id, e.task, "pending", where=e.run.path,
                reason=failure.get("error", ""), since=failure.get("at", e.created_at))
    for status in found.values():
        status.next = next_step(status.state, stage_dir)
    wanted = {(loc.invocation_id, loc.dir_name) for loc in locations or []}
    rows = [s for k, s in found.items() if not wanted or k in wanted]
    return sorted(rows, key=lambda s: (s.invocation_id, _index(s.task), s.task))


def _index(task: str) -> int:
    tail = task.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def next_step(state: str, stage_dir: Path) -> str:
    return {
        "waiting": "wait for the job, or check its log",
        "new": "nemo-wandb-hook export <invocation>",
        "failed": "fix the reason, then run the hook or export again",
        "staged": "nemo-wandb-hook export --dest wandb <invocation>",
        "pending": f"nemo-wandb-hook flush --stage-dir {stage_dir}",
        "exported-offline": f"nemo-wandb-hook sync --stage-dir {stage_dir}",
    }.get(state, "")


def render(rows: list[TaskStatus]) -> str:
    """A table for a terminal, then the commands that move things forward."""
    if not rows:
        return "nothing exported or staged here yet"
    lines = [f"{'INVOCATION':17} {'TASK':40} {'STATE':16} {'AGE':>6}  WHERE / REASON"]
    now = time.time()
    for r in rows:
        age = _age(now - r.since) if r.since else ""
        detail = r.where if not r.reason else f"{r.where}  {r.reason}".strip()
        lines.append(f"{r.invocation_id:17} {r.task:40} {r.state:16} {age:>6}  {detail}")
    steps = sorted({r.next for r in rows if r.next})
    if steps:
        lines += ["", "next:"] + [f"  {step}" for step in steps]
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
