"""Helpers for the `hook` tests (tests/test_hook.py, tests/test_hook_slurm.py): where the hook
binary is, what the spool holds, and what the offline W&B pieces of a run say.

A multi_task run written by several hook processes is a series of offline "pieces" (one per
lock holder's push, same run id): the newest piece carries the whole run's summary, and every
task's artifact must be logged exactly once across all pieces.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.wandb_reader import OfflineRun, find_offline_runs, read_offline_run

REPO_ROOT = Path(__file__).resolve().parents[2]
HOOKS_DIR = REPO_ROOT / "hooks"
TEMPLATES_DIR = REPO_ROOT / "slurm_templates"
RESULT_TYPE = "evaluation_result"  # the type of a task's artifact (wandb_sink.ArtifactPayload)


def hook_bin() -> Path:
    """The nemo-wandb-hook executable of this checkout's venv (the one running the tests)."""
    for candidate in (REPO_ROOT / ".venv" / "bin" / "nemo-wandb-hook",
                      Path(sys.executable).parent / "nemo-wandb-hook"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no nemo-wandb-hook next to {sys.executable} or in {REPO_ROOT}/.venv")


def _json_files(base: Path) -> list[Path]:
    return sorted(base.rglob("*.json")) if base.is_dir() else []


@dataclass
class SpoolState:
    """<stage_dir>/spool/: delivered entries per run slug, pending names, task failures."""

    done: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done_tasks(self) -> list[str]:
        return sorted(d["entry"]["task"] for ds in self.done.values() for d in ds)


def spool_state(stage_dir: Path) -> SpoolState:
    root = stage_dir / "spool"
    state = SpoolState()
    for path in _json_files(root / "done"):
        state.done.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    state.pending = [f"{p.parent.name}/{p.name}" for p in _json_files(root / "pending")]
    state.failed = [json.loads(p.read_text()) for p in _json_files(root / "failed")]
    return state


def offline_pieces(root: Path, run_id: str | None = None) -> list[OfflineRun]:
    """Every offline run below `root` (oldest first), optionally only those of one run id."""
    runs = [read_offline_run(d) for d in find_offline_runs(root)]
    return [r for r in runs if run_id is None or r.run_id == run_id]


def metric_keys(state: SpoolState) -> dict[str, set[str]]:
    """task -> the metric keys its delivered entry carries."""
    return {d["entry"]["task"]: set(d["entry"]["metrics"])
            for ds in state.done.values() for d in ds}


def check_multi_task_run(stage_dir: Path, wandb_root: Path, tasks: list[str]) -> list[OfflineRun]:
    """One multi_task run holding every task exactly once; returns its offline pieces."""
    state = spool_state(stage_dir)
    assert state.pending == [], f"entries left pending: {state.pending}"
    assert state.failed == [], f"task failures recorded: {state.failed}"
    assert len(state.done) == 1, f"expected one run in the ledger, got {sorted(state.done)}"
    assert state.done_tasks == sorted(tasks)
    run_ids = {d["entry"]["run"]["run_id"] for ds in state.done.values() for d in ds}
    assert len(run_ids) == 1, run_ids
    (run_id,) = run_ids
    pieces = offline_pieces(wandb_root, run_id)
    assert pieces, f"no offline piece of run {run_id} below {wandb_root}"
    assert not any(p.truncated for p in pieces), [p.run_dir for p in pieces if p.truncated]
    # The newest piece carries the whole run: every task's keys, every task in the config.
    newest = pieces[-1]
    missing = {t: sorted(keys - set(newest.summary))
               for t, keys in metric_keys(state).items() if keys - set(newest.summary)}
    assert not missing, f"newest piece {newest.run_dir.name} lacks keys: {missing}"
    assert sorted(newest.config["tasks"]) == sorted(tasks)
    check_artifacts_once(state, pieces)
    return pieces


def check_artifacts_once(state: SpoolState, pieces: list[OfflineRun]) -> None:
    # Only the tasks' result artifacts: W&B adds its own (e.g. run tables) besides them.
    logged = Counter(a.name for p in pieces for a in p.artifacts if a.type == RESULT_TYPE)
    wanted = {d["entry"]["artifact_name"] for ds in state.done.values() for d in ds}
    assert set(logged) == wanted, f"artifacts logged {dict(logged)}, expected {sorted(wanted)}"
    twice = {name: n for name, n in logged.items() if n != 1}
    assert not twice, f"artifacts logged more than once across pieces: {twice}"


def check_per_task_runs(stage_dir: Path, wandb_root: Path, tasks: list[str]) -> None:
    """One run per task, each holding exactly its own task."""
    state = spool_state(stage_dir)
    assert state.pending == [], f"entries left pending: {state.pending}"
    assert state.failed == [], f"task failures recorded: {state.failed}"
    assert state.done_tasks == sorted(tasks)
    assert len(state.done) == len(tasks), f"expected one run per task: {sorted(state.done)}"
    keys = metric_keys(state)
    all_pieces: list[OfflineRun] = []
    for deliveries in state.done.values():
        (delivery,) = deliveries
        entry = delivery["entry"]
        pieces = offline_pieces(wandb_root, entry["run"]["run_id"])
        assert pieces, f"no offline run {entry['run']['run_id']} below {wandb_root}"
        newest = pieces[-1]
        assert keys[entry["task"]] <= set(newest.summary)
        others = set().union(*(k for t, k in keys.items() if t != entry["task"]))
        assert not others & set(newest.summary), "a per_task run holds another task's keys"
        all_pieces += pieces
    check_artifacts_once(state, all_pieces)
