"""Upload offline runs with the real `wandb sync`, once each, in start-time order.

The ledger says which offline pieces hold which tasks; a piece is marked synced only when
`wandb sync` succeeded and left its `.synced` marker, so a failed upload is retried next time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from nemo_wandb_hook.probe import api_key_available, base_url, host_answers
from nemo_wandb_hook.spool import LOCK_STALE_AFTER, Delivery, LockTimeout, Spool

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 300.0
PIECE = re.compile(r"offline-run-(\d{8}_\d{6})-(.+?)(?:-(\d+))?$")


@dataclass
class SyncResult:
    run_path: str
    pieces: list[str] = field(default_factory=list)
    status: str = "synced"  # synced / nothing-to-do / skipped / failed
    error: str | None = None


def start_order(piece: Path) -> tuple[str, int]:
    match = PIECE.match(piece.name)
    return (match[1], int(match[3] or 0)) if match else (piece.name, 0)


def wandb_file(piece: Path) -> Path | None:
    return next(iter(sorted(piece.glob("run-*.wandb"))), None)


def is_synced(piece: Path) -> bool:
    found = wandb_file(piece)
    return found is not None and found.with_name(found.name + ".synced").exists()


def unsynced_pieces(spool: Spool) -> dict[str, dict[Path, list[Delivery]]]:
    """run path -> offline piece -> the deliveries it holds, for pieces not yet synced."""
    runs: dict[str, dict[Path, list[Delivery]]] = defaultdict(lambda: defaultdict(list))
    for delivery in spool.all_deliveries():
        if delivery.mode == "offline" and delivery.synced_at is None:
            runs[delivery.entry.run.path][Path(delivery.location)].append(delivery)
    return runs


def _reachable() -> str | None:
    """None when an upload can be tried, else the reason it cannot."""
    url = base_url()
    if not api_key_available(url):
        return f"no W&B API key for {url}: set WANDB_API_KEY or run `wandb login`"
    ok, how = host_answers(url)
    return None if ok else f"W&B host {url} {how}"


def upload(pieces: list[Path], timeout: float) -> str | None:
    """Run `wandb sync` on the pieces; None on success, else what went wrong."""
    command = [sys.executable, "-m", "wandb", "sync", *map(str, pieces)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=os.environ.copy(), check=False)
    except subprocess.TimeoutExpired:
        return f"`wandb sync` did not finish within {timeout:g}s"
    missing = [p.name for p in pieces if not is_synced(p)]
    if done.returncode != 0 or missing:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return f"`wandb sync` exited {done.returncode}; not uploaded: {', '.join(missing)}" + (
            f" ({tail})" if tail else "")
    return None


def sync_stage(stage_dir: Path, invocations: set[str] | None = None,
               timeout: float = SYNC_TIMEOUT) -> list[SyncResult]:
    spool = Spool(stage_dir)
    results: list[SyncResult] = []
    todo = {
        path: pieces for path, pieces in unsynced_pieces(spool).items()
        if invocations is None
        or any(d.entry.invocation_id in invocations for ds in pieces.values() for d in ds)
    }
    if not todo:
        return results
    blocker = _reachable()
    for run_path, pieces in sorted(todo.items()):
        if blocker:
            result = SyncResult(run_path, [str(p) for p in sorted(pieces, key=start_order)],
                                "skipped", blocker)
        else:
            slug = next(iter(pieces.values()))[0].entry.run.slug
            try:
                with spool.lock(slug, timeout=timeout, stale_after=LOCK_STALE_AFTER):
                    result = _sync_run(spool, run_path, pieces, timeout)
            except LockTimeout as err:
                result = SyncResult(run_path, [str(p) for p in pieces], "skipped", str(err))
        log.log(logging.INFO if result.status == "synced" else logging.WARNING,
                "%s: %s%s", run_path, result.status, f" ({result.error})" if result.error else "")
        results.append(result)
    return results


def _sync_run(spool: Spool, run_path: str, pieces: dict[Path, list[Delivery]],
              timeout: float) -> SyncResult:
    """Upload one run's pieces under its lock (a second `sync` must not upload them again).

    A piece whose directory is gone is reported, and the others are still uploaded: each piece
    carries the run's full state up to its time, so the newest one matters most.
    """
    ordered = sorted(pieces, key=start_order)
    present = [p for p in ordered if wandb_file(p) is not None]
    gone = [p for p in ordered if p not in present]
    todo = [p for p in present if not is_synced(p)]  # another sync may have done some
    error = upload(todo, timeout) if todo else None
    if error is None:
        for piece in present:
            for delivery in pieces[piece]:
                spool.mark_synced(delivery)
    if gone:
        gone_text = "offline run directory gone: " + ", ".join(map(str, gone))
        error = f"{error}; {gone_text}" if error else gone_text
    return SyncResult(run_path, [str(p) for p in ordered], "failed" if error else "synced",
                      error)


def prune(stage_dir: Path) -> list[Path]:
    """Remove offline pieces whose every delivery is synced, and wandb's staging copies once
    no unsynced piece needs them. Never anything unsynced."""
    spool = Spool(stage_dir)
    needed: set[Path] = set()
    synced: set[Path] = set()
    for delivery in spool.all_deliveries():
        if delivery.mode != "offline":
            continue
        piece = Path(delivery.location)
        if delivery.synced_at is None:
            needed.add(piece)
        elif is_synced(piece):  # a piece pruned earlier is gone: no longer needs anything
            synced.add(piece)
    removed = []
    for piece in sorted(synced - needed):
        if piece.is_dir():
            shutil.rmtree(piece)
            removed.append(piece)
    if not needed and not any(spool.pending(s) for s in spool.pending_runs()):
        staging = stage_dir / ".wandb-data" / "artifacts" / "staging"
        for cache in (staging, stage_dir / ".wandb-cache"):
            if cache.is_dir():
                shutil.rmtree(cache)
                removed.append(cache)
    return removed
