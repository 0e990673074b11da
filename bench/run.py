"""Benchmark nemo-wandb-hook against nemo-evaluator-launcher 0.2.6's W&B exporter.

    make bench                     # all scenarios, 3 repeats (about 15-20 min on 2 CPUs)
    .venv/bin/python bench/run.py --quick            # 1 repeat, smaller bursts (~5 min)
    .venv/bin/python bench/run.py --only 1,4 -r 5    # some scenarios, more repeats

Prints a table, writes bench/.work/results.json and refreshes bench/RESULTS.md. Nothing
contacts a W&B host: every W&B URL points at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness, launcher, ours, report, scenarios  # noqa: E402
from bench.workspace import SCRATCH, WORK, in_git_work_tree  # noqa: E402

RESULTS_JSON = WORK / "results.json"
RESULTS_MD = REPO / "bench" / "RESULTS.md"


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 repeat; N=8,32 bursts, N=32 invocations, no 1,000-task export")
    p.add_argument("-r", "--repeats", type=int, help="measurements per side (default 3)")
    p.add_argument("--only", default="1,2,3,4,5", help="scenarios to run, e.g. 1,4")
    p.add_argument("--burst-sizes", type=sizes, help="scenario 1 N values (default 8,32,128)")
    p.add_argument("--invocation-sizes", type=sizes,
                   help="scenario 2 N values (default 32,128; 32 with --quick)")
    p.add_argument("--slow-repeats", type=int, default=1,
                   help="launcher runs in scenario 3b, where it waits for its own timeouts")
    p.add_argument("--max-parallel", type=int,
                   help="cap on processes started at once in scenario 1 (default: all, "
                        "unless memory is short)")
    p.add_argument("--quiet-wait", type=float,
                   help="before each measurement wait up to this long for other processes to "
                        "go quiet (default 5 s, 2 s with --quick; 0 = never)")
    p.add_argument("--timeout", type=float, default=900, help="per measurement (s)")
    p.add_argument("--no-profile", action="store_true", help="do not profile missed targets")
    p.add_argument("--profile-export-1000", action="store_true",
                   help="profile ours' export of the 1,000-task invocation (+3 min)")
    p.add_argument("--keep", action="store_true",
                   help="keep the workspaces (in $BENCH_SCRATCH or the temp dir)")
    p.add_argument("--no-markdown", action="store_true", help="do not rewrite RESULTS.md")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if args.quick else 5.0
    if args.burst_sizes is None:
        args.burst_sizes = [8, 32] if args.quick else [8, 32, 128]
    if args.invocation_sizes is None:
        args.invocation_sizes = [32] if args.quick else [32, 128]
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    repo = in_git_work_tree(SCRATCH.resolve())
    if repo is not None:
        log(f"warning: scratch dir {SCRATCH} is inside the git work tree {repo}; wandb will "
            "scan it on every run (set BENCH_SCRATCH elsewhere)")
    log(f"scratch (inputs, offline runs): {SCRATCH}")
    log(f"launcher venv: {launcher.ensure(log)}")
    caps = ours.capabilities()
    log(f"ours: hook {'available' if caps.hook else 'missing (using export)'}, "
        f"status {'available' if caps.status else 'missing'}")
    ctx = harness.Context(
        repeats=args.repeats,
        burst_sizes=args.burst_sizes,
        invocation_sizes=args.invocation_sizes,
        slow_repeats=args.slow_repeats,
        timeout=args.timeout,
        max_parallel=args.max_parallel,
        keep=args.keep,
        profile=not args.no_profile,
        profiles_dir=WORK / "profiles",
        quiet_wait=args.quiet_wait,
        prime_status=not args.quick,
        profile_export_1000=args.profile_export_1000,
        log=log,
    )
    rows = []
    for key in [s.strip() for s in args.only.split(",") if s.strip()]:
        rows += scenarios.SCENARIOS[key](ctx)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": " ".join(argv),
        "repeats": args.repeats,
        "machine": harness.machine(),
        "ours_command": ours.task_command(),
        "elapsed_s": time.monotonic() - started,
        "rows": rows,
    }
    print(report.table(rows))
    report.write(results, RESULTS_JSON, None if args.no_markdown else RESULTS_MD)
    missed = [t for r in rows for t in r.get("targets", []) if not t["met"]]
    print(f"\n{len(missed)} target(s) missed; results in {RESULTS_JSON}"
          + ("" if args.no_markdown else f" and {RESULTS_MD}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
