"""Deliver pending spool entries to W&B: one writer per run, under the run's lock.

Whoever holds a run's lock drains everything pending for it in one W&B session; wandb itself
is imported only here, when there is something to push.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from nemo_wandb_hook.config import RetryPolicy
from nemo_wandb_hook.report import TaskOutcome, delivered_outcome, outcome
from nemo_wandb_hook.runs import build_payload
from nemo_wandb_hook.spool import LOCK_STALE_AFTER, LockTimeout, PushError, Spool, SpoolEntry

log = logging.getLogger(__name__)


def flush(
    stage_dir: Path,
    slugs: Iterable[str] | None = None,
    mode: str | None = None,
    retry: RetryPolicy | None = None,
    lock_wait: float = 60.0,
) -> list[TaskOutcome]:
    """Deliver every pending entry of the given runs (all runs when None), one writer per run.

    Whoever holds a run's lock drains everything pending for it in one W&B session; a caller
    that finds the lock busy leaves its entry to the holder, which looks again after release.
    """
    spool = Spool(stage_dir)
    wanted = list(slugs) if slugs is not None else spool.pending_runs()
    wanted = [s for s in wanted if spool.pending(s)]
    if not wanted:
        return []
    with Flusher(spool, mode, retry or RetryPolicy()) as flusher:
        return [o for slug in wanted for o in flusher.flush_run(slug, lock_wait)]


class Flusher:
    """One flush call: one W&B session per mode, reused for every run it writes."""

    def __init__(self, spool: Spool, mode: str | None, retry: RetryPolicy) -> None:
        self.spool = spool
        self.mode = mode
        self.retry = retry
        self.stack = ExitStack()
        self.sessions: dict[str, Any] = {}
        self.decided: dict[str, str] = {}
        # The run for which W&B did not answer within the retry deadline: the other runs of
        # this call are not tried online, so an absent W&B costs one deadline, not one per run.
        self.unreachable: str | None = None

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _effective(self, requested: str) -> str:
        from nemo_wandb_hook.probe import decide_mode

        if requested not in self.decided:
            self.decided[requested], reason = decide_mode(requested)
            log.info("writing %s W&B runs: %s", self.decided[requested], reason)
        return self.decided[requested]

    def _session(self, mode: str) -> Any:
        from nemo_wandb_hook.wandb_sink import WandbSession

        if mode not in self.sessions:
            session = WandbSession(mode, self.spool.root.parent, self.retry)
            self.sessions[mode] = self.stack.enter_context(session)
        return self.sessions[mode]

    def _push(self, pending: list[SpoolEntry], slug: str) -> Any:
        """Push the run's state; with mode auto, fall back to an offline run if W&B is away."""
        requested = self.mode or pending[-1].mode
        chosen = self._effective(requested)
        payload = build_payload(pending, self.spool.deliveries(slug))
        try:
            if chosen == "online" and self.unreachable:
                stage = shlex.quote(str(self.spool.root.parent))
                raise PushError(
                    f"W&B run {payload.spec.path}: not tried, W&B did not answer for run "
                    f"{self.unreachable} earlier in this call; the export stays pending: run "
                    f"`nemo-wandb-hook flush --stage-dir {stage}` later", transient=True)
            return self._session(chosen).push(payload)
        except PushError as err:
            if err.transient and chosen == "online" and self.unreachable is None:
                self.unreachable = payload.spec.path
            if not (err.transient and requested == "auto" and chosen == "online"):
                raise
            log.warning("%s; writing an offline run instead", err)
            return self._session("offline").push(payload)

    def flush_run(self, slug: str, lock_wait: float) -> list[TaskOutcome]:
        spool = self.spool
        outcomes: list[TaskOutcome] = []
        # Look again after each release: an entry enqueued while we held the lock, whose own
        # caller found the lock busy and left, is ours to deliver, however often that happens
        # (a hook's budget bounds this loop; each round delivers what arrived).
        while True:
            try:
                with spool.lock(slug, timeout=lock_wait, stale_after=LOCK_STALE_AFTER):
                    while pending := spool.pending(slug):
                        result = self._push(pending, slug)
                        for entry in pending:
                            spool.mark_delivered(entry, result.mode, result.location)
                            done = spool.delivery(slug, entry.name)
                            outcomes.append(delivered_outcome(done) if done
                                            else outcome(entry, "exported"))
            except LockTimeout as err:
                return outcomes + [outcome(e, "pending", error=str(err))
                                   for e in spool.pending(slug)]
            except PushError as err:
                spool.record_failure(slug, str(err))
                status = "pending" if err.transient else "failed"
                return outcomes + [outcome(e, status, error=str(err))
                                   for e in spool.pending(slug)]
            if not spool.pending(slug):
                break
        return outcomes
