"""The export configuration: the launcher's W&B exporter keys plus ours, from layered sources.

Sources, lowest to highest: defaults, the task's own launcher config, `--config FILE`,
`-o KEY=VALUE`. Errors name the key, the value and the source, so a user can fix them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

ALIASES = {"copy_artifacts": "log_artifacts", "copy_logs": "log_logs"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to change and where."""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(5, ge=1, le=50)
    max_wait: float = Field(20.0, gt=0, description="longest pause between two attempts (s)")
    deadline: float = Field(90.0, gt=0, description="total time for all attempts (s)")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str
    project: str
    log_mode: Literal["per_task", "multi_task"] = "per_task"
    name: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    job_type: str = "evaluation"
    log_metrics: list[str] = Field(default_factory=list)
    log_artifacts: bool = True
    log_logs: bool = False
    extra_metadata: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
    triggered_by_webhook: bool | None = None
    webhook_source: str | None = None
    source_artifact: str | None = None
    config_source: str | None = None
    # The launcher's generic exporter keys: `job_dirs` adds roots to search for ids;
    # `only_required` is accepted for compatibility (we always stage the required and
    # optional result files, never caches).
    job_dirs: list[Path] = Field(default_factory=list)
    only_required: bool = True
    # Ours, on top of the launcher's keys.
    stage_dir: Path | None = None
    mode: Literal["auto", "online", "offline"] = "auto"
    wait_timeout: float = Field(60.0, ge=0)
    budget: float = Field(120.0, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    log_stats: list[str] = Field(default_factory=lambda: ["stderr"])
    redact: list[str] = Field(default_factory=list)
    log_tables: bool = True
    log_samples: bool = False
    samples_limit: int = Field(1000, ge=1)

    @field_validator("tags", "log_metrics", "log_stats", "redact", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def webhook_fields(self) -> dict[str, Any]:
        names = ("triggered_by_webhook", "webhook_source", "source_artifact", "config_source")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


KNOWN_KEYS = sorted(set(ExportConfig.model_fields) | set(ALIASES))
# Text-valued keys: `-o group=2024` or `-o run_id=0123` mean the text as typed, not a number.
TEXT_KEYS = {
    name for name, f in ExportConfig.model_fields.items()
    if f.annotation in (str, str | None, Path | None)
}


def wandb_section(doc: Any, source: str) -> dict[str, Any]:
    """The W&B exporter keys of a launcher run config, a launcher export config, or a bare
    mapping."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(doc).__name__}")
    if "execution" in doc or "evaluation" in doc:
        auto = ((doc.get("execution") or {}).get("auto_export") or {}).get("configs") or {}
        found = auto.get("wandb") or (doc.get("export") or {}).get("wandb") or {}
        return dict(found)
    if "export" in doc and isinstance(doc["export"], Mapping):
        return dict(doc["export"].get("wandb") or {})
    return dict(doc)


@functools.lru_cache(maxsize=32)
def _parse(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_yaml(path: Path) -> Any:
    """Parse a config file; the tasks of one invocation carry the same launcher config, so an
    identical text is parsed once (the copy keeps callers from sharing mutable state)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        return copy.deepcopy(_parse(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`-o KEY=VALUE` with YAML-typed values; `a.b=c` nests (e.g. extra_metadata.team=x)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-o {pair!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.strip().split(".")
        if not parents and leaf in TEXT_KEYS and not isinstance(value, (str, type(None))):
            value = raw
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"-o {pair!r}: {part!r} is set both as a value and a mapping")
        node[leaf] = value
    return out


def normalize(raw: Mapping[str, Any], source: str, strict: bool = True) -> dict[str, Any]:
    """Apply aliases; reject (or, for auto-discovered launcher configs, drop) unknown keys."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = ALIASES.get(str(key), str(key))
        if name not in ExportConfig.model_fields:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"{source}: unknown key {key!r}{hint}"
            if strict:
                raise ConfigError(message)
            log.warning("%s (ignored)", message)
            continue
        out[name] = value
    return out


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if key in ("extra_metadata", "retry") and isinstance(value, Mapping):
            merged[key] = {**(merged.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def task_launcher_config(artifacts_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The W&B section of the task's own launcher config, and the file it came from."""
    for name in ("config.yml", "metadata.yaml", "export_config.yml"):
        path = artifacts_dir / name
        if not path.is_file():
            continue
        try:
            doc = load_yaml(path)
        except ConfigError as err:
            log.warning("%s; not using it for configuration", err)
            continue
        if name == "metadata.yaml":
            doc = (doc or {}).get("launcher_resolved_config") if isinstance(doc, Mapping) else None
        section = wandb_section(doc, str(path))
        if section:
            return normalize(section, str(path), strict=False), str(path)
    return {}, None


def user_settings(
    config_file: Path | None,
    overrides: list[str] | None,
    api: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[str]]:
    """The sources a user wrote (--config, config=, -o), merged, and where they came from."""
    looked: list[str] = []
    merged: dict[str, Any] = {}
    if config_file is not None:
        looked.append(str(config_file))
        section = wandb_section(load_yaml(config_file), str(config_file))
        merged = merge(merged, normalize(section, str(config_file)))
    if api:
        looked.append("config= argument")
        merged = merge(merged, normalize(api, "config= argument"))
    if overrides:
        looked.append("-o options")
        merged = merge(merged, normalize(parse_overrides(overrides), "-o"))
    return merged, looked


def search_roots(
    config_file: Path | None, overrides: list[str] | None, api: Mapping[str, Any] | None
) -> list[Path]:
    """`job_dirs` from the user's sources, needed before any task (and its config) is found."""
    roots = user_settings(config_file, overrides, api)[0].get("job_dirs") or []
    return [Path(r).expanduser() for r in ([roots] if isinstance(roots, str) else roots)]


def resolve(
    artifacts_dir: Path | None,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    api: Mapping[str, Any] | None = None,
) -> ExportConfig:
    """Layer the sources and validate; `api` is the Python API's `config=` mapping."""
    looked: list[str] = []
    merged: dict[str, Any] = {}
    if artifacts_dir is not None:
        found, where = task_launcher_config(artifacts_dir)
        looked.append(where or f"{artifacts_dir}/{{config.yml,metadata.yaml,export_config.yml}}")
        merged = merge(merged, found)
    user, where = user_settings(config_file, overrides, api)
    merged = merge(merged, user)
    looked += where
    missing = [k for k in ("entity", "project") if not merged.get(k)]
    if missing:
        raise ConfigError(
            f"missing {' and '.join(missing)}: set it with -o {missing[0]}=..., a --config file, "
            f"or the launcher's execution.auto_export.configs.wandb; looked in: "
            + ", ".join(looked or ["(no sources)"])
        )
    try:
        return ExportConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None


def describe(err: ValidationError) -> str:
    """One line per problem: the key, the value given and what was expected."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(p) for p in problem["loc"])
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            parent = str(problem["loc"][0])
            known = sorted(RetryPolicy.model_fields) if parent == "retry" else KNOWN_KEYS
            close = difflib.get_close_matches(str(problem["loc"][-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown key {path!r}{hint}")
        else:
            lines.append(f"{path}: {value!r} is not valid ({problem['msg']})")
    return "invalid configuration: " + "; ".join(lines)
