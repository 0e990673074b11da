"""pytest fixture: a fresh fake W&B backend per test, with the SDK pointed at it.

Register with ``pytest_plugins = ["tests.support.backend_fixture"]`` (conftest.py)
or import the fixture into a test module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb

from tests.support.wandb_backend import WandbBackend

# Variables that would silently change what wandb.init() does in a test.
_UNSET = ("WANDB_MODE", "WANDB_DISABLED", "WANDB_RUN_ID", "WANDB_RESUME")


@pytest.fixture
def wandb_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WandbBackend]:
    """Start a :class:`WandbBackend` on 127.0.0.1 and point the wandb SDK at it.

    Sets WANDB_BASE_URL / WANDB_API_KEY and keeps every wandb directory inside
    ``tmp_path``. On teardown: ``wandb.teardown()``, stop the backend, and fail the
    test if the backend saw a request it did not understand.
    """
    wandb.teardown()  # forget settings / credentials of an earlier test
    backend = WandbBackend().start()
    home = tmp_path / "wandb-home"
    dirs = {
        "WANDB_DIR": home / "runs",
        "WANDB_DATA_DIR": home / "data",
        "WANDB_CACHE_DIR": home / "cache",
        "WANDB_CONFIG_DIR": home / "config",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_BASE_URL", backend.base_url)
    monkeypatch.setenv("WANDB_API_KEY", backend.api_key)
    # No telemetry: the SDK would probe <base_url>/sdk/otel/... (answered 404 anyway).
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    try:
        yield backend
    finally:
        # wandb.teardown() finishes leftover runs: give it a healthy, live server so
        # that it cannot hang on a backend the test stopped or broke.
        backend.reject_auth = False
        backend.clear_faults()
        if not backend.running:
            with contextlib.suppress(OSError):  # port taken meanwhile: nothing to do
                backend.start()
        wandb.teardown()
        backend.stop()
    assert backend.unhandled == [], f"requests the backend did not understand: {backend.unhandled}"
