"""Flat metric keys exactly as the launcher's exporter builds them, and `log_metrics` filters."""

from __future__ import annotations

import logging
import re

import pytest

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import gsm8k_task, humaneval_task, metric, mmlu_task, score
from nemo_wandb_hook.metrics import MetricsError, flatten, select
from tests.support.results_fixtures import (
    ORG,
    by_task,
    clashing_task,
    nested_groups_task,
    results_doc,
    synthetic_task,
)


def flat(results: dict, log_stats: tuple[str, ...] = ("stderr",)) -> dict[str, float]:
    return flatten(results_doc(results), log_stats).values


def test_groups_first_then_tasks_nested_groups_recurse() -> None:
    assert list(flat(mmlu_task().results).items()) == [
        ("mmlu_acc", 0.6812),
        ("mmlu_acc_stderr", 0.0037),
        ("mmlu_humanities_acc", 0.6419),
        ("mmlu_humanities_acc_stderr", 0.0067),
        ("mmlu_abstract_algebra_acc", 0.41),
        ("mmlu_abstract_algebra_acc_stderr", 0.0494),
    ]


def test_three_levels_of_nested_groups() -> None:
    assert flat(nested_groups_task().results) == {
        "mmlu_pro_acc": 0.55,
        "mmlu_pro_acc_stderr": 0.004,
        "mmlu_pro_stem_acc": 0.5,
        "mmlu_pro_stem_acc_stderr": 0.008,
        "mmlu_pro_stem_physics_acc": 0.47,  # no stats: no _stderr key
        "mmlu_pro_other_acc": 0.61,
        "mmlu_pro_other_acc_stderr": 0.01,
        "mmlu_pro_law_acc": 0.33,
        "mmlu_pro_law_acc_stderr": 0.014,
        "mmlu_pro_math_acc": 0.58,
        "mmlu_pro_math_acc_stderr": 0.013,
    }


def test_multi_score_metric_names_each_score() -> None:
    assert flat(gsm8k_task().results) == {
        "gsm8k_exact_match_flexible-extract": 0.8044,
        "gsm8k_exact_match_flexible-extract_stderr": 0.0109,
        "gsm8k_exact_match_strict-match": 0.7794,
        "gsm8k_exact_match_strict-match_stderr": 0.0114,
    }


def test_score_without_stats_has_no_stderr_key() -> None:
    assert flat(humaneval_task().results) == {
        "humaneval_pass@1": 0.6524,
        "humaneval_pass@10": 0.8171,
        "humaneval_pass@10_stderr": 0.021,
    }


def test_score_equal_to_metric_is_not_repeated_others_are() -> None:
    assert flat(synthetic_task(7).results) == {
        "bench007_score": 0.507,
        "bench007_score_stderr": 0.01,
        "bench007_score_micro": 0.407,
    }


def test_log_stats_selects_which_stats_become_keys() -> None:
    results = mmlu_task().results
    with_count = flat(results, ("stderr", "count"))
    assert with_count["mmlu_acc_count"] == 14042
    assert with_count["mmlu_abstract_algebra_acc_count"] == 100
    assert "mmlu_humanities_acc_count" not in with_count  # that score has no count
    only_count = flat(results, ("count",))
    assert sorted(only_count) == [
        "mmlu_abstract_algebra_acc", "mmlu_abstract_algebra_acc_count",
        "mmlu_acc", "mmlu_acc_count", "mmlu_humanities_acc",
    ]
    assert sorted(flat(results, ())) == [
        "mmlu_abstract_algebra_acc", "mmlu_acc", "mmlu_humanities_acc",
    ]


def test_same_key_twice_with_different_values_keeps_both_and_warns() -> None:
    result = flatten(results_doc(clashing_task(0.7, 0.6).results))
    assert result.values == {
        "mmlu_acc": 0.7,
        "mmlu_acc_stderr": 0.01,
        "mmlu_acc__task": 0.6,
        "mmlu_acc_stderr__task": 0.02,
    }
    assert any("'mmlu_acc'" in w and "'mmlu_acc__task'" in w for w in result.warnings)


def test_same_key_twice_with_the_same_value_is_one_key_without_warning() -> None:
    result = flatten(results_doc(clashing_task(0.7, 0.7).results), log_stats=())
    assert result.values == {"mmlu_acc": 0.7}
    assert result.warnings == []


def test_clash_in_a_real_task_is_exported_with_a_warning_not_a_failure(
    make_invocation, caplog: pytest.LogCaptureFixture
) -> None:
    inv_dir = make_invocation([clashing_task(0.7, 0.6)])
    with caplog.at_level(logging.WARNING):
        report = export_results(str(inv_dir), config=ORG, dry_run=True, wait_timeout=0)
    assert report.ok, report.as_dict()
    (outcome,) = report.tasks
    assert outcome.status == "dry-run"
    assert outcome.metrics["mmlu_acc"] == 0.7
    assert outcome.metrics["mmlu_acc__task"] == 0.6
    assert "mmlu_acc__task" in caplog.text


# --- log_metrics -------------------------------------------------------------------------------

ALL = {**flat(mmlu_task().results), **flat(gsm8k_task().results),
       **flat(humaneval_task().results)}


def selected(*patterns: str) -> list[str]:
    merged = flatten(results_doc({"groups": mmlu_task().results["groups"], "tasks": {
        **mmlu_task().results["tasks"], **gsm8k_task().results["tasks"],
        **humaneval_task().results["tasks"]}}))
    assert merged.values == ALL
    return sorted(select(merged, list(patterns)))


def test_no_log_metrics_keeps_everything() -> None:
    assert selected() == sorted(ALL)


def test_exact_key() -> None:
    assert selected("gsm8k_exact_match_strict-match") == ["gsm8k_exact_match_strict-match"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("strict-match", ["gsm8k_exact_match_strict-match",
                          "gsm8k_exact_match_strict-match_stderr"]),  # a score name
        ("exact_match", ["gsm8k_exact_match_flexible-extract",
                         "gsm8k_exact_match_flexible-extract_stderr",
                         "gsm8k_exact_match_strict-match",
                         "gsm8k_exact_match_strict-match_stderr"]),  # a metric name
        ("mmlu_humanities", ["mmlu_humanities_acc", "mmlu_humanities_acc_stderr"]),  # a group
        ("mmlu", ["mmlu_acc", "mmlu_acc_stderr"]),  # only the entry named mmlu, no prefix match
    ],
)
def test_name_part(pattern: str, expected: list[str]) -> None:
    assert selected(pattern) == expected


def test_pass_at_1_does_not_match_pass_at_10() -> None:
    assert selected("pass@1") == ["humaneval_pass@1"]
    assert selected("humaneval_pass@1") == ["humaneval_pass@1"]


def test_glob_patterns() -> None:
    assert selected("*_stderr") == sorted(k for k in ALL if k.endswith("_stderr"))
    assert selected("mmlu_*_acc") == ["mmlu_abstract_algebra_acc", "mmlu_humanities_acc"]
    assert selected("humaneval_pass@1?") == ["humaneval_pass@10"]


def test_several_patterns_are_a_union() -> None:
    assert selected("pass@1", "mmlu_acc") == ["humaneval_pass@1", "mmlu_acc"]


def test_pattern_matching_nothing_selects_nothing() -> None:
    assert selected("bleu") == []


def test_log_stats_applies_to_the_exported_task(make_invocation) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    report = export_results(str(inv_dir), config={**ORG, "log_stats": ["stderr", "count"]},
                            dry_run=True)
    assert report.tasks[0].metrics == {
        "gsm8k_exact_match_flexible-extract": 0.8044,
        "gsm8k_exact_match_flexible-extract_stderr": 0.0109,
        "gsm8k_exact_match_flexible-extract_count": 1319,
        "gsm8k_exact_match_strict-match": 0.7794,
        "gsm8k_exact_match_strict-match_stderr": 0.0114,
        "gsm8k_exact_match_strict-match_count": 1319,
    }


def test_log_metrics_applies_to_the_exported_task(make_invocation) -> None:
    inv_dir = make_invocation([humaneval_task()])
    report = export_results(str(inv_dir), config={**ORG, "log_metrics": ["pass@1"]},
                            dry_run=True, wait_timeout=0)
    assert by_task(report)["bigcode-evaluation-harness.humaneval.0"].metrics == {
        "humaneval_pass@1": 0.6524
    }


# --- results that are not in the launcher's shape ----------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"results": {"tasks": {"t": {"metrics": {"acc": metric(acc={"stats": {}})}}}}},
         "results.tasks.t.metrics.acc.scores.acc: missing 'value'"),
        ({"results": {"tasks": {"t": {"metrics": {"acc": metric(acc=score("high"))}}}}},
         "results.tasks.t.metrics.acc.scores.acc: value 'high' is not a number"),
        ({"results": {"tasks": {"t": {"metrics": {"acc": metric(acc={"value": True})}}}}},
         "value True is not a number"),
        ({"results": {"groups": {}, "tasks": {}}}, "holds no metrics"),
        ({"results": {}}, "holds no metrics"),
        ({"results": None}, "has no 'results' mapping"),
        ({"results": {"tasks": ["t"]}}, "results.tasks: expected a mapping"),
        ({"results": {"tasks": {"t": {"metrics": {"acc": {}}}}}}, "metrics.acc: no scores"),
    ],
)
def test_malformed_results_raise_naming_the_place(doc: dict, message: str) -> None:
    with pytest.raises(MetricsError, match=re.escape(message)):
        flatten(doc)


def test_integer_values_are_numbers() -> None:
    values = flat({"tasks": {"t": {"metrics": {"n": metric(n=score(3, stderr=1))}}}})
    assert values == {"t_n": 3.0, "t_n_stderr": 1.0}
