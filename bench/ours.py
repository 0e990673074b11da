"""How to call nemo-wandb-hook: `hook` when this checkout has it, `export` otherwise."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.measure import Proc
from bench.workspace import ENTITY, PROJECT, REPO

PYTHON = Path(sys.executable)
CLI = PYTHON.parent / "nemo-wandb-hook"
if not CLI.exists():
    CLI = REPO / ".venv" / "bin" / "nemo-wandb-hook"


@dataclass(frozen=True)
class Capabilities:
    hook: bool
    status: bool


def _has_command(name: str) -> bool:
    proc = subprocess.run([str(CLI), name, "--help"], capture_output=True, text=True)
    return proc.returncode == 0


@cache
def capabilities() -> Capabilities:
    return Capabilities(hook=_has_command("hook"), status=_has_command("status"))


def _keys(log_mode: str) -> list[str]:
    return ["-o", f"entity={ENTITY}", "-o", f"project={PROJECT}", "-o", f"log_mode={log_mode}"]


def task_args(task_dir: Path, log_mode: str, mode: str | None) -> list[str]:
    """Arguments (after the program) that export one task; mode None means ours' default
    (auto: probe W&B, fall back to an offline run)."""
    if capabilities().hook:
        args = ["hook", "--task-dir", str(task_dir), *_keys(log_mode)]
        return args + (["-o", f"mode={mode}"] if mode else [])
    args = ["export", str(task_dir), *_keys(log_mode)]
    if mode == "offline":
        return [*args, "--offline"]
    return args + (["-o", f"mode={mode}"] if mode else [])


def task_command() -> str:
    return "hook --task-dir" if capabilities().hook else "export <task dir>"


def task_proc(task_dir: Path, log_mode: str, mode: str | None, env: dict[str, str],
              cwd: Path, log: Path, importtime: bool = False) -> Proc:
    args = task_args(task_dir, log_mode, mode)
    if importtime:
        return Proc([str(PYTHON), "-X", "importtime", "-m", "nemo_wandb_hook", *args],
                    env, cwd, log)
    return Proc([str(CLI), *args], env, cwd, log)


def invocation_proc(invocation_id: str, job_root: Path, log_mode: str, env: dict[str, str],
                    cwd: Path, log: Path) -> Proc:
    argv = [str(CLI), "export", invocation_id, "--job-dirs", str(job_root), "--offline",
            *_keys(log_mode)]
    return Proc(argv, env, cwd, log)


def status_proc(inv_dir: Path, env: dict[str, str], cwd: Path, log: Path) -> Proc:
    return Proc([str(CLI), "status", str(inv_dir)], env, cwd, log)


def profile_argv(args: list[str], out: Path) -> list[str] | None:
    """The same call under pyinstrument (a session file), or None when it is not installed."""
    pyinstrument = PYTHON.parent / "pyinstrument"
    if not pyinstrument.exists():
        return None
    return [str(pyinstrument), "-i", "0.001", "-o", str(out), "-r", "pyisession",
            "-m", "nemo_wandb_hook", *args]


def spool_counts(inv_dir: Path) -> dict[str, int]:
    """Entries left pending and delivered in the default stage directory."""
    spool = inv_dir / "wandb-export" / "spool"
    return {kind: sum(1 for _ in (spool / kind).glob("*/*.json")) for kind in ("pending", "done")}


def imported_modules(importtime_log: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def wandb_imported(importtime_log: str) -> bool:
    return any(m == "wandb" or m.startswith("wandb.") for m in imported_modules(importtime_log))
