"""What an export did, per task: for --json, the summary table and the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nemo_wandb_hook.spool import Delivery, SpoolEntry


@dataclass
class TaskOutcome:
    """What happened to one task; `status` is exported / unchanged / pending / failed /
    staged / dry-run."""

    invocation_id: str
    task: str
    job_id: str
    status: str
    run_id: str | None = None
    run_path: str | None = None
    offline_dir: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # staged (or, dry-run, planned) files


@dataclass
class ExportReport:
    tasks: list[TaskOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskOutcome]:
        return [t for t in self.tasks if t.status in ("failed", "pending")]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "tasks": [asdict(t) for t in self.tasks]}

    def summary(self) -> str:
        return summary_table(self.tasks)


def main_metrics(metrics: dict[str, float], most: int = 3) -> str:
    shown = [(k, v) for k, v in metrics.items() if not k.endswith("_stderr")][:most]
    more = len([k for k in metrics if not k.endswith("_stderr")]) - len(shown)
    text = " ".join(f"{k}={v:.4g}" for k, v in shown)
    return text + (f" (+{more} more)" if more > 0 else "")


def summary_table(tasks: list[TaskOutcome]) -> str:
    """Task, state, main metric values and where the run is: readable in a terminal."""
    rows = [("TASK", "STATE", "METRICS", "RUN / OFFLINE DIR")]
    rows += [(t.task, t.status, main_metrics(t.metrics), t.run_path or t.offline_dir or "")
             for t in tasks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
             for r in rows]
    lines += [f"{t.task}: {t.error}" for t in tasks if t.error]
    return "\n".join(line.rstrip() for line in lines)


def outcome(entry: SpoolEntry, status: str, **extra: Any) -> TaskOutcome:
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
    return outcome(
        delivery.entry,
        status,
        run_path=delivery.location if online else None,
        offline_dir=None if online else delivery.location,
    )
