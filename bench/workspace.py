"""Fresh inputs and environments for each measurement: same for both sides."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import yaml

from nemo_wandb_hook import example
from nemo_wandb_hook.example import synthetic_task, write_invocation

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"  # results.json and profiles
# Inputs live outside any git work tree: wandb records the git state of the directory it runs
# in, and walking this checkout (with thousands of generated files) would skew every run.
SCRATCH = Path(os.environ.get("BENCH_SCRATCH") or tempfile.gettempdir()) / (
    f"nemo-wandb-hook-bench-{os.getuid()}")
ENTITY, PROJECT = "e", "p"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def in_git_work_tree(path: Path) -> Path | None:
    """The enclosing git work tree of `path`, if any (looks for .git, runs no git)."""
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_invocation_id() -> str:
    return secrets.token_hex(8)


class Workspace:
    """A scratch directory with an empty HOME and an invocation root; removed on cleanup."""

    def __init__(self, label: str, keep: bool = False) -> None:
        self.dir = SCRATCH / "runs" / label
        shutil.rmtree(self.dir, ignore_errors=True)
        self.home = self.dir / "home"
        self.root = self.dir / "jobs"
        self.logs = self.dir / "logs"
        for d in (self.home, self.root, self.logs):
            d.mkdir(parents=True)
        self.keep = keep

    def invocation(self, n: int, log_mode: str, invocation_id: str | None = None) -> Path:
        """`n` synthetic tasks in the launcher's layout, configured for entity e, project p;
        every results.yml is fresh (just written), as when the jobs have just ended."""
        wandb = {"entity": ENTITY, "project": PROJECT, "log_mode": log_mode}
        with c_yaml():
            inv = write_invocation(self.root, [synthetic_task(i) for i in range(n)],
                                   invocation_id=invocation_id or new_invocation_id(),
                                   wandb=wandb)
        set_results_age(inv, 0.0)
        return inv

    def cached_invocation(self, n: int, log_mode: str) -> Path:
        """Like `invocation`, but copied from a cache under bench/.work/cache that is written
        once per version of the generator: a 1,000-task invocation takes a while to write.
        (The launcher config inside still names the cache as its output_dir.)"""
        source = Path(example.__file__).read_bytes()
        key = hashlib.sha256(source + f"{n}:{log_mode}".encode()).hexdigest()[:12]
        cache = SCRATCH / "cache" / f"inv-{n}-{log_mode}-{key}"
        if not (cache / "complete").exists():
            shutil.rmtree(cache, ignore_errors=True)
            wandb = {"entity": ENTITY, "project": PROJECT, "log_mode": log_mode}
            with c_yaml():
                write_invocation(cache / "jobs", [synthetic_task(i) for i in range(n)],
                                 invocation_id=key + "0000", wandb=wandb)
            (cache / "complete").touch()
        shutil.copytree(cache / "jobs", self.root, dirs_exist_ok=True)
        inv = next(p for p in self.root.iterdir() if p.name.endswith(key + "0000"))
        set_results_age(inv, 0.0)
        return inv

    def env(self, offline: bool = True, base_url: str | None = None,
            api_key: str | None = None) -> dict[str, str]:
        """A clean environment: no W&B or Slurm variables leak in from ours."""
        env = {
            "PATH": SYSTEM_PATH,
            "HOME": str(self.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "WANDB_BASE_URL": base_url or f"http://127.0.0.1:{closed_port()}",
        }
        if offline:
            env["WANDB_MODE"] = "offline"
        if api_key:
            env["WANDB_API_KEY"] = api_key
        return env

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def c_yaml() -> Iterator[None]:
    """Generate with libyaml's dumper: every task embeds the whole launcher config, and the
    pure-Python dumper makes a 1,000-task invocation take minutes to write."""
    saved = yaml.safe_dump
    if hasattr(yaml, "CSafeDumper"):
        yaml.safe_dump = partial(yaml.dump, Dumper=yaml.CSafeDumper)
    try:
        yield
    finally:
        yaml.safe_dump = saved


def set_results_age(inv_dir: Path, age: float) -> None:
    """Make every task's results.yml look written `age` seconds ago (ours waits for a fresh
    results.yml to settle; an epilogue sees one that is seconds old at most)."""
    stamp = time.time() - age
    for results in inv_dir.glob("*/artifacts/results.yml"):
        os.utime(results, (stamp, stamp))


def task_dirs(inv_dir: Path) -> list[Path]:
    """Task directories in index order."""
    dirs = [p for p in inv_dir.iterdir() if p.is_dir() and p.name.rsplit(".", 1)[-1].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name.rsplit(".", 1)[-1]))


def invocation_id_of(inv_dir: Path) -> str:
    return inv_dir.name.rsplit("-", 1)[-1]
