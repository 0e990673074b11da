"""The tables a run shows: `results` (one row per task, metric and score) and per-sample
outputs. Built from spool entries and staged files at flush time, never on the fast path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemo_wandb_hook.metrics import TABLE_COLUMNS
from nemo_wandb_hook.spool import SpoolEntry

CELL_LIMIT = 4000  # characters of one per-sample cell; W&B tables are for looking, not storage


def results_table(entries: list[SpoolEntry]) -> tuple[list[str], list[list[Any]]]:
    return list(TABLE_COLUMNS), [row for e in entries for row in e.table]


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= CELL_LIMIT else text[:CELL_LIMIT] + "…"


def samples_table(path: Path, limit: int) -> tuple[list[str], list[list[Any]]]:
    """Read at most `limit` JSON lines, one at a time: sample files can be gigabytes."""
    records: list[dict[str, Any]] = []
    columns: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if len(records) >= limit:
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                record = {"value": record}
            columns += [k for k in record if k not in columns]
            records.append(record)
    return columns, [[_cell(r.get(c)) for c in columns] for r in records]


def sample_tables(entries: list[SpoolEntry]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    tables = {}
    for e in entries:
        for rel in e.samples:
            path = Path(e.staged_dir) / rel
            if path.is_file():
                name = rel.removeprefix("samples/").removesuffix(".jsonl")
                key = f"samples/{e.task}/{name}_first{e.samples_limit}"
                tables[key] = samples_table(path, e.samples_limit)
    return tables
