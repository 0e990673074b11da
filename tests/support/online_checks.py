"""Helpers for the online-export tests: export against the fake W&B backend and read it back.

The expected values are those of `nemo_wandb_hook.example.example_tasks()` (the launcher's
layout, three tasks: mmlu with nested groups, gsm8k with two scores, humaneval pass@k).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nemo_wandb_hook import export_results
from nemo_wandb_hook.pipeline import ExportRun, resolve_configs
from nemo_wandb_hook.report import ExportReport
from nemo_wandb_hook.results import locate_all
from nemo_wandb_hook.spool import Spool
from tests.support.results_fixtures import (
    ALL_METRICS,
    GSM8K,
    HUMANEVAL,
    INV,
    MMLU,
    REPO_ROOT,
    task_dirs,
)
from tests.support.wandb_backend import RecordedRun, WandbBackend

ENTITY, PROJECT = "myorg", "evals"
ORG = {"entity": ENTITY, "project": PROJECT}
ORG_ARGS = ["-o", f"entity={ENTITY}", "-o", f"project={PROJECT}"]

# task dir -> (benchmark, harness, flat metrics, rows in the `results` table)
EXAMPLE = {
    "lm-evaluation-harness.mmlu.0": ("mmlu", "lm-evaluation-harness", MMLU, 3),
    "gsm8k.1": ("gsm8k", "lm-evaluation-harness", GSM8K, 2),
    "bigcode-evaluation-harness.humaneval.2": ("humaneval", "bigcode-evaluation-harness",
                                               HUMANEVAL, 2),
}
ARTIFACT_FILES = ["config.yaml", "eval_factory_metrics.json", "metadata.yaml", "results.yml",
                  "run_config.yml"]
TABLE_COLUMNS = ["task", "benchmark", "harness", "metric", "score", "value", "stderr", "count"]
# Strings that must never leave the machine: the example's .secrets.env value and the
# token-shaped strings the tests plant in the configs and logs.
PLANTED_SECRETS = ["nvapi-demo-secret-not-real", "hf_" + "Q" * 30, "sk-" + "z" * 40]
HANG_GUARD = 300  # seconds; a guard against hangs, not a statement about speed


def per_task_run_id(task_dir: str) -> str:
    return f"{INV}-{task_dir.replace('.', '_')}"


def export_online(target: Any, **config: Any) -> ExportReport:
    return export_results(str(target), config={**ORG, "mode": "online", **config})


def summary_metrics(run: RecordedRun) -> dict[str, Any]:
    """The flat metric keys of a run's summary: no wandb `_...` keys, no `results` table."""
    return {k: v for k, v in run.user_summary().items() if k != "results"}


def results_table(run: RecordedRun) -> tuple[list[str], list[list[Any]]]:
    """The `results` table as uploaded: the summary points at the run file that holds it."""
    ref = run.summary["results"]
    assert ref["_type"] == "table-file", ref
    body = json.loads(run.files[ref["path"]])
    assert ref["nrows"] == len(body["data"])
    return body["columns"], body["data"]


def eval_artifact_versions(backend: WandbBackend, benchmark: str, invocation: str = INV):
    return backend.artifact_versions(ENTITY, PROJECT, f"{invocation}_{benchmark}")


def assert_artifact_matches_stage(backend: WandbBackend, stage: Path, task_dir: str,
                                  benchmark: str, invocation: str = INV) -> None:
    """Exactly one committed version, whose files are the staged files, byte for byte."""
    versions = eval_artifact_versions(backend, benchmark, invocation)
    assert len(versions) == 1, [(v.version, v.digest) for v in versions]
    (art,) = versions
    assert art.type == "evaluation_result"
    assert art.missing_files == []
    staged = stage / invocation / task_dir
    assert sorted(art.files) == ARTIFACT_FILES
    for name, data in art.files.items():
        assert data == (staged / name).read_bytes(), f"{benchmark}: {name} differs from stage"
        for secret in PLANTED_SECRETS:
            assert secret.encode() not in data, f"{secret} uploaded in {benchmark}/{name}"
    meta = json.loads(art.metadata or "{}")
    assert (meta["invocation_id"], meta["task"], meta["benchmark"]) == (invocation, task_dir,
                                                                        benchmark)


def assert_complete_multi_task_run(backend: WandbBackend, stage: Path,
                                   run_id: str = INV) -> RecordedRun:
    """The multi_task run of the example invocation holds every task, once."""
    assert backend.runs() == [(ENTITY, PROJECT, run_id)]
    run = backend.run(ENTITY, PROJECT, run_id)
    assert summary_metrics(run) == ALL_METRICS
    columns, rows = results_table(run)
    assert columns == TABLE_COLUMNS
    assert sorted(r[1] for r in rows) == sorted(
        b for b, _, _, n in EXAMPLE.values() for _ in range(n))
    config = run.user_config()
    assert config["benchmarks"] == ["gsm8k", "humaneval", "mmlu"]
    assert sorted(config["tasks"]) == sorted(EXAMPLE)
    for task_dir, (benchmark, *_rest) in EXAMPLE.items():
        assert_artifact_matches_stage(backend, stage, task_dir, benchmark)
    evals = [a for a in run.artifacts_logged if not a.startswith("run-")]
    assert sorted(evals) == sorted(f"{INV}_{b}:v0" for b, *_ in EXAMPLE.values())
    return run


def plant_secrets(inv_dir: Path) -> None:
    """Token-shaped strings in every task's run_config.yml (staged and uploaded, redacted)."""
    for task_dir in task_dirs(inv_dir):
        path = task_dir / "artifacts" / "run_config.yml"
        path.write_text(path.read_text() + f"env:\n  HF_TOKEN: {PLANTED_SECRETS[1]}\n"
                        f"  OPENAI_API_KEY: {PLANTED_SECRETS[2]}\n")


def lock_path(stage: Path, run_id: str = INV) -> Path:
    """Where `Spool.lock` keeps the run's lock file (RunLock writes `<slug>.holder` beside)."""
    return stage / "spool" / "locks" / f"{ENTITY}__{PROJECT}__{run_id}.lock"


def pending_names(stage: Path, run_id: str) -> list[str]:
    return [e.task for e in Spool(stage).pending(f"{ENTITY}__{PROJECT}__{run_id}")]


def export_with_lock_wait(target: Path, lock_wait: float, **config: Any) -> ExportReport:
    """`export`, but waiting at most `lock_wait` s for a busy run lock (export waits 60 s)."""
    locations = locate_all([str(target)], [])
    configs = resolve_configs(locations, {**ORG, "mode": "online", **config}, None, None)
    return ExportRun(lock_wait=lock_wait, wait_timeout=0.0).export(locations, configs)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start_cli(*args: str | Path) -> subprocess.Popen[str]:
    """`python -m nemo_wandb_hook ARGS` started, not waited for (several at the same time)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nemo_wandb_hook", *map(str, args)],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """A python process that takes the run lock with `RunLock`, says so, and sleeps."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nemo_wandb_hook.spool import RunLock\n"
        "with RunLock(Path(sys.argv[1]), timeout=30, stale_after=600):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise AssertionError(f"lock holder did not start: {line!r} {proc.stderr.read()}")
    return proc


def sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.monotonic()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start
