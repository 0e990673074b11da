"""The fake W&B backend, exercised by the real wandb SDK (online, via wandb-core).

These tests pin down both the backend and the SDK behaviour an exporter relies on:
what arrives, retries on 5xx/409/429, fast failures on 401/404, bounded init when
the server is down, and recovery with `wandb sync` after the server died mid-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.errors import CommError

from tests.support import backend_fixture
from tests.support.wandb_backend import WandbBackend

# The fixture, imported directly (harmless once conftest.py registers the plugin).
# A plain assignment, so that test parameters named `wandb_backend` are not F811.
wandb_backend = backend_fixture.wandb_backend

ENTITY = "nemo"
PROJECT = "evals"


def settings(**overrides: Any) -> wandb.Settings:
    """Quiet settings with bounded timeouts (never wait forever in a test)."""
    values: dict[str, Any] = {
        "init_timeout": 30,
        "finish_timeout": 30,
        "silent": True,
        "console": "off",
        "x_disable_stats": True,
    }
    values.update(overrides)
    return wandb.Settings(**values)


def init(run_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("settings", settings())
    return wandb.init(entity=ENTITY, project=PROJECT, id=run_id, **kwargs)


def wandb_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `wandb` CLI of this virtualenv (env: WANDB_BASE_URL/WANDB_API_KEY)."""
    script = Path(sys.executable).with_name("wandb")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "wandb"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


def run_dir(run_id: str) -> Path:
    """The local directory wandb wrote for ``run_id`` (online or offline)."""
    [found] = Path(os.environ["WANDB_DIR"], "wandb").glob(f"*run-*-{run_id}")
    return found


def post(url: str, body: dict[str, Any], key: str | None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def is_refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError:
        return False
    except urllib.error.URLError as err:
        return isinstance(err.reason, ConnectionRefusedError)
    return False


# --------------------------------------------------------------------- runs


def test_run_fields_are_recorded(wandb_backend: WandbBackend) -> None:
    run = init(
        "run-a",
        name="llama-3 mmlu",
        group="nightly-42",
        job_type="eval",
        tags=["mmlu", "nightly"],
        notes="from slurm job 42",
        config={"model": "llama-3", "shots": 5},
    )
    run.config.update({"temperature": 0.0})
    run.summary.update({"mmlu/acc": 0.61})
    run.log({"score": 0.5})
    run.log({"score": 0.75})
    run.finish()

    assert wandb_backend.runs() == [(ENTITY, PROJECT, "run-a")]
    rec = wandb_backend.run(ENTITY, PROJECT, "run-a")
    assert rec.name == "llama-3 mmlu"
    assert rec.group == "nightly-42"
    assert rec.job_type == "eval"
    assert rec.tags == ["mmlu", "nightly"]
    assert rec.notes == "from slurm job 42"
    assert rec.user_config() == {"model": "llama-3", "shots": 5, "temperature": 0.0}
    assert "t" in rec.config["_wandb"]  # what makes a run resumable
    assert rec.user_summary() == {"mmlu/acc": 0.61, "score": 0.75}
    assert [(h["_step"], h["score"]) for h in rec.history] == [(0, 0.5), (1, 0.75)]
    assert {"config.yaml", "wandb-metadata.json", "wandb-summary.json"} <= set(rec.files)
    assert json.loads(rec.files["wandb-summary.json"])["mmlu/acc"] == 0.61
    assert rec.finished and rec.exit_code == 0
    assert rec.upsert_count >= 1 and rec.file_stream_requests >= 1
    assert rec.artifacts_logged == []


def test_resume_allow_in_a_second_session_is_one_run(wandb_backend: WandbBackend) -> None:
    run = init("run-c", resume="allow", config={"model": "llama-3"})
    assert not run.resumed
    run.summary.update({"mmlu/acc": 0.6})
    run.log({"score": 1})
    run.log({"score": 2})
    run.finish()
    wandb.teardown()  # a new session, as in the next Slurm job

    run = init("run-c", resume="allow", config={"tasks": ["gsm8k"]})
    assert run.resumed
    assert run.starting_step == 2
    assert run.summary["mmlu/acc"] == 0.6  # restored from the server
    run.summary.update({"gsm8k/acc": 0.4})
    run.log({"score": 3})
    run.finish()

    assert wandb_backend.runs() == [(ENTITY, PROJECT, "run-c")]
    rec = wandb_backend.run(ENTITY, PROJECT, "run-c")
    assert rec.user_config() == {"model": "llama-3", "tasks": ["gsm8k"]}
    assert rec.user_summary() == {"mmlu/acc": 0.6, "gsm8k/acc": 0.4, "score": 3}
    assert [(h["_step"], h["score"]) for h in rec.history] == [(0, 1), (1, 2), (2, 3)]
    assert rec.finished and rec.exit_code == 0
    assert wandb_backend.count("RunResumeStatus") == 2


# --------------------------------------------------------------------- artifacts


def log_results(run_id: str, files: dict[str, str]) -> wandb.Artifact:
    run = init(run_id)
    artifact = wandb.Artifact("eval-results", type="evaluation")
    for path, text in files.items():
        with artifact.new_file(path) as f:
            f.write(text)
    run.log_artifact(artifact, aliases=["nightly"])
    artifact.wait(timeout=30)
    run.finish()
    return artifact


def test_artifact_files_arrive_and_same_content_makes_no_new_version(
    wandb_backend: WandbBackend,
) -> None:
    files = {"results.json": '{"acc": 0.61}', "per_task/mmlu.csv": "task,acc\nmmlu,0.61\n"}
    first = log_results("run-b1", files)
    assert first.version == "v0"
    [v0] = wandb_backend.artifact_versions(ENTITY, PROJECT, "eval-results")
    assert (v0.version, v0.type) == ("v0", "evaluation")
    assert v0.files == {p: t.encode() for p, t in files.items()}
    assert v0.missing_files == []
    assert set(v0.aliases) == {"latest", "nightly"}
    assert v0.digest == first.digest

    # Re-export of identical content: the SDK is answered with the existing version.
    again = log_results("run-b2", files)
    assert again.version == "v0"
    assert len(wandb_backend.artifact_versions(ENTITY, PROJECT, "eval-results")) == 1
    assert wandb_backend.run(ENTITY, PROJECT, "run-b2").artifacts_logged == ["eval-results:v0"]

    changed = log_results("run-b3", {**files, "results.json": '{"acc": 0.62}'})
    assert changed.version == "v1"
    v0, v1 = wandb_backend.artifact_versions(ENTITY, PROJECT, "eval-results")
    assert v1.version == "v1" and v1.digest != v0.digest
    assert v1.files["results.json"] == b'{"acc": 0.62}'
    assert v1.files["per_task/mmlu.csv"] == files["per_task/mmlu.csv"].encode()
    assert set(v1.aliases) == {"latest", "nightly"} and v0.aliases == []
    assert wandb_backend.run(ENTITY, PROJECT, "run-b1").artifacts_logged == ["eval-results:v0"]
    assert wandb_backend.run(ENTITY, PROJECT, "run-b3").artifacts_logged == ["eval-results:v1"]

    consumer = init("run-b4")
    consumer.use_artifact(changed)
    consumer.finish()
    assert wandb_backend.run(ENTITY, PROJECT, "run-b4").artifacts_used == ["eval-results:v1"]


def test_table_and_alert(wandb_backend: WandbBackend) -> None:
    run = init("run-t")
    run.log({"results": wandb.Table(columns=["task", "acc"], data=[["mmlu", 0.6]])})
    run.alert(title="eval done", text="mmlu 0.6")
    run.finish()

    rec = wandb_backend.run(ENTITY, PROJECT, "run-t")
    [table_path] = [p for p in rec.files if p.startswith("media/table/")]
    assert json.loads(rec.files[table_path])["data"] == [["mmlu", 0.6]]
    assert rec.history[0]["results"]["path"] == table_path
    assert rec.artifacts_logged == ["run-run-t-results:v0"]  # tables also become artifacts
    assert rec.alerts == [{"title": "eval done", "text": "mmlu 0.6", "severity": "INFO"}]


# --------------------------------------------------------------------- wandb sync


def test_wandb_sync_uploads_an_offline_run(wandb_backend: WandbBackend) -> None:
    run = init(
        "run-d", name="offline eval", config={"model": "llama-3"}, settings=settings(mode="offline")
    )
    run.summary.update({"mmlu/acc": 0.7})
    run.log({"score": 0.7})
    artifact = wandb.Artifact("offline-results", type="evaluation")
    with artifact.new_file("results.json") as f:
        f.write('{"acc": 0.7}')
    run.log_artifact(artifact)
    run.finish()
    assert wandb_backend.requests == []  # offline: nothing was sent

    result = wandb_cli("sync", str(run_dir("run-d")))
    assert result.returncode == 0, result.stdout + result.stderr

    rec = wandb_backend.run(ENTITY, PROJECT, "run-d")
    assert rec.name == "offline eval"
    assert rec.user_config() == {"model": "llama-3"}
    assert rec.user_summary() == {"mmlu/acc": 0.7, "score": 0.7}
    assert [h["score"] for h in rec.history] == [0.7]
    assert rec.finished and rec.exit_code == 0
    assert rec.artifacts_logged == ["offline-results:v0"]
    [v0] = wandb_backend.artifact_versions(ENTITY, PROJECT, "offline-results")
    assert v0.files == {"results.json": b'{"acc": 0.7}'}


# --------------------------------------------------------------------- faults


def test_file_stream_500s_are_retried(wandb_backend: WandbBackend) -> None:
    wandb_backend.inject("file_stream", status=500, count=3)
    run = init(
        "run-e",
        settings=settings(
            # wandb-core truncates these to whole seconds (0.5 -> 0 -> default 1 s,
            # doubling: 3 failures would take ~15 s).
            x_file_stream_retry_wait_min_seconds=1,
            x_file_stream_retry_wait_max_seconds=1,
            x_file_stream_no_gzip=False,  # also exercise gzip-encoded file_stream bodies
        ),
    )
    run.log({"score": 1})
    run.summary.update({"final": 2})
    run.finish()

    assert wandb_backend.count("file_stream", 500) == 3
    rec = wandb_backend.run(ENTITY, PROJECT, "run-e")
    assert [h["score"] for h in rec.history] == [1]
    assert rec.user_summary() == {"final": 2, "score": 1}
    assert rec.finished and rec.exit_code == 0


def test_upsert_429_with_retry_after_is_honoured(wandb_backend: WandbBackend) -> None:
    wandb_backend.inject("UpsertBucket", status=429, retry_after=2)
    started = time.monotonic()
    run = init("run-f", name="after 429")
    elapsed = time.monotonic() - started
    run.finish()

    assert elapsed >= 2  # the SDK waited as told (plus up to 25 % jitter)
    assert wandb_backend.count("UpsertBucket", 429) == 1
    assert wandb_backend.run(ENTITY, PROJECT, "run-f").name == "after 429"


def test_upsert_409_is_retried_but_404_fails_at_once(wandb_backend: WandbBackend) -> None:
    wandb_backend.inject("UpsertBucket", status=409)
    init("run-409").finish()
    assert wandb_backend.run(ENTITY, PROJECT, "run-409").finished

    wandb_backend.inject("UpsertBucket", status=404)
    started = time.monotonic()
    with pytest.raises(CommError):
        init("run-404")
    assert time.monotonic() - started < 10
    assert wandb_backend.count("UpsertBucket", 404) == 1  # not retried


def test_rejected_api_key_fails_init_fast(wandb_backend: WandbBackend) -> None:
    wandb_backend.reject_auth = True
    started = time.monotonic()
    with pytest.raises(CommError, match="not logged in"):
        init("run-g")
    assert time.monotonic() - started < 10  # no retrying until init_timeout (30 s)
    assert {status for _, _, status in wandb_backend.requests} == {401}
    assert wandb_backend.runs() == []


def test_stopped_server_fails_init_within_init_timeout(wandb_backend: WandbBackend) -> None:
    wandb_backend.stop()
    assert is_refused(wandb_backend.base_url + "/graphql")
    started = time.monotonic()
    with pytest.raises(CommError, match="connection refused"):
        init("run-h", settings=settings(init_timeout=3))
    elapsed = time.monotonic() - started
    assert 2.5 <= elapsed < 15


def test_server_dies_mid_run_then_restarts_sync_and_resume(wandb_backend: WandbBackend) -> None:
    run = init("run-j", config={"model": "llama-3"}, settings=settings(finish_timeout=3))
    wandb_backend.inject("file_stream", die=True)
    run.log({"score": 1})
    run.log({"score": 2})
    run.summary.update({"mmlu/acc": 0.5})
    started = time.monotonic()
    run.finish()  # gives up after finish_timeout; prints a warning, does not raise
    assert time.monotonic() - started < 15
    assert not wandb_backend.running
    assert is_refused(wandb_backend.base_url + "/graphql")
    assert wandb_backend.run(ENTITY, PROJECT, "run-j").history == []
    wandb.teardown()

    port = wandb_backend.port
    wandb_backend.start()
    assert wandb_backend.port == port  # same URL: upload URLs and settings stay valid

    # The data is in the local .wandb file: `wandb sync` (online runs need the flag).
    result = wandb_cli("sync", "--include-online", str(run_dir("run-j")))
    assert result.returncode == 0, result.stdout + result.stderr
    rec = wandb_backend.run(ENTITY, PROJECT, "run-j")
    assert [h["score"] for h in rec.history] == [1, 2]
    assert rec.user_summary() == {"mmlu/acc": 0.5, "score": 2}
    assert rec.finished

    run = init("run-j", resume="allow")
    assert run.resumed and run.starting_step == 2
    run.log({"score": 3})
    run.finish()
    rec = wandb_backend.run(ENTITY, PROJECT, "run-j")
    assert [h["_step"] for h in rec.history] == [0, 1, 2]
    assert rec.user_config() == {"model": "llama-3"}


# --------------------------------------------------------------------- the backend itself


def test_unhandled_requests_are_reported(
    wandb_backend: WandbBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    graphql = wandb_backend.base_url + "/graphql"
    assert post(graphql, {"query": "query Bogus { bogus }"}, wandb_backend.api_key) == 400
    assert post(wandb_backend.base_url + "/nowhere", {}, wandb_backend.api_key) == 404
    assert wandb_backend.unhandled == ["POST /graphql Bogus", "POST /nowhere"]
    err = capsys.readouterr().err
    assert "wandb_backend: unhandled request: POST /graphql Bogus" in err
    assert "wandb_backend: unhandled request: POST /nowhere" in err
    wandb_backend.unhandled.clear()  # expected here; the fixture asserts it is empty


def test_backend_auth_faults_and_restart_without_the_sdk() -> None:
    with WandbBackend() as backend:
        graphql = backend.base_url + "/graphql"
        viewer = {"query": "query Viewer { viewer { id } }"}
        assert len(backend.api_key) >= 40
        assert post(graphql, viewer, backend.api_key) == 200
        assert post(graphql, viewer, "x" * 40) == 401
        assert post(graphql, viewer, None) == 401

        backend.inject("Viewer", status=503, count=2)
        assert [post(graphql, viewer, backend.api_key) for _ in range(3)] == [503, 503, 200]
        backend.inject("*", delay=0.3)
        started = time.monotonic()
        assert post(graphql, viewer, backend.api_key) == 200
        assert time.monotonic() - started >= 0.3
        assert backend.count("Viewer") == 7
        assert [backend.count("Viewer", s) for s in (200, 401, 503)] == [3, 2, 2]

        port = backend.port
        backend.stop()
        assert is_refused(graphql)
        backend.start()
        assert backend.port == port
        assert post(graphql, viewer, backend.api_key) == 200

        backend.inject("Viewer", die=True)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            post(graphql, viewer, backend.api_key)
        assert not backend.running and is_refused(graphql)
        assert backend.unhandled == []
