"""Decide online or offline for `mode: auto` in a few seconds, without importing wandb."""

from __future__ import annotations

import logging
import netrc
import os
import urllib.error
import urllib.request
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT = 3.0


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def api_key_available(url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(url).hostname or ""
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def host_answers(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Any HTTP answer counts: we only ask whether the host is there."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout):
            return True, "answered"
    except urllib.error.HTTPError as err:
        return True, f"answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return False, f"did not answer within {timeout:g}s ({reason})"


def decide_mode(requested: str) -> tuple[str, str]:
    """(mode, reason) for `requested` in auto / online / offline."""
    if requested in ("online", "offline"):
        return requested, f"mode {requested} requested"
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={os.environ['WANDB_MODE']}"
    url = base_url()
    if not api_key_available(url):
        return "offline", f"no W&B API key (WANDB_API_KEY or ~/.netrc) for {url}"
    ok, how = host_answers(url)
    if not ok:
        return "offline", f"W&B host {url} {how}"
    return "online", f"W&B host {url} {how} and an API key is set"
