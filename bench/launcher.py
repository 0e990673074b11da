"""nemo-evaluator-launcher 0.2.6 in its own virtual environment, and how to call its exporter.

The package's `wandb` extra is needed (plain `nemo-evaluator-launcher` does not pull wandb);
wandb is pinned to the version ours uses, so both sides drive the same wandb-core.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from bench.measure import Proc
from bench.workspace import ENTITY, PROJECT, REPO

VERSION = "0.2.6"
VENV = REPO / "bench" / ".launcher-venv"
BIN = VENV / "bin"
CLI = BIN / "nemo-evaluator-launcher"


def installed_versions() -> dict[str, str] | None:
    """Versions inside the launcher venv, or None when it is missing or broken."""
    if not CLI.exists():
        return None
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({p: v(p) for p in ('nemo-evaluator-launcher', 'wandb')}))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def ensure(log: Callable[[str], None] = print) -> dict[str, str]:
    """Create bench/.launcher-venv with the launcher (and ours' wandb version) if needed."""
    wandb_version = metadata.version("wandb")
    found = installed_versions()
    wanted = {"nemo-evaluator-launcher": VERSION, "wandb": wandb_version}
    if found == wanted:
        return found
    log(f"setting up {VENV} (nemo-evaluator-launcher[wandb]=={VERSION}, wandb=={wandb_version})")
    if not (BIN / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"nemo-evaluator-launcher[wandb]=={VERSION}", f"wandb=={wandb_version}"],
        check=True,
    )
    found = installed_versions()
    if found != wanted:
        raise RuntimeError(f"launcher venv has {found}, wanted {wanted}")
    return found


def write_export_config(path: Path, log_mode: str) -> Path:
    """The file the launcher's auto-export passes with --config."""
    body = {"export": {"wandb": {"entity": ENTITY, "project": PROJECT, "log_mode": log_mode}}}
    path.write_text(json.dumps(body, indent=1))  # JSON is YAML
    return path


def export_proc(
    ids: list[str], config: Path, job_root: Path, env: dict[str, str], cwd: Path, log: Path
) -> Proc:
    """`nemo-evaluator-launcher export <ids> --dest wandb ...` as its auto-export runs it:
    from the task's artifacts directory, offline runs land in `<cwd>/wandb/`."""
    argv = [str(CLI), "export", *ids, "--dest", "wandb", "--config", str(config),
            "--job-dirs", str(job_root)]
    return Proc(argv, env, cwd, log)
