"""Run process groups under bench/spawn.py and summarise repeated measurements."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPAWN = Path(__file__).with_name("spawn.py")


@dataclass
class Proc:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path


@dataclass
class GroupResult:
    """One measurement: a group of processes started together (or a single one)."""

    wall: float  # first start until the last process of the tree (daemons included) is gone
    wall_main: float  # first start until the last command itself exited
    cpu: float  # user+sys of every process in the tree
    user: float
    sys: float
    maxrss_mb: float  # the largest single process of the tree
    rcs: list[int]
    timed_out: int
    orphans: int
    other_cpu: float = 0.0  # CPU seconds other processes on the machine used meanwhile
    procs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall": self.wall, "wall_main": self.wall_main, "cpu": self.cpu,
            "user": self.user, "sys": self.sys, "maxrss_mb": self.maxrss_mb,
            "rcs": sorted(set(self.rcs)), "timed_out": self.timed_out, "orphans": self.orphans,
            "other_cpu": self.other_cpu,
            "per_process_wall": [round(p["wall"], 3) for p in self.procs],
        }


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.3, window: float = 0.5) -> float:
    """Wait (at most max_wait s) until the machine is nearly idle: fewer than `threshold`
    CPUs busy over `window` s. Other people's test runs share this machine. Returns the
    busy CPUs seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_cpu_seconds()
        time.sleep(window)
        load = (busy_cpu_seconds() - before) / window
        if load < threshold or time.monotonic() >= deadline:
            return load


def run_group(
    procs: list[Proc], workdir: Path, timeout: float = 900.0, max_parallel: int | None = None
) -> GroupResult:
    """Start `procs` (all at once unless max_parallel) and wait for every descendant."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spawn-spec.json", workdir / "spawn-out.json"
    spec = {
        "procs": [{"argv": p.argv, "env": p.env, "cwd": str(p.cwd), "log": str(p.log)}
                  for p in procs],
        "max_parallel": max_parallel,
        "timeout": timeout,
    }
    spec_path.write_text(json.dumps(spec, indent=1))
    busy = busy_cpu_seconds()
    subprocess.run([sys.executable, "-I", str(SPAWN), str(spec_path), str(out_path)],
                   check=True, timeout=timeout + 120)
    busy = busy_cpu_seconds() - busy
    out = json.loads(out_path.read_text())
    main = [p for p in out["procs"] if p is not None]
    every = main + out["orphans"]
    cpu = sum(p["cpu"] for p in every)
    return GroupResult(
        wall=out["wall_all"],
        wall_main=out["wall_main"],
        cpu=cpu,
        user=sum(p["user"] for p in every),
        sys=sum(p["sys"] for p in every),
        maxrss_mb=max((p["maxrss_kb"] for p in every), default=0) / 1024,
        rcs=[p["rc"] for p in main],
        timed_out=sum(1 for p in main if p["timed_out"]),
        orphans=len(out["orphans"]),
        other_cpu=max(0.0, busy - cpu),
        procs=main,
    )


def run_one(proc: Proc, workdir: Path, timeout: float = 900.0) -> GroupResult:
    return run_group([proc], workdir, timeout)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": [round(v, 4) for v in values]}


def summarise(results: list[GroupResult]) -> dict[str, Any]:
    """Median / min / max of each metric over repeated GroupResults."""
    return {
        "wall": stats([r.wall for r in results]),
        "wall_main": stats([r.wall_main for r in results]),
        "cpu": stats([r.cpu for r in results]),
        "maxrss_mb": stats([r.maxrss_mb for r in results]),
        "other_cpu": stats([r.other_cpu for r in results]),
        "rcs": sorted({rc for r in results for rc in r.rcs}),
        "timed_out": sum(r.timed_out for r in results),
        "runs": [r.as_dict() for r in results],
    }


def ratio(ours: dict[str, Any], theirs: dict[str, Any], metric: str) -> float | None:
    a, b = ours.get(metric, {}).get("median"), theirs.get(metric, {}).get("median")
    if a is None or not b:
        return None
    return a / b
