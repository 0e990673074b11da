"""`--dest local`: the launcher local exporter's summary files and a Markdown table, beside
the staged results, so results can be read without W&B."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemo_wandb_hook.staging import atomic_write

if TYPE_CHECKING:
    from nemo_wandb_hook.pipeline import Prepared

COLUMNS = ["invocation_id", "job_id", "task", "harness", "benchmark", "metric", "value"]


def write_processed_results(prepared: list[Prepared]) -> list[Path]:
    """Upsert one row per (job, metric) into processed_results.json/.csv per invocation."""
    by_dir: dict[Path, list[Prepared]] = defaultdict(list)
    for item in prepared:
        by_dir[item.stage_dir / item.entry.invocation_id].append(item)
    written = []
    for out_dir, items in by_dir.items():
        json_path = out_dir / "processed_results.json"
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        if json_path.is_file():
            for row in json.loads(json_path.read_text()).get("rows", []):
                rows[(row["job_id"], row["metric"])] = row
        for item in items:
            e = item.entry
            for metric, value in e.metrics.items():
                job_id = f"{e.invocation_id}.{e.index}"
                values = [e.invocation_id, job_id, e.task, e.harness, e.benchmark, metric, value]
                rows[(job_id, metric)] = dict(zip(COLUMNS, values, strict=True))
        ordered = [rows[k] for k in sorted(rows)]
        atomic_write(json_path, json.dumps({"rows": ordered}, indent=1).encode())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(ordered)
        atomic_write(out_dir / "processed_results.csv", buf.getvalue().encode())
        atomic_write(out_dir / "results.md", results_markdown(out_dir).encode())
        written += [json_path, out_dir / "processed_results.csv", out_dir / "results.md"]
    return written


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def results_markdown(out_dir: Path) -> str:
    """Every staged task's metrics with stderr, from the staged results.yml files."""
    from nemo_wandb_hook.metrics import MetricsError, flatten
    from nemo_wandb_hook.results import load_yaml_file

    lines = ["| task directory | task | metric | score | value | stderr | count |",
             "|---|---|---|---|---|---|---|"]
    for results in sorted(out_dir.glob("*/results.yml"), key=lambda p: _task_index(p.parent)):
        try:
            flat = flatten(load_yaml_file(results))
        except (MetricsError, OSError, ValueError):
            continue
        for s in flat.scores:
            count = s.stats.get("count")
            cells = [results.parent.name, s.entry, s.metric, s.score, _fmt(s.value),
                     _fmt(s.stats.get("stderr")), _fmt(int(count) if count is not None else None)]
            lines.append("| " + " | ".join(cells) + " |")
    return f"# Results: {out_dir.name}\n\n" + "\n".join(lines) + "\n"


def _task_index(task_dir: Path) -> tuple[int, str]:
    tail = task_dir.name.rsplit(".", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, task_dir.name)
