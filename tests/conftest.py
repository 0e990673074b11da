"""Shared fixtures: every test gets its own wandb directories and never reaches a real host."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nemo_wandb_hook import example

pytest_plugins = ["tests.support.slurm_fixture", "tests.support.backend_fixture"]

CLOSED_PORT_URL = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """WANDB_* dirs in tmp_path, a base URL on a closed local port, no API key, no netrc."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        path = tmp_path / var.lower()
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_PORT_URL)
    monkeypatch.setenv("NEMO_EVALUATOR_EXEC_DB_FILE", str(home / "exec.v1.jsonl"))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path / "wandb_dir"
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@pytest.fixture
def make_invocation(tmp_path: Path) -> Callable[..., Path]:
    """Write an invocation in the launcher's layout; returns its directory."""

    def make(tasks: list[example.TaskSpec] | None = None, **kwargs: object) -> Path:
        root = tmp_path / "results"
        return example.write_invocation(root, tasks or example.example_tasks(), **kwargs)

    return make
