"""Write evaluation invocations in the launcher's on-disk layout.

Used by `nemo-wandb-hook demo`, the tests and the benchmarks, so all three exercise the same
shape the launcher (0.2.x, Slurm executor) leaves on a shared filesystem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXAMPLE_INVOCATION = "3f9a1c2b7d4e8f60"
EXAMPLE_MODEL = "meta/llama-3.1-8b-instruct"


def score(value: float, **stats: float) -> dict[str, Any]:
    body: dict[str, Any] = {"value": value}
    if stats:
        body["stats"] = dict(stats)
    return body


def metric(**scores: dict[str, Any]) -> dict[str, Any]:
    return {"scores": dict(scores)}


@dataclass
class TaskSpec:
    """One task of an invocation: `name` is the launcher's task name, `results` results.yml's
    `results` mapping."""

    name: str
    harness: str
    benchmark: str
    results: dict[str, Any]
    logs: dict[str, str] = field(default_factory=dict)


def mmlu_task() -> TaskSpec:
    acc = metric(acc=score(0.6812, count=14042, stderr=0.0037))
    return TaskSpec(
        name="lm-evaluation-harness.mmlu",
        harness="lm-evaluation-harness",
        benchmark="mmlu",
        results={
            "groups": {
                "mmlu": {
                    "metrics": {"acc": acc},
                    "groups": {
                        "humanities": {
                            "metrics": {"acc": metric(acc=score(0.6419, stderr=0.0067))}
                        }
                    },
                }
            },
            "tasks": {
                "mmlu_abstract_algebra": {
                    "metrics": {"acc": metric(acc=score(0.41, count=100, stderr=0.0494))}
                }
            },
        },
    )


def gsm8k_task() -> TaskSpec:
    return TaskSpec(
        name="gsm8k",
        harness="lm-evaluation-harness",
        benchmark="gsm8k",
        results={
            "tasks": {
                "gsm8k": {
                    "metrics": {
                        "exact_match": metric(
                            **{
                                "flexible-extract": score(0.8044, count=1319, stderr=0.0109),
                                "strict-match": score(0.7794, count=1319, stderr=0.0114),
                            }
                        )
                    }
                }
            }
        },
    )


def humaneval_task() -> TaskSpec:
    return TaskSpec(
        name="bigcode-evaluation-harness.humaneval",
        harness="bigcode-evaluation-harness",
        benchmark="humaneval",
        results={
            "tasks": {
                "humaneval": {
                    "metrics": {
                        "pass@1": metric(**{"pass@1": score(0.6524)}),
                        "pass@10": metric(**{"pass@10": score(0.8171, stderr=0.021)}),
                    }
                }
            }
        },
    )


def example_tasks() -> list[TaskSpec]:
    return [mmlu_task(), gsm8k_task(), humaneval_task()]


def synthetic_task(index: int) -> TaskSpec:
    """A small task with a unique benchmark name, for large generated invocations."""
    bench = f"bench{index:03d}"
    return TaskSpec(
        name=f"simple-evals.{bench}",
        harness="simple-evals",
        benchmark=bench,
        results={
            "tasks": {
                bench: {
                    "metrics": {
                        "score": metric(
                            score=score(round(0.5 + index / 1000, 4), count=200, stderr=0.01),
                            micro=score(round(0.4 + index / 1000, 4)),
                        )
                    }
                }
            }
        },
    )


def launcher_config(output_dir: Path, tasks: list[TaskSpec], wandb: dict[str, Any]) -> dict:
    return {
        "execution": {
            "type": "slurm",
            "output_dir": str(output_dir),
            "account": "eval",
            "auto_export": {"destinations": ["wandb"], "configs": {"wandb": dict(wandb)}},
        },
        "deployment": {"type": "none"},
        "target": {
            "api_endpoint": {
                "model_id": EXAMPLE_MODEL,
                "url": "http://127.0.0.1:8000/v1/chat/completions",
                "api_key_name": "NGC_API_KEY",
            }
        },
        "evaluation": {"tasks": [{"name": t.name} for t in tasks]},
    }


def write_invocation(
    output_dir: Path,
    tasks: list[TaskSpec],
    invocation_id: str = EXAMPLE_INVOCATION,
    timestamp: str = "20261204_120000",
    wandb: dict[str, Any] | None = None,
    with_auto_export_files: bool = True,
) -> Path:
    """Write `<output_dir>/<timestamp>-<invocation_id>/<task>.<idx>/...` and return the
    invocation directory."""
    wandb = wandb if wandb is not None else {"entity": "demo", "project": "nemo-evals"}
    inv_dir = Path(output_dir) / f"{timestamp}-{invocation_id}"
    config = launcher_config(Path(output_dir), tasks, wandb)
    for idx, task in enumerate(tasks):
        write_task(inv_dir, idx, task, invocation_id, config, with_auto_export_files)
    return inv_dir


def write_task(
    inv_dir: Path,
    idx: int,
    task: TaskSpec,
    invocation_id: str,
    config: dict[str, Any],
    with_auto_export_files: bool = True,
) -> Path:
    task_dir = inv_dir / f"{task.name}.{idx}"
    artifacts = task_dir / "artifacts"
    logs = task_dir / "logs"
    for d in (artifacts / "cache", logs):
        d.mkdir(parents=True, exist_ok=True)
    slurm_id = 4242000 + idx
    run_config = {
        "command": f"lm-eval --tasks {task.benchmark} --output_path {artifacts}",
        "framework_name": task.harness,
        "pkg_name": task.harness.replace("-", "_"),
        "config": {
            "type": task.benchmark,
            "output_dir": str(artifacts),
            "params": {"limit_samples": None, "parallelism": 8, "temperature": 0.0},
        },
        "target": {
            "api_endpoint": {
                "model_id": EXAMPLE_MODEL,
                "type": "chat",
                "url": "http://127.0.0.1:8000/v1/chat/completions",
            }
        },
    }
    results = {
        "git_hash": "0123abc",
        "command": run_config["command"],
        "config": run_config["config"],
        "target": run_config["target"],
        "results": task.results,
    }
    dump = {"sort_keys": True, "default_flow_style": False}
    (artifacts / "run_config.yml").write_text(yaml.safe_dump(run_config, **dump))
    (artifacts / "metadata.yaml").write_text(
        yaml.safe_dump(
            {
                "launcher_command": f"nemo-evaluator-launcher run --config-name {task.benchmark}",
                "launcher_resolved_config": config,
                "versioning": {"nemo_evaluator_launcher": "0.2.6", "nemo_evaluator": "0.2.8"},
            },
            **dump,
        )
    )
    (artifacts / "eval_factory_metrics.json").write_text(
        json.dumps(
            {
                "response_stats": {"count": 200, "avg_latency_ms": 812.5, "status_200": 200},
                "evaluation": {"runtime_seconds": 1234.5, "peak_memory_bytes": 2147483648},
            }
        )
    )
    (artifacts / "progress").write_text("200\n")
    (artifacts / "cache" / "entries.json").write_text("{}")
    (artifacts / "lm_cache_rank0.db").write_bytes(b"SQLite format 3\x00")
    (task_dir / ".secrets.env").write_text("NGC_API_KEY=nvapi-demo-secret-not-real\n")
    (task_dir / ".slurm_job_id.list").write_text(f"{slurm_id}\n")
    (task_dir / "run.sub").write_text("#!/bin/bash\n#SBATCH --job-name=eval\nsrun true\n")
    (logs / f"slurm-{slurm_id}.log").write_text(f"starting {task.name}\n")
    (logs / f"client-{slurm_id}.log").write_text("requests sent: 200\n")
    for name, text in task.logs.items():
        (logs / name).write_text(text)
    if with_auto_export_files:
        (artifacts / "config.yml").write_text(yaml.safe_dump(config, **dump))
        export_cfg = {"export": config["execution"]["auto_export"]["configs"]}
        (artifacts / "export_config.yml").write_text(yaml.safe_dump(export_cfg, **dump))
    # results.yml last: the launcher writes it when the evaluation is complete.
    (artifacts / "results.yml").write_text(yaml.safe_dump(results, **dump))
    return task_dir
