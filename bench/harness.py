"""What every scenario uses: the run context, A/B alternation, result rows and targets,
outcome checks, profiling on a missed target, and the helper that holds a run's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import launcher, ours, pieces, profiling
from bench.measure import GroupResult, ratio, summarise, wait_quiet
from bench.workspace import ENTITY, PROJECT, invocation_id_of

OURS, LAUNCHER = "ours", "launcher"
RSS_BUDGET_MB = 150  # per exporter process tree (measured ~80), to cap a burst by memory
HOLDER = """
import sys
from pathlib import Path
from nemo_wandb_hook.spool import RunLock
with RunLock(Path(sys.argv[1]), timeout=10, stale_after=3600):
    print("held", flush=True)
    sys.stdin.read()  # hold until the bench closes our stdin
"""


@dataclass
class Context:
    repeats: int
    burst_sizes: list[int]
    invocation_sizes: list[int]
    slow_repeats: int  # launcher runs where it is bound by its own timeouts (W&B unreachable)
    timeout: float
    max_parallel: int | None
    keep: bool
    profile: bool
    profiles_dir: Path
    quiet_wait: float = 5.0  # before each measurement, wait this long at most for an idle box
    prime_status: bool = True  # export the 1,000 tasks to measure status on a full spool
    profile_export_1000: bool = False
    log: Callable[[str], None] = print


@dataclass
class Sample:
    result: GroupResult
    info: dict[str, Any] = field(default_factory=dict)
    completeness: str = ""


# --------------------------------------------------------------------------- helpers


def alternate(ctx: Context, label: str, sides: dict[str, Callable[[int], Sample]],
              repeats: dict[str, int] | None = None) -> dict[str, list[Sample]]:
    """Run the sides in turn, repeat after repeat: A B A B ..."""
    counts = {side: (repeats or {}).get(side, ctx.repeats) for side in sides}
    samples: dict[str, list[Sample]] = {side: [] for side in sides}
    for r in range(max(counts.values())):
        for side, run in sides.items():
            if r >= counts[side]:
                continue
            if ctx.quiet_wait > 0:
                load = wait_quiet(ctx.quiet_wait)
                if load >= 0.3:
                    ctx.log(f"  (machine still busy: {load:.1f} CPUs used by others)")
            sample = run(r)
            samples[side].append(sample)
            res = sample.result
            ctx.log(f"  [{label}] {side} #{r + 1}: wall {res.wall:.2f}s cpu {res.cpu:.2f}s "
                    f"rss {res.maxrss_mb:.0f}MB rc {sorted(set(res.rcs))} "
                    f"others {res.other_cpu:.1f}s"
                    + (f" TIMED OUT x{res.timed_out}" if res.timed_out else "")
                    + (f" | {sample.completeness}" if sample.completeness else ""))
    return samples


def side_summary(samples: list[Sample]) -> dict[str, Any]:
    out = summarise([s.result for s in samples])
    out["completeness"] = sorted({s.completeness for s in samples if s.completeness})
    out["info"] = samples[-1].info if samples else {}
    return out


def make_row(rid: str, scenario: int, title: str, params: dict[str, Any],
             samples: dict[str, list[Sample]]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": rid, "scenario": scenario, "title": title, "params": params,
                           "targets": [], "notes": []}
    for side, got in samples.items():
        row[side] = side_summary(got)
    if OURS in samples and LAUNCHER in samples:
        row["ratios"] = {m: ratio(row[OURS], row[LAUNCHER], m)
                         for m in ("wall", "cpu", "maxrss_mb")}
    return row


def add_target(row: dict[str, Any], what: str, value: float | None, limit: float,
               unit: str = "x") -> bool:
    met = value is not None and value <= limit
    row["targets"].append({"what": what, "value": value, "limit": limit, "unit": unit,
                           "met": met})
    return met


def memory_cap(n: int) -> int | None:
    """None (start all n at once) unless n exporter trees would not fit in memory."""
    try:
        with open("/proc/meminfo") as fh:
            avail_kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return None
    cap = max(8, avail_kb // 1024 // RSS_BUDGET_MB)
    return None if n <= cap else cap


def ours_outcome(inv_dir: Path, expected: int) -> tuple[dict[str, Any], str]:
    info = pieces.inspect(inv_dir, expected)
    info["spool"] = ours.spool_counts(inv_dir)
    text = (f"{pieces.describe(info)}; spool {info['spool']['pending']} pending, "
            f"{info['spool']['done']} delivered")
    return info, text


def launcher_outcome(root: Path, expected: int) -> tuple[dict[str, Any], str]:
    info = pieces.inspect(root, expected)
    return info, pieces.describe(info)


def maybe_profile(ctx: Context, row: dict[str, Any], name: str, args: list[str],
                  env: dict[str, str], cwd: Path) -> None:
    """Profile ours when one of the row's targets was missed."""
    if not ctx.profile or all(t["met"] for t in row["targets"]):
        return
    ctx.log(f"  profiling ours: {name}")
    found = profiling.profile(name, args, env, cwd, ctx.profiles_dir)
    if found is None:
        row["notes"].append("target missed; pyinstrument is not installed in the venv, so no "
                            "profile (pip install pyinstrument)")
    else:
        row.setdefault("profiles", []).append(found)


def hold_lock(inv_dir: Path) -> subprocess.Popen:
    """A helper process holding the multi_task run's RunLock, as a flushing hook would."""
    slug = f"{ENTITY}__{PROJECT}__{invocation_id_of(inv_dir)}"
    lock = inv_dir / "wandb-export" / "spool" / "locks" / f"{slug}.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "held":
        proc.kill()
        raise RuntimeError(f"could not take the lock {lock}")
    return proc


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(timeout=30)


def machine() -> dict[str, Any]:
    """nproc, memory, CPU model, Python, wandb and launcher versions."""
    from importlib.metadata import version

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "wandb": version("wandb"),
        "nemo_wandb_hook": version("nemo-wandb-hook"),
        "launcher": launcher.installed_versions(),
        "kernel": os.uname().release,
    }
