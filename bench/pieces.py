"""What the offline run pieces of either side hold: which tasks reach the run's summary."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.support.wandb_reader import find_offline_runs, read_offline_run

TASK_KEY = re.compile(r"^bench(\d{3})_")  # synthetic_task(i) metrics are bench<iii>_*


def tasks_in(summary: dict[str, Any]) -> set[int]:
    return {int(m[1]) for key in summary if (m := TASK_KEY.match(key))}


def inspect(root: Path, expected: int) -> dict[str, Any]:
    """Every offline piece below `root`, oldest first: its run id and tasks in its summary.

    `newest` is how many tasks the newest piece's summary holds; `union` how many tasks any
    piece holds; `per_run_newest` the same per run id (per_task mode writes one run per task).
    """
    pieces = []
    for run_dir in find_offline_runs(root):
        try:
            run = read_offline_run(run_dir)
        except (OSError, ValueError) as err:
            pieces.append({"dir": str(run_dir), "error": str(err), "tasks": []})
            continue
        pieces.append({
            "dir": str(run_dir),
            "run_id": run.run_id,
            "tasks": sorted(tasks_in(run.summary)),
            "benchmarks_in_config": len(run.config.get("benchmarks") or []),
            "artifacts": len(run.artifacts),
            "truncated": run.truncated,
            "exit_code": run.exit_code,
        })
    union = set().union(*(p["tasks"] for p in pieces)) if pieces else set()
    newest_by_run: dict[str, set[int]] = {}
    for p in pieces:  # oldest first, so the last one per run id wins
        if "run_id" in p:
            newest_by_run[p["run_id"]] = set(p["tasks"])
    covered = set().union(*newest_by_run.values()) if newest_by_run else set()
    return {
        "expected": expected,
        "pieces": len(pieces),
        "runs": len(newest_by_run),
        "newest": len(pieces[-1]["tasks"]) if pieces else 0,
        "union": len(union),
        "per_run_newest": len(covered),
        "tasks_per_piece": sorted({len(p["tasks"]) for p in pieces}),
        "newest_config_benchmarks": pieces[-1].get("benchmarks_in_config", 0) if pieces else 0,
        "errors": [p["error"] for p in pieces if "error" in p],
    }


def describe(info: dict[str, Any]) -> str:
    """E.g. '32 pieces (1 run), newest piece has 1/32 tasks, all pieces together 32/32'."""
    n, pieces = info["expected"], info["pieces"]
    if not pieces:
        return f"0 pieces: nothing written (0/{n} tasks)"
    text = (f"{pieces} piece{'s' * (pieces != 1)} ({info['runs']} run"
            f"{'s' * (info['runs'] != 1)}), newest piece has {info['newest']}/{n} tasks")
    if info["runs"] > 1:
        text += f", newest piece of each run together {info['per_run_newest']}/{n}"
    elif pieces > 1:
        text += (f", all pieces together {info['union']}/{n}; newest piece's config lists "
                 f"{info['newest_config_benchmarks']} benchmark(s)")
    if info["errors"]:
        text += f", {len(info['errors'])} unreadable"
    return text


def local_online_runs(root: Path) -> list[dict[str, Any]]:
    """`wandb/run-*` directories (the local log of an online run) and what they hold."""
    found = []
    for log in sorted(root.rglob("wandb/run-*/run-*.wandb")):
        try:
            run = read_offline_run(log.parent)
        except (OSError, ValueError) as err:
            found.append({"dir": str(log.parent), "error": str(err), "tasks": []})
            continue
        found.append({"dir": str(log.parent), "tasks": sorted(tasks_in(run.summary)),
                      "records": sorted(set(run.record_types))})
    return found
