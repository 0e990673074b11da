"""The `nemo-wandb-hook` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from nemo_wandb_hook.config import ConfigError
from nemo_wandb_hook.flush import flush
from nemo_wandb_hook.pipeline import export_results
from nemo_wandb_hook.report import ExportReport
from nemo_wandb_hook.results import LocateError, TaskLocation, locate_all
from nemo_wandb_hook.staging import existing_stage_dir

log = logging.getLogger("nemo_wandb_hook")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML: a launcher run/export config or bare keys")
    p.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config key (YAML-typed; dotted keys nest)")
    p.add_argument("--stage-dir", type=Path, help="where to stage and spool (default: "
                   "<invocation dir>/wandb-export)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nemo-wandb-hook", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true")
    sub = top.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="export invocations or tasks")
    ex.add_argument("targets", nargs="+", metavar="TARGET",
                    help="invocation id, job id (<inv>.<idx>), invocation or task directory")
    ex.add_argument("--dest", action="append", choices=["wandb", "local"])
    _common(ex)
    ex.add_argument("--job-dirs", action="append", default=[], type=Path,
                    help="roots to search for invocation directories")
    ex.add_argument("--offline", action="store_true", help="write W&B offline runs")
    ex.add_argument("--dry-run", action="store_true", help="show what would be pushed")
    ex.add_argument("--json", action="store_true", help="print the result as JSON")

    hk = sub.add_parser("hook", help="post-job entrypoint (epilogue, trap, dependency job)")
    where = hk.add_mutually_exclusive_group()
    where.add_argument("--task-dir", type=Path)
    where.add_argument("--invocation-dir", type=Path)
    _common(hk)
    hk.add_argument("--wait-timeout", type=float, help="seconds to wait for results.yml")
    hk.add_argument("--budget", type=float, help="seconds before the hook gives up (exit 0)")
    hk.add_argument("--strict", action="store_true", help="exit non-zero on failure")

    fl = sub.add_parser("flush", help="push whatever is still pending in the spool")
    fl.add_argument("targets", nargs="*", metavar="TARGET")
    fl.add_argument("--stage-dir", type=Path)
    fl.add_argument("--job-dirs", action="append", default=[], type=Path)
    fl.add_argument("--json", action="store_true")

    sy = sub.add_parser("sync", help="upload offline runs with `wandb sync`, once each")
    sy.add_argument("targets", nargs="*", metavar="TARGET")
    sy.add_argument("--stage-dir", type=Path)
    sy.add_argument("--job-dirs", action="append", default=[], type=Path)
    sy.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    sy.add_argument("--prune", action="store_true",
                    help="then remove offline runs and wandb staging files that are synced")
    sy.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="where every task stands (local state only)")
    st.add_argument("targets", nargs="*", metavar="TARGET")
    st.add_argument("--stage-dir", type=Path)
    st.add_argument("--job-dirs", action="append", default=[], type=Path)
    st.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="export a bundled example invocation (offline unless a "
                          "W&B account is configured)")
    demo.add_argument("--dir", type=Path, help="where to write the example (default: a temp dir)")
    demo.add_argument("--entity", default=os.environ.get("WANDB_ENTITY", "demo"),
                      help="W&B entity (default: $WANDB_ENTITY or 'demo')")
    demo.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "nemo-wandb-hook-demo"),
                      help="W&B project (default: $WANDB_PROJECT or 'nemo-wandb-hook-demo')")
    return top


def print_report(report: ExportReport, as_json: bool) -> None:
    """JSON on stdout for scripts; otherwise a compact summary table on stderr."""
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if report.tasks:
        print(report.summary(), file=sys.stderr)


def stage_dirs_for(
    args: argparse.Namespace,
) -> list[tuple[Path, list[TaskLocation] | None]]:
    """(stage dir, the targets' tasks in it) for flush, sync and status."""
    if not args.targets:
        if args.stage_dir is None:
            raise ConfigError(f"{args.command} needs a TARGET or --stage-dir")
        return [(args.stage_dir, None)]
    by_stage: dict[Path, list[TaskLocation]] = {}
    for loc in locate_all(args.targets, args.job_dirs):
        stage = args.stage_dir or existing_stage_dir(loc.invocation_dir)
        by_stage.setdefault(stage, []).append(loc)
    return list(by_stage.items())


def cmd_export(args: argparse.Namespace) -> int:
    report = export_results(
        args.targets,
        dest=args.dest or ["wandb"],
        config_file=args.config,
        overrides=args.overrides,
        job_dirs=args.job_dirs,
        offline=args.offline,
        stage_dir=args.stage_dir,
        dry_run=args.dry_run,
    )
    print_report(report, args.json)
    if report.errors and not report.tasks:
        return EXIT_USAGE  # no target could be found: nothing was tried
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_flush(args: argparse.Namespace) -> int:
    report = ExportReport()
    for stage, _ in stage_dirs_for(args):
        report.tasks += flush(stage)
    print_report(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_sync(args: argparse.Namespace) -> int:
    from nemo_wandb_hook.sync import prune, sync_stage

    results, removed = [], []
    for stage, locations in stage_dirs_for(args):
        invocations = {loc.invocation_id for loc in locations} if locations else None
        results += sync_stage(stage, invocations, timeout=args.timeout)
        if args.prune:
            removed += prune(stage)
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in results],
                          "pruned": [str(p) for p in removed]}, indent=1))
    else:
        for r in results:
            print(f"{r.status:9} {r.run_path}  ({len(r.pieces)} offline piece(s))"
                  + (f"\n          reason: {r.error}" if r.error else ""))
        if not results:
            print("nothing to sync: no offline runs waiting for upload")
        for path in removed:
            print(f"pruned    {path}")
    return EXIT_OK if all(r.status == "synced" for r in results) else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from nemo_wandb_hook.status import collect, render

    rows = [row for stage, locations in stage_dirs_for(args) for row in collect(stage, locations)]
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(render(rows))
    return EXIT_OK


def cmd_hook(args: argparse.Namespace) -> int:
    from nemo_wandb_hook.hook import HookRequest, hook_main

    return hook_main(HookRequest(
        task_dir=args.task_dir,
        invocation_dir=args.invocation_dir,
        config_file=args.config,
        overrides=args.overrides,
        stage_dir=args.stage_dir,
        wait_timeout=args.wait_timeout,
        budget=args.budget,
        strict=args.strict,
    ))


def cmd_demo(args: argparse.Namespace) -> int:
    from nemo_wandb_hook.example import example_tasks, write_invocation

    root = args.dir or Path(tempfile.mkdtemp(prefix="nemo-wandb-hook-demo-"))
    inv_dir = write_invocation(root, example_tasks())
    print(f"example invocation: {inv_dir}")
    overrides = ["log_mode=multi_task", f"entity={args.entity}", f"project={args.project}"]
    report = export_results([str(inv_dir)], overrides=overrides)
    print_report(report, as_json=False)
    print(f"staged files and spool: {inv_dir / 'wandb-export'}")
    if any(t.offline_dir for t in report.tasks):
        print(f"offline run written; upload it later with: nemo-wandb-hook sync {inv_dir}")
    print(f"where each task stands: nemo-wandb-hook status {inv_dir}")
    return EXIT_OK if report.ok else EXIT_FAILED


COMMANDS = {
    "export": cmd_export,
    "hook": cmd_hook,
    "flush": cmd_flush,
    "sync": cmd_sync,
    "status": cmd_status,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
    except SystemExit as usage:
        # A typo in an epilogue's arguments must not fail (and drain) the node.
        lenient_hook = "hook" in argv and "--strict" not in argv
        if usage.code == EXIT_USAGE and lenient_hook:
            print("nemo-wandb-hook: hook: bad arguments (see above); exiting 0 as epilogues "
                  "must (--strict to fail instead)", file=sys.stderr)
            return EXIT_OK
        raise
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="nemo-wandb-hook: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"nemo-wandb-hook: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except LocateError as err:
        print(f"nemo-wandb-hook: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
