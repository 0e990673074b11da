"""The benchmark scenarios. Each measures ours and the launcher alternately (A B A B) on fresh,
identical inputs and returns rows for the report."""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import launcher, ours, pieces, profiling
from bench.harness import (
    LAUNCHER,
    OURS,
    Context,
    Sample,
    add_target,
    alternate,
    hold_lock,
    launcher_outcome,
    make_row,
    maybe_profile,
    memory_cap,
    ours_outcome,
    release,
)
from bench.measure import Proc, run_group, run_one
from bench.workspace import (
    ENTITY,
    PROJECT,
    REPO,
    Workspace,
    closed_port,
    invocation_id_of,
    set_results_age,
    task_dirs,
)

FAKE_KEY = "a" * 40


# --------------------------------------------------------------------------- 1: array burst


def _burst_ours(ctx: Context, n: int, cap: int | None, r: int) -> Sample:
    ws = Workspace(f"s1-n{n}-ours-{r}", ctx.keep)
    inv = ws.invocation(n, "multi_task")
    env = ws.env(offline=True)
    procs = [ours.task_proc(td, "multi_task", "offline", env, td / "artifacts",
                            ws.logs / f"{td.name}.log") for td in task_dirs(inv)]
    res = run_group(procs, ws.dir, ctx.timeout, cap)
    info, text = ours_outcome(inv, n)
    ws.cleanup()
    return Sample(res, info, text)


def _burst_launcher(ctx: Context, n: int, cap: int | None, r: int) -> Sample:
    ws = Workspace(f"s1-n{n}-launcher-{r}", ctx.keep)
    inv = ws.invocation(n, "multi_task")
    inv_id = invocation_id_of(inv)
    env = ws.env(offline=True)
    config = launcher.write_export_config(ws.dir / "export_config.yml", "multi_task")
    procs = [launcher.export_proc([f"{inv_id}.{i}"], config, ws.root, env, td / "artifacts",
                                  ws.logs / f"{td.name}.log")
             for i, td in enumerate(task_dirs(inv))]
    res = run_group(procs, ws.dir, ctx.timeout, cap)
    info, text = launcher_outcome(inv, n)
    ws.cleanup()
    return Sample(res, info, text)


def _single_task_profile(ctx: Context, row: dict[str, Any], name: str, lock_held: bool,
                         age: float = 0.0) -> None:
    """Profile one task's export offline: the lock holder's path, or the enqueue-only path."""
    if not ctx.profile or all(t["met"] for t in row["targets"]):
        return
    ws = Workspace(f"profile-{name}", ctx.keep)
    inv = ws.invocation(2, "multi_task")
    set_results_age(inv, age)
    td = task_dirs(inv)[0]
    holder = hold_lock(inv) if lock_held else None
    try:
        maybe_profile(ctx, row, name, ours.task_args(td, "multi_task", "offline"),
                      ws.env(offline=True), td / "artifacts")
    finally:
        if holder is not None:
            release(holder)
        ws.cleanup()


def burst(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for n in ctx.burst_sizes:
        cap = ctx.max_parallel or memory_cap(n)
        ctx.log(f"scenario 1: array burst, multi_task, N={n}"
                + (f" (at most {cap} at once)" if cap else ""))
        samples = alternate(ctx, f"burst N={n}", {
            OURS: partial(_burst_ours, ctx, n, cap),
            LAUNCHER: partial(_burst_launcher, ctx, n, cap),
        })
        row = make_row(f"1-burst-{n}", 1, f"Array burst, multi_task, N={n}", {
            "n": n, "log_mode": "multi_task", "max_parallel": cap,
            "ours_command": ours.task_command(),
            "launcher_command": "export <inv>.<idx> (cwd: the task's artifacts dir)",
        }, samples)
        if n == 32:
            add_target(row, "wall ours/launcher", row["ratios"]["wall"], 0.25)
            add_target(row, "CPU ours/launcher", row["ratios"]["cpu"], 0.2)
            _single_task_profile(ctx, row, "s1-lock-holder", lock_held=False)
            _single_task_profile(ctx, row, "s1-enqueue-only", lock_held=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- 2: one call


def _invocation_ours(ctx: Context, n: int, mode: str, r: int) -> Sample:
    ws = Workspace(f"s2-n{n}-{mode}-ours-{r}", ctx.keep)
    inv = ws.invocation(n, mode)
    proc = ours.invocation_proc(invocation_id_of(inv), ws.root, mode, ws.env(offline=True),
                                ws.dir, ws.logs / "export.log")
    res = run_one(proc, ws.dir, ctx.timeout)
    info, text = ours_outcome(inv, n)
    ws.cleanup()
    return Sample(res, info, text)


def _invocation_launcher(ctx: Context, n: int, mode: str, r: int) -> Sample:
    ws = Workspace(f"s2-n{n}-{mode}-launcher-{r}", ctx.keep)
    inv = ws.invocation(n, mode)
    config = launcher.write_export_config(ws.dir / "export_config.yml", mode)
    proc = launcher.export_proc([invocation_id_of(inv)], config, ws.root, ws.env(offline=True),
                                ws.dir, ws.logs / "export.log")
    res = run_one(proc, ws.dir, ctx.timeout)
    info, text = launcher_outcome(ws.dir, n)
    ws.cleanup()
    return Sample(res, info, text)


def whole_invocation(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for n in ctx.invocation_sizes:
        for mode in ("per_task", "multi_task"):
            ctx.log(f"scenario 2: whole invocation in one call, {mode}, N={n}")
            samples = alternate(ctx, f"invocation {mode} N={n}", {
                OURS: partial(_invocation_ours, ctx, n, mode),
                LAUNCHER: partial(_invocation_launcher, ctx, n, mode),
            })
            row = make_row(f"2-invocation-{mode}-{n}", 2,
                           f"Whole invocation, one call, {mode}, N={n}",
                           {"n": n, "log_mode": mode, "ours_command": "export <inv> --offline",
                            "launcher_command": "export <inv>"}, samples)
            add_target(row, "wall ours/launcher", row["ratios"]["wall"], 0.5)
            if n == max(ctx.invocation_sizes):
                ws = Workspace(f"profile-s2-{mode}", ctx.keep)
                inv = ws.invocation(n, mode)
                args = ["export", invocation_id_of(inv), "--job-dirs", str(ws.root),
                        "--offline", "-o", f"entity={ENTITY}", "-o", f"project={PROJECT}",
                        "-o", f"log_mode={mode}"]
                maybe_profile(ctx, row, f"s2-{mode}-{n}", args, ws.env(offline=True), ws.dir)
                ws.cleanup()
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- 3: epilogue


def _one_task(ws: Workspace) -> tuple[Path, Path]:
    """A 4-task invocation; the epilogue of its task 1 is measured."""
    inv = ws.invocation(4, "multi_task")
    return inv, task_dirs(inv)[1]


def _epilogue_ours(ctx: Context, kind: str, env_for: Callable[[Workspace], dict[str, str]],
                   mode: str | None, check: Callable[[Path], tuple[dict, str]],
                   r: int) -> Sample:
    ws = Workspace(f"s3-{kind}-ours-{r}", ctx.keep)
    inv, td = _one_task(ws)
    proc = ours.task_proc(td, "multi_task", mode, env_for(ws), td / "artifacts",
                          ws.logs / "hook.log")
    res = run_one(proc, ws.dir, ctx.timeout)
    info, text = check(inv)
    ws.cleanup()
    return Sample(res, info, text)


def _epilogue_launcher(ctx: Context, kind: str, env_for: Callable[[Workspace], dict[str, str]],
                       check: Callable[[Path], tuple[dict, str]], r: int) -> Sample:
    ws = Workspace(f"s3-{kind}-launcher-{r}", ctx.keep)
    inv, td = _one_task(ws)
    config = launcher.write_export_config(ws.dir / "export_config.yml", "multi_task")
    proc = launcher.export_proc([f"{invocation_id_of(inv)}.1"], config, ws.root, env_for(ws),
                                td / "artifacts", ws.logs / "export.log")
    res = run_one(proc, ws.dir, ctx.timeout)
    info, text = check(inv)
    ws.cleanup()
    return Sample(res, info, text)


def _server_check(backend: Any, inv: Path) -> tuple[dict[str, Any], str]:
    try:
        run = backend.run(ENTITY, PROJECT, invocation_id_of(inv))
    except KeyError:
        return {"server_tasks": 0}, "no run on the server"
    tasks = sorted(pieces.tasks_in(run.summary))
    return {"server_tasks": tasks}, f"server run has tasks {tasks}"


def _offline_check(inv: Path, ours_side: bool) -> tuple[dict[str, Any], str]:
    info, text = ours_outcome(inv, 1) if ours_side else launcher_outcome(inv, 1)
    local = pieces.local_online_runs(inv)
    if local:
        info["local_online_runs"] = local
        text += (f"; {len(local)} local online-run log(s) holding "
                 f"{sum(len(x['tasks']) for x in local)} task(s)")
    return info, text


def backend_class() -> Any | None:
    if not (REPO / "tests" / "support" / "wandb_backend.py").exists():
        return None
    try:
        from tests.support.wandb_backend import WandbBackend
    except ImportError:
        return None
    return WandbBackend


def epilogue(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    backend_cls = backend_class()
    if backend_cls is None:
        rows.append({"id": "3a-reachable", "scenario": 3, "title": "Epilogue, W&B reachable",
                     "skipped": "tests/support/wandb_backend.py (WandbBackend) not available",
                     "targets": [], "notes": []})
    else:
        ctx.log("scenario 3a: one task's epilogue, W&B reachable (fake backend, online)")
        backend = backend_cls().start()
        try:
            def env_online(ws: Workspace) -> dict[str, str]:
                return ws.env(offline=False, base_url=backend.base_url, api_key=backend.api_key)

            check = partial(_server_check, backend)
            samples = alternate(ctx, "epilogue reachable", {
                OURS: partial(_epilogue_ours, ctx, "reachable", env_online, "online", check),
                LAUNCHER: partial(_epilogue_launcher, ctx, "reachable", env_online, check),
            })
        finally:
            backend.stop()
        row = make_row("3a-reachable", 3, "Epilogue, one task, W&B reachable (fake, online)", {
            "ours_command": f"{ours.task_command()} -o mode=online",
            "launcher_command": "export <inv>.1 (online)", "log_mode": "multi_task",
        }, samples)
        if backend.unhandled:
            row["notes"].append("fake backend did not know: "
                                + ", ".join(sorted(set(backend.unhandled))))
        rows.append(row)

    ctx.log("scenario 3b: one task's epilogue, W&B unreachable (closed port, API key set)")
    port = closed_port()

    def env_closed(ws: Workspace) -> dict[str, str]:
        return ws.env(offline=False, base_url=f"http://127.0.0.1:{port}", api_key=FAKE_KEY)

    samples = alternate(ctx, "epilogue unreachable", {
        OURS: partial(_epilogue_ours, ctx, "unreachable", env_closed, None,
                      partial(_offline_check, ours_side=True)),
        LAUNCHER: partial(_epilogue_launcher, ctx, "unreachable", env_closed,
                          partial(_offline_check, ours_side=False)),
    }, repeats={LAUNCHER: min(ctx.repeats, ctx.slow_repeats)})
    row = make_row("3b-unreachable", 3, "Epilogue, one task, W&B unreachable (closed port)", {
        "ours_command": f"{ours.task_command()} (mode auto)",
        "launcher_command": "export <inv>.1 (no WANDB_MODE)",
        "launcher_repeats": min(ctx.repeats, ctx.slow_repeats),
        "env": "WANDB_BASE_URL=http://127.0.0.1:<closed port>, WANDB_API_KEY=<40 x 'a'>",
    }, samples)
    add_target(row, "ours wall (median)", row[OURS]["wall"]["median"], 5.0, "s")
    if row[LAUNCHER]["rcs"] == [0] and row[LAUNCHER]["info"].get("pieces", 0) == 0:
        row["notes"].append("the launcher exits 0 although nothing was exported or saved")
    rows.append(row)
    ws = Workspace("profile-s3b", ctx.keep)
    _, td = _one_task(ws)
    maybe_profile(ctx, row, "s3b-unreachable", ours.task_args(td, "multi_task", None),
                  env_closed(ws), td / "artifacts")
    ws.cleanup()

    ctx.log("scenario 3c (extra): W&B host accepts connections but never answers; ours only")
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(256)
        hole = blackhole.getsockname()[1]

        def env_hole(ws: Workspace) -> dict[str, str]:
            return ws.env(offline=False, base_url=f"http://127.0.0.1:{hole}", api_key=FAKE_KEY)

        samples = alternate(ctx, "epilogue black hole", {
            OURS: partial(_epilogue_ours, ctx, "blackhole", env_hole, None,
                          partial(_offline_check, ours_side=True)),
        })
    row = make_row("3c-blackhole", 3, "Epilogue, one task, W&B host silent (ours only)", {
        "ours_command": f"{ours.task_command()} (mode auto)",
        "env": "WANDB_BASE_URL=a 127.0.0.1 port that accepts but never answers",
    }, samples)
    add_target(row, "ours wall (median)", row[OURS]["wall"]["median"], 5.0, "s")
    rows.append(row)
    return rows


# --------------------------------------------------------------------------- 4: fast path


def _fast_path_variant(ctx: Context, age: float) -> dict[str, Any]:
    """Hooks of one task each while a helper holds the run's lock; results.yml `age` s old."""
    fresh = age < 1
    label = "fresh" if fresh else "settled"
    ctx.log(f"scenario 4: fast path, lock held elsewhere (enqueue only), {label} results.yml")
    ws = Workspace(f"s4-{label}-ours", ctx.keep)
    inv = ws.invocation(ctx.repeats + 1, "multi_task")
    tasks = task_dirs(inv)
    env = ws.env(offline=True)
    holder = hold_lock(inv)
    try:
        def ours_run(r: int) -> Sample:
            td = tasks[r]
            set_results_age(inv, age)
            res = run_one(ours.task_proc(td, "multi_task", "offline", env, td / "artifacts",
                                         ws.logs / f"hook-{r}.log"), ws.dir / f"m{r}")
            return Sample(res, {}, "")

        def launcher_run(r: int) -> Sample:
            lws = Workspace(f"s4-{label}-launcher-{r}", ctx.keep)
            linv = lws.invocation(2, "multi_task")
            set_results_age(linv, age)
            td = task_dirs(linv)[0]
            config = launcher.write_export_config(lws.dir / "export_config.yml", "multi_task")
            proc = launcher.export_proc([f"{invocation_id_of(linv)}.0"], config, lws.root,
                                        lws.env(offline=True), td / "artifacts",
                                        lws.logs / "export.log")
            res = run_one(proc, lws.dir, ctx.timeout)
            info, text = launcher_outcome(linv, 1)
            lws.cleanup()
            return Sample(res, info, text)

        samples = alternate(ctx, f"fast path {label}", {OURS: ours_run, LAUNCHER: launcher_run})
        td = tasks[ctx.repeats]
        log = ws.logs / "importtime.log"
        set_results_age(inv, age)
        imp = run_one(ours.task_proc(td, "multi_task", "offline", env, td / "artifacts", log,
                                     importtime=True), ws.dir / "importtime")
        wandb_loaded = ours.wandb_imported(log.read_text())
        spool = ours.spool_counts(inv)
        written = pieces.inspect(inv, ctx.repeats + 1)["pieces"]
    finally:
        release(holder)
    row = make_row(f"4-fast-path-{label}", 4,
                   f"Fast path: lock held elsewhere, enqueue only, {label} results.yml", {
                       "ours_command": ours.task_command(),
                       "results_yml_age_s": age,
                       "launcher_reference": "export <inv>.0 offline (the launcher has no "
                                             "enqueue-only path)",
                   }, samples)
    row[OURS]["info"] = {"wandb_imported": wandb_loaded, "spool": spool,
                         "offline_pieces_written": written, "importtime_rc": imp.rcs}
    row[OURS]["completeness"] = [
        f"{spool['pending']} entries left pending for the lock holder, {written} runs written; "
        f"wandb {'IS' if wandb_loaded else 'is not'} imported"]
    add_target(row, "ours wall (median)", row[OURS]["wall"]["median"], 0.3, "s")
    add_target(row, "wandb imported on this path (0 = no)", float(wandb_loaded), 0.0, "")
    if written:
        row["notes"].append("ours wrote a run although the lock was held: the measured path is "
                            "not the enqueue-only one")
    ws.cleanup()
    if not all(t["met"] for t in row["targets"]):
        _single_task_profile(ctx, row, f"s4-enqueue-only-{label}", lock_held=True, age=age)
    return row


def fast_path(ctx: Context) -> list[dict[str, Any]]:
    return [_fast_path_variant(ctx, 0.0), _fast_path_variant(ctx, 10.0)]


# --------------------------------------------------------------------------- 5: scale


def _status(ctx: Context) -> list[dict[str, Any]]:
    title = "status over 1,000 tasks"
    if not ours.capabilities().status:
        return [{"id": "5a-status", "scenario": 5, "title": title, "targets": [], "notes": [],
                 "skipped": "not yet available (`nemo-wandb-hook status --help` fails)"}]
    ctx.log("scenario 5a: status over 1,000 tasks")
    ws = Workspace("s5-status", ctx.keep)
    inv = ws.cached_invocation(1000, "multi_task")
    env = ws.env(offline=True)
    rows = []

    def measure(state: str, slug: str) -> dict[str, Any]:
        def run(r: int) -> Sample:
            res = run_one(ours.status_proc(inv, env, ws.dir, ws.logs / f"status-{slug}-{r}.log"),
                          ws.dir / f"m-{slug}-{r}", ctx.timeout)
            return Sample(res, {}, "")

        samples = alternate(ctx, f"status {state}", {OURS: run})
        row = make_row(f"5a-status-{slug}", 5, f"{title}, {state}",
                       {"n": 1000, "ours_command": "status <inv dir>"}, samples)
        if row[OURS]["rcs"] != [0]:
            tail = (ws.logs / f"status-{slug}-0.log").read_text()[-400:]
            row["notes"].append(f"status exited {row[OURS]['rcs']}: {tail.strip()}")
        add_target(row, "ours wall (median)", row[OURS]["wall"]["median"], 1.0, "s")
        return row

    rows.append(measure("nothing exported yet", "new"))
    if not ctx.prime_status:
        ws.cleanup()
        return rows
    ctx.log("  exporting the 1,000 tasks once (ours, offline, multi_task)")
    proc = ours.invocation_proc(invocation_id_of(inv), ws.root, "multi_task", env, ws.dir,
                                ws.logs / "export-1000.log")
    res = run_one(proc, ws.dir / "m-export", ctx.timeout)
    info, text = ours_outcome(inv, 1000)
    ctx.log(f"  [export 1000] ours: wall {res.wall:.2f}s cpu {res.cpu:.2f}s | {text}")
    export_row = make_row("5c-export-1000", 5, "Extra: one `export` of a 1,000-task invocation "
                          "(ours only, once)", {"n": 1000, "log_mode": "multi_task"},
                          {OURS: [Sample(res, info, text)]})
    if ctx.profile_export_1000:  # about 3 minutes under the profiler
        ctx.log("  profiling ours: s5-export-1000")
        prof_ws = Workspace("profile-s5-export", ctx.keep)
        prof_inv = prof_ws.cached_invocation(1000, "multi_task")
        args = ["export", invocation_id_of(prof_inv), "--job-dirs", str(prof_ws.root),
                "--offline", "-o", f"entity={ENTITY}", "-o", f"project={PROJECT}",
                "-o", "log_mode=multi_task"]
        found = profiling.profile("s5-export-1000", args, env, prof_ws.dir, ctx.profiles_dir)
        if found:
            export_row["profiles"] = [found]
        prof_ws.cleanup()
    else:
        export_row["notes"].append("profile it with `bench/run.py --only 5 --profile-export-1000`")
    rows.append(measure("all exported", "exported"))
    rows.append(export_row)
    ws.cleanup()
    return rows


def _big_log_run(ctx: Context, side: str, big: bool, r: int) -> Sample:
    ws = Workspace(f"s5-log-{side}-{'big' if big else 'plain'}-{r}", ctx.keep)
    inv = ws.invocation(1, "multi_task")
    td = task_dirs(inv)[0]
    if big:
        with open(td / "logs" / "huge.log", "wb") as fh:  # sparse: no disk used, reads zeros
            fh.truncate(1 << 30)
    env = ws.env(offline=True)
    log = ws.logs / "run.log"
    if side == OURS:
        proc: Proc = ours.task_proc(td, "multi_task", "offline", env, td / "artifacts", log)
    else:
        config = launcher.write_export_config(ws.dir / "export_config.yml", "multi_task")
        proc = launcher.export_proc([f"{invocation_id_of(inv)}.0"], config, ws.root, env,
                                    td / "artifacts", log)
    res = run_one(proc, ws.dir, ctx.timeout)
    staged = [p.name for p in (inv / "wandb-export").rglob("huge.log")] if side == OURS else []
    text = "huge.log staged!" if staged else ""
    ws.cleanup()
    return Sample(res, {"huge_log_staged": bool(staged)}, text)


def _big_log(ctx: Context) -> list[dict[str, Any]]:
    ctx.log("scenario 5b: a task with a 1 GiB log, log_logs off")
    rows = []
    for side in (OURS, LAUNCHER):
        samples = alternate(ctx, f"1 GiB log ({side})", {
            "without": partial(_big_log_run, ctx, side, False),
            "with": partial(_big_log_run, ctx, side, True),
        })
        row = make_row(f"5b-biglog-{side}", 5,
                       f"1 GiB log in logs/, log_logs off: {side}", {
                           "side": side, "log_file": "sparse 1 GiB logs/huge.log",
                           "command": ours.task_command() if side == OURS
                           else "export <inv>.0"}, samples)
        plain, heavy = row["without"], row["with"]
        extra = heavy["wall"]["median"] - plain["wall"]["median"]
        row["extra"] = {"wall_s": extra,
                        "cpu_s": heavy["cpu"]["median"] - plain["cpu"]["median"],
                        "maxrss_mb": heavy["maxrss_mb"]["median"] - plain["maxrss_mb"]["median"]}
        if side == OURS:
            limit = max(0.1, 0.1 * plain["wall"]["median"])
            add_target(row, "extra wall with the 1 GiB log", extra, round(limit, 3), "s")
            if any(s.info.get("huge_log_staged") for s in samples["with"]):
                row["notes"].append("the 1 GiB log was staged although log_logs is off")
        rows.append(row)
    return rows


def scale(ctx: Context) -> list[dict[str, Any]]:
    status = _status(ctx)
    extra = [r for r in status if r["id"].startswith("5c")]
    return [*(r for r in status if r not in extra), *_big_log(ctx), *extra]


SCENARIOS: dict[str, Callable[[Context], list[dict[str, Any]]]] = {
    "1": burst,
    "2": whole_invocation,
    "3": epilogue,
    "4": fast_path,
    "5": scale,
}


