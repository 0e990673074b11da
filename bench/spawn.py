"""Run a group of commands and account for every process they start (stdlib only).

Usage: python spawn.py SPEC.json OUT.json

SPEC: {"procs": [{"argv": [...], "env": {...}, "cwd": "...", "log": "..."}, ...],
       "max_parallel": int | null, "timeout": seconds}

This process makes itself a child subreaper, so daemons a command leaves behind (wandb-core,
say) are re-parented here and reaped, and their CPU time counts. It starts the commands (all
at once unless max_parallel), reaps with wait4 until nothing is left, and writes per process:
exit status, wall time, user+sys CPU and peak RSS (each including the descendants it reaped),
plus the orphans it reaped itself. Commands still running at the timeout are killed (their
process group) and reported with "timed_out".
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def start(proc: dict) -> int:
    pid = os.fork()
    if pid == 0:  # child: own process group, its own cwd and log, then exec
        try:
            os.setsid()
            os.chdir(proc["cwd"])
            fd = os.open(proc["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.execve(proc["argv"][0], proc["argv"], proc["env"])
        except BaseException as err:  # exec failed: say why in the log, exit 127
            os.write(2, f"spawn: cannot run {proc['argv']}: {err}\n".encode())
        finally:
            os._exit(127)
    return pid


def children() -> list[int]:
    """Our direct children still running (commands and daemons re-parented to us)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def usage(ru: resource.struct_rusage) -> dict:
    return {"cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime, "sys": ru.ru_stime,
            "maxrss_kb": ru.ru_maxrss}


def main(spec_path: str, out_path: str) -> int:
    with open(spec_path) as fh:
        spec = json.load(fh)
    procs = spec["procs"]
    limit = spec.get("max_parallel") or len(procs)
    timeout = float(spec.get("timeout") or 3600)
    subreaper = become_subreaper()
    results: list[dict | None] = [None] * len(procs)
    running: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    orphans: list[dict] = []
    queue = list(range(len(procs)))
    timed_out: set[int] = set()
    t0 = time.monotonic()
    last_main_exit = t0

    def launch() -> None:
        while queue and len(running) < limit:
            index = queue.pop(0)
            running[start(procs[index])] = (index, time.monotonic())

    launch()
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        now = time.monotonic()
        if pid == 0:
            if now - t0 > timeout:
                for other in set(running) - timed_out:
                    timed_out.add(other)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(other, signal.SIGKILL)
                for orphan in children():  # re-parented daemons outside those groups
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(orphan, signal.SIGKILL)
            time.sleep(0.005)
            continue
        if pid in running:
            index, started = running.pop(pid)
            last_main_exit = now
            results[index] = {
                "pid": pid,
                "rc": os.waitstatus_to_exitcode(status),
                "start": started - t0,
                "wall": now - started,
                "timed_out": pid in timed_out,
                **usage(ru),
            }
            launch()
        else:
            orphans.append({"pid": pid, "at": now - t0, **usage(ru)})
    end = time.monotonic()
    with open(out_path, "w") as fh:
        json.dump({"subreaper": subreaper, "wall_all": end - t0,
                   "wall_main": last_main_exit - t0, "procs": results, "orphans": orphans},
                  fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
