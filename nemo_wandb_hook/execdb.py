"""The launcher's execution DB: one JSON line per job, a later line for the same job wins."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def db_path() -> Path:
    env = os.environ.get("NEMO_EVALUATOR_EXEC_DB_FILE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".nemo-evaluator" / "exec-db" / "exec.v1.jsonl"


def jobs() -> dict[str, dict[str, Any]]:
    """job_id -> latest record; an unreadable DB or line is skipped with a warning."""
    path = db_path()
    latest: dict[str, dict[str, Any]] = {}
    try:
        with path.open() as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    latest[str(record["job_id"])] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: not a job record, skipped", path, number)
    except FileNotFoundError:
        return {}
    except OSError as err:
        log.warning("cannot read the exec DB %s: %s", path, err.strerror)
    return latest


def _invocation_dir(record: dict[str, Any]) -> Path | None:
    data = record.get("data") or {}
    raw = data.get("remote_rundir_path") or data.get("output_dir")
    if not raw:
        return None
    path = Path(raw)
    # Some records point at the task directory, others at the invocation directory.
    return path.parent if (path / "artifacts").is_dir() else path


def invocation_dirs(invocation_id: str) -> list[Path]:
    found = []
    for record in jobs().values():
        if str(record.get("invocation_id")) == invocation_id:
            inv_dir = _invocation_dir(record)
            if inv_dir is not None:
                found.append(inv_dir)
    return found

