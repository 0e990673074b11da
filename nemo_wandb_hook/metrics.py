"""Flatten results.yml into the launcher's metric key names, and filter them.

Key names are a contract: dashboards built on the launcher's exporter depend on them.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class MetricsError(ValueError):
    """results.yml does not hold metrics in the launcher's shape."""


@dataclass(frozen=True)
class MetricScore:
    """One score of results.yml, with the name parts its flat key was built from."""

    key: str
    entry: str  # task or (nested) group name, e.g. "mmlu_humanities"
    metric: str
    score: str
    value: float
    stats: Mapping[str, float]
    section: str  # "groups" or "tasks"


@dataclass
class FlatMetrics:
    scores: list[MetricScore] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    name_parts: dict[str, frozenset[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def flat_key(entry: str, metric: str, score: str) -> str:
    return f"{entry}_{metric}" if score == metric else f"{entry}_{metric}_{score}"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricsError(f"{where}: value {value!r} is not a number")
    return float(value)


def _walk(section: str, entries: Any, prefix: str = "") -> Iterator[MetricScore]:
    if entries is None:
        return
    if not isinstance(entries, Mapping):
        raise MetricsError(f"results.{section}: expected a mapping, got {type(entries).__name__}")
    for name, body in entries.items():
        entry = f"{prefix}{name}"
        if not isinstance(body, Mapping):
            raise MetricsError(f"results.{section}.{entry}: expected a mapping")
        for metric, metric_body in (body.get("metrics") or {}).items():
            scores = (metric_body or {}).get("scores")
            if not isinstance(scores, Mapping):
                raise MetricsError(f"results.{section}.{entry}.metrics.{metric}: no scores")
            for score, score_body in scores.items():
                where = f"results.{section}.{entry}.metrics.{metric}.scores.{score}"
                if not isinstance(score_body, Mapping) or "value" not in score_body:
                    raise MetricsError(f"{where}: missing 'value'")
                stats = {
                    str(k): float(v)
                    for k, v in (score_body.get("stats") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                yield MetricScore(
                    key=flat_key(entry, str(metric), str(score)),
                    entry=entry,
                    metric=str(metric),
                    score=str(score),
                    value=_number(score_body["value"], where),
                    stats=stats,
                    section=section,
                )
        if section == "groups":
            yield from _walk(section, body.get("groups"), prefix=f"{entry}_")


def flatten(results: Any, log_stats: Iterable[str] = ("stderr",)) -> FlatMetrics:
    """Flat keys as the launcher builds them, plus `<key>_<stat>` for each requested stat.

    A key produced twice with different values (a group and a task of the same name) keeps
    the first under its plain name and the second under `<key>__<section>`, with a warning.
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("results"), Mapping):
        raise MetricsError("results.yml has no 'results' mapping")
    body = results["results"]
    flat = FlatMetrics()
    stats_wanted = list(log_stats)
    for section in ("groups", "tasks"):
        for score in _walk(section, body.get(section)):
            flat.scores.append(score)
            pairs = [(score.key, score.value)]
            pairs += [(f"{score.key}_{s}", score.stats[s])
                      for s in stats_wanted if s in score.stats]
            parts = frozenset({score.entry, score.metric, score.score})
            for key, value in pairs:
                stored = _put(flat, key, value, f"{key}__{section[:-1]}")
                flat.name_parts[stored] = parts
    if not flat.scores:
        raise MetricsError("results.yml holds no metrics (both 'groups' and 'tasks' are empty)")
    return flat


def _put(flat: FlatMetrics, key: str, value: float, alternative: str) -> str:
    existing = flat.values.get(key)
    if existing is None or existing == value:
        flat.values[key] = value
        return key
    flat.values[alternative] = value
    flat.warnings.append(
        f"metric {key!r} appears twice with different values ({existing} and {value}); "
        f"the second is kept as {alternative!r}"
    )
    return alternative


TABLE_COLUMNS = ["task", "benchmark", "harness", "metric", "score", "value", "stderr", "count"]


def table_rows(
    flat: FlatMetrics, kept: Mapping[str, float], benchmark: str, harness: str
) -> list[list[Any]]:
    """One row per (task, metric, score) whose flat key survived `log_metrics`."""
    rows = []
    for s in flat.scores:
        if s.key in kept:
            count = s.stats.get("count")
            rows.append([s.entry, benchmark, harness, s.metric, s.score, s.value,
                         s.stats.get("stderr"), int(count) if count is not None else None])
    return rows


def matches(key: str, pattern: str, parts: frozenset[str]) -> bool:
    """An entry matches a key it equals, one of its name parts, or as a glob pattern."""
    if pattern == key or pattern in parts:
        return True
    return any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(key, pattern)


def select(flat: FlatMetrics, patterns: list[str] | None) -> dict[str, float]:
    """Apply `log_metrics`; None or an empty list keeps everything."""
    if not patterns:
        return dict(flat.values)
    return {
        key: value
        for key, value in flat.values.items()
        if any(matches(key, p, flat.name_parts.get(key, frozenset())) for p in patterns)
    }
