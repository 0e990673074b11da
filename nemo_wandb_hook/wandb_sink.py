"""The only module that imports `wandb`: write runs, bounded in time, retried when transient.

One `WandbSession` = one wandb service for every run of a flush. Each run is written whole
(config, summary, new artifacts) inside one init/finish, so a retry repeats it exactly.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenacity
import wandb

from nemo_wandb_hook.config import RetryPolicy
from nemo_wandb_hook.probe import base_url
from nemo_wandb_hook.spool import PushError, RunSpec

log = logging.getLogger(__name__)

PERMANENT = re.compile(r"\b(400|401|403|404|409)\b|permission|not found|unauthori[sz]ed|"
                       r"previously created and deleted|invalid|api key", re.IGNORECASE)


@dataclass
class ArtifactPayload:
    name: str
    files: dict[str, Path]  # path inside the artifact -> staged file
    metadata: dict[str, Any] = field(default_factory=dict)
    type: str = "evaluation_result"


@dataclass
class RunPayload:
    spec: RunSpec
    config: dict[str, Any]
    summary: dict[str, Any]
    artifacts: list[ArtifactPayload] = field(default_factory=list)
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)


@dataclass
class PushOutcome:
    mode: str
    location: str  # entity/project/run_id, or the offline run directory


def is_transient(err: BaseException) -> bool:
    if isinstance(err, PushError):
        return err.transient
    if isinstance(err, (wandb.errors.AuthenticationError, wandb.errors.UsageError)):
        return False
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    text = str(err)
    if re.search(r"\b(429|5\d\d)\b|timed out|timeout|connection|temporar", text, re.I):
        return True
    return not PERMANENT.search(text)


@contextmanager
def wandb_dirs(root: Path) -> Iterator[None]:
    """Keep wandb's data, cache and config files in the stage dir, not in $HOME."""
    wanted = {
        "WANDB_DATA_DIR": root / ".wandb-data",
        "WANDB_CACHE_DIR": root / ".wandb-cache",
        "WANDB_CONFIG_DIR": root / ".wandb-config",
    }
    saved = {k: os.environ.get(k) for k in wanted}
    for key, path in wanted.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WandbSession:
    """Writes runs in one mode; leaves the process clean (`wandb.teardown`) when closed."""

    def __init__(
        self,
        mode: str,
        stage_dir: Path,
        retry: RetryPolicy,
        init_timeout: float = 30.0,
        finish_timeout: float = 60.0,
    ) -> None:
        self.mode = mode
        self.stage_dir = Path(stage_dir)
        self.root = Path(os.environ.get("WANDB_DIR") or self.stage_dir)
        self.retry = retry
        self.init_timeout = init_timeout
        self.finish_timeout = finish_timeout

    def __enter__(self) -> WandbSession:
        self._env = wandb_dirs(self.stage_dir)
        self._env.__enter__()
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            wandb.teardown()
        finally:
            self._env.__exit__(None, None, None)

    def _settings(self, remaining: float) -> wandb.Settings:
        bounded = max(1.0, min(self.init_timeout, remaining))
        return wandb.Settings(
            mode=self.mode,
            root_dir=str(self.root),
            base_url=base_url(),
            init_timeout=bounded,
            finish_timeout=max(1.0, min(self.finish_timeout, remaining)),
            finish_timeout_raises=True,
            silent=True,
            console="off",
            x_disable_stats=True,
            save_code=False,
            # Each of these costs time per run and tells nothing about an evaluation's
            # results: the pip package list alone was 40 % of an export's time.
            x_save_requirements=False,
            x_disable_meta=True,
            disable_git=True,
            disable_code=True,
            x_graphql_retry_max=2,
            x_file_stream_retry_max=3,
            x_file_transfer_retry_max=3,
        )

    def push(self, payload: RunPayload) -> PushOutcome:
        """Write one run, retrying transient failures within the retry policy's deadline."""
        policy = self.retry
        started = time.monotonic()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts)
            | tenacity.stop_after_delay(policy.deadline),
            wait=tenacity.wait_random_exponential(multiplier=1, max=policy.max_wait),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=self._before_retry(payload.spec),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    remaining = policy.deadline - (time.monotonic() - started)
                    return self._write(payload, self._settings(remaining))
        except Exception as err:  # every wandb failure becomes a PushError that names the run
            raise self._explain(payload.spec, err) from err
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _before_retry(self, spec: RunSpec) -> Any:
        def hook(state: tenacity.RetryCallState) -> None:
            wandb.teardown()  # a failed init leaves the run id "in use" in this service
            err = state.outcome.exception() if state.outcome else None
            log.warning("W&B run %s: attempt %d failed (%s); retrying", spec.path,
                        state.attempt_number, str(err).splitlines()[0] if err else "?")
        return hook

    def flush_command(self) -> str:
        """The command that delivers what stays pending, runnable as printed."""
        return f"nemo-wandb-hook flush --stage-dir {shlex.quote(str(self.stage_dir))}"

    def _explain(self, spec: RunSpec, err: BaseException) -> PushError:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        if is_transient(err):
            advice = ("W&B did not answer in time; the export stays pending: run "
                      f"`{self.flush_command()}` later")
            return PushError(f"W&B run {spec.path}: {first}. {advice}", transient=True)
        advice = ("check the API key (WANDB_API_KEY), that entity and project exist and you "
                  "may write to them, and that the run id was not deleted (set run_id)")
        return PushError(f"W&B refused run {spec.path}: {first}. {advice}", transient=False)

    def _write(self, payload: RunPayload, settings: wandb.Settings) -> PushOutcome:
        spec = payload.spec
        run = wandb.init(
            entity=spec.entity,
            project=spec.project,
            id=spec.run_id,
            name=spec.name,
            group=spec.group,
            job_type=spec.job_type,
            tags=list(spec.tags),
            notes=spec.notes,
            resume="allow",
            reinit="create_new",
            settings=settings,
        )
        try:
            run.config.update(payload.config, allow_val_change=True)
            run.summary.update(payload.summary)
            for key, (columns, rows) in payload.tables.items():
                run.summary[key] = wandb.Table(columns=columns, data=rows)
            for art in payload.artifacts:
                artifact = wandb.Artifact(art.name, type=art.type, metadata=art.metadata)
                for name, path in sorted(art.files.items()):
                    artifact.add_file(str(path), name=name)
                run.log_artifact(artifact)
            location = (
                spec.path if self.mode == "online" else str(Path(run.settings.sync_dir))
            )
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
        return PushOutcome(self.mode, location)
