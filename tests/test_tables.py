"""Issue 7: the `results` table and per-sample tables in W&B runs, `results.md` of
`--dest local`, and the summary table `export` prints on stderr.

Offline runs are written with the real wandb SDK and read back from their `.wandb` files;
every expectation is computed from the task's own results.yml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import (
    TaskSpec,
    example_tasks,
    gsm8k_task,
    humaneval_task,
    mmlu_task,
    synthetic_task,
    write_invocation,
)
from nemo_wandb_hook.example import metric as metric_of
from nemo_wandb_hook.example import score as score_of
from tests.support.results_fixtures import (
    CLI_TIMEOUT,
    INV,
    ORG,
    by_task,
    edit_results,
    nested_groups_task,
    offline_run_at,
    offline_run_of,
    run_cli,
    several_harnesses,
    task_dirs,
)
from tests.support.wandb_reader import read_table

COLUMNS = ["task", "benchmark", "harness", "metric", "score", "value", "stderr", "count"]
SAMPLE_COLUMNS = ["doc_id", "doc", "target", "resps", "filtered_resps", "exact_match"]
MB = 1024 * 1024


# --- expectations from results.yml -----------------------------------------------------------


def expected_rows(task_dir: Path, spec: TaskSpec) -> list[list[Any]]:
    """One row per (task or group, metric, score) of results.yml, in the file's order: groups
    (nested ones joined with `_`, after their parent) first, then tasks."""
    doc = yaml.safe_load((task_dir / "artifacts" / "results.yml").read_text())["results"]
    rows: list[list[Any]] = []

    def walk(entries: dict[str, Any] | None, prefix: str, nested: bool) -> None:
        for name, body in (entries or {}).items():
            entry = f"{prefix}{name}"
            for metric, metric_body in (body.get("metrics") or {}).items():
                for score, score_body in metric_body["scores"].items():
                    stats = score_body.get("stats") or {}
                    count = stats.get("count")
                    rows.append([entry, spec.benchmark, spec.harness, metric, score,
                                 score_body["value"], stats.get("stderr"),
                                 None if count is None else int(count)])
            if nested:
                walk(body.get("groups"), f"{entry}_", nested)

    walk(doc.get("groups"), "", nested=True)
    walk(doc.get("tasks"), "", nested=False)
    assert rows, f"{task_dir}: no metrics in results.yml"
    return rows


def table_keys(run) -> list[str]:
    return sorted(k for k, v in run.summary.items()
                  if isinstance(v, dict) and v.get("_type") == "table-file")


def export(target: Path | str, **config: Any):
    report = export_results(str(target), config={**ORG, **config}, offline=True)
    assert report.ok, report.as_dict()
    return report


# --- the results table -----------------------------------------------------------------------


def test_per_task_results_table_matches_results_yml_row_by_row(make_invocation):
    specs = several_harnesses()
    inv_dir = make_invocation(specs)
    report = export(inv_dir)
    assert len(report.tasks) == 4
    for task_dir, spec in zip(task_dirs(inv_dir), specs, strict=True):
        run = offline_run_of(by_task(report)[task_dir.name])
        assert table_keys(run) == ["results"]
        columns, rows = read_table(run, "results")
        assert columns == COLUMNS
        assert rows == expected_rows(task_dir, spec), task_dir.name
    # spot checks of the shapes: nested group, a score without stats, a multi-score metric
    mmlu_pro = read_table(offline_run_of(report.tasks[3]), "results")[1]
    assert ["mmlu_pro_stem_physics", "mmlu_pro", "lm-evaluation-harness", "acc", "acc", 0.47,
            None, None] in mmlu_pro
    assert mmlu_pro[0] == ["mmlu_pro", "mmlu_pro", "lm-evaluation-harness", "acc", "acc", 0.55,
                           0.004, 12032]
    humaneval = read_table(offline_run_of(report.tasks[2]), "results")[1]
    assert humaneval[0] == ["humaneval", "humaneval", "bigcode-evaluation-harness", "pass@1",
                            "pass@1", 0.6524, None, None]
    gsm8k = read_table(offline_run_of(report.tasks[1]), "results")[1]
    assert [(r[4], r[5], r[6], r[7]) for r in gsm8k] == [
        ("flexible-extract", 0.8044, 0.0109, 1319), ("strict-match", 0.7794, 0.0114, 1319)]


def test_multi_task_newest_piece_holds_rows_for_every_task_exported_so_far(make_invocation):
    specs = [mmlu_task(), gsm8k_task(), humaneval_task(), nested_groups_task()]
    inv_dir = make_invocation(specs)
    expected: list[list[Any]] = []
    pieces = []
    for task_dir, spec in zip(task_dirs(inv_dir), specs, strict=True):
        report = export(task_dir, log_mode="multi_task")  # a separate export per task
        expected += expected_rows(task_dir, spec)
        run = offline_run_of(report.tasks[0])
        pieces.append(run.run_dir)
        assert table_keys(run) == ["results"]
        columns, rows = read_table(run, "results")
        assert columns == COLUMNS
        assert rows == expected, f"after exporting {task_dir.name}"
    assert len(set(pieces)) == 4
    # an earlier piece keeps what it held when it was written
    assert read_table(offline_run_at(pieces[0]), "results")[1] == expected_rows(
        task_dirs(inv_dir)[0], specs[0])

    # a task exported again with a changed value: its rows are replaced, not added
    gsm8k_dir = task_dirs(inv_dir)[1]
    results = gsm8k_task().results
    results["tasks"]["gsm8k"]["metrics"]["exact_match"]["scores"]["strict-match"]["value"] = 0.8
    edit_results(gsm8k_dir, results)
    report = export(gsm8k_dir, log_mode="multi_task")
    rows = read_table(offline_run_of(report.tasks[0]), "results")[1]
    assert rows == [row for d, s in zip(task_dirs(inv_dir), specs, strict=True)
                    for row in expected_rows(d, s)]
    assert ["gsm8k", "gsm8k", "lm-evaluation-harness", "exact_match", "strict-match", 0.8,
            0.0114, 1319] in rows


def test_multi_task_in_one_export_has_one_table_with_every_task(make_invocation):
    specs = several_harnesses()
    inv_dir = make_invocation(specs)
    report = export(inv_dir, log_mode="multi_task")
    run = offline_run_of(report.tasks[-1])
    assert table_keys(run) == ["results"]
    assert read_table(run, "results")[1] == [
        row for d, s in zip(task_dirs(inv_dir), specs, strict=True)
        for row in expected_rows(d, s)]


def test_results_table_follows_log_metrics(make_invocation):
    inv_dir = make_invocation([humaneval_task(), gsm8k_task()])
    report = export(inv_dir, log_metrics=["pass@1", "strict-match"])
    humaneval, gsm8k = (read_table(offline_run_of(t), "results")[1] for t in report.tasks)
    assert [(r[0], r[3], r[4]) for r in humaneval] == [("humaneval", "pass@1", "pass@1")]
    assert [(r[0], r[3], r[4]) for r in gsm8k] == [("gsm8k", "exact_match", "strict-match")]


def test_no_results_table_with_log_tables_false(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    for log_mode in ("per_task", "multi_task"):
        report = export(inv_dir, log_tables=False, log_mode=log_mode)
        for outcome in report.tasks:
            run = offline_run_of(outcome)
            assert table_keys(run) == []
            assert "results" not in run.summary
            assert not list((run.run_dir / "files").rglob("*.table.json"))


# --- per-sample tables -----------------------------------------------------------------------


def sample(i: int) -> dict[str, Any]:
    """One line of an lm-evaluation-harness samples_<task>_<date>.jsonl file."""
    return {
        "doc_id": i,
        "doc": {"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"},
        "target": str(2 * i),
        "resps": [[f"Let me think. The answer is {2 * i}."]],
        "filtered_resps": [str(2 * i)],
        "exact_match": 0.0 if i % 3 == 0 else 1.0,
    }


def sample_lines(n: int) -> bytes:
    return "".join(json.dumps(sample(i)) + "\n" for i in range(n)).encode()


def write_samples(task_dir: Path, n: int = 5000, name: str = "samples_gsm8k_2026.jsonl") -> Path:
    path = task_dir / "artifacts" / name
    path.write_bytes(sample_lines(n))
    return path


def test_per_sample_table_holds_the_first_samples_limit_lines(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    gsm8k_dir = task_dirs(inv_dir)[0]
    source = write_samples(gsm8k_dir, 5000)
    report = export(inv_dir, log_samples=True, samples_limit=1000)

    run = offline_run_of(by_task(report)["gsm8k.0"])
    key = "samples/gsm8k.0/samples_gsm8k_2026_first1000"
    assert table_keys(run) == sorted(["results", key])
    columns, rows = read_table(run, key)
    assert columns == SAMPLE_COLUMNS
    assert len(rows) == 1000
    assert (rows[0][0], rows[-1][0]) == (0, 999)
    for i in (0, 1, 500, 999):
        expected = sample(i)
        row = dict(zip(columns, rows[i], strict=True))
        assert row["doc_id"] == i
        assert json.loads(row["doc"]) == expected["doc"]  # nested values as JSON text
        assert json.loads(row["resps"]) == expected["resps"]
        assert (row["target"], row["exact_match"]) == (expected["target"],
                                                        expected["exact_match"])
    # the staged copy (also the artifact's samples/ file) holds the first 1,000 lines only
    staged = inv_dir / "wandb-export" / INV / "gsm8k.0" / "samples" / source.name
    assert staged.read_bytes() == b"".join(source.read_bytes().splitlines(True)[:1000])
    (artifact,) = [a for a in run.artifacts if a.type == "evaluation_result"]
    assert artifact.files[f"samples/{source.name}"].read_bytes() == staged.read_bytes()

    humaneval = offline_run_of(by_task(report)["bigcode-evaluation-harness.humaneval.1"])
    assert table_keys(humaneval) == ["results"]  # no samples file: no table, no error


def test_per_sample_tables_in_a_multi_task_run(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    write_samples(task_dirs(inv_dir)[0], 300)
    write_samples(task_dirs(inv_dir)[1], 50, name="samples_humaneval_2026.jsonl")
    report = export(inv_dir, log_mode="multi_task", log_samples=True, samples_limit=100)
    run = offline_run_of(report.tasks[-1])
    gsm8k_key = "samples/gsm8k.0/samples_gsm8k_2026_first100"
    humaneval_key = "samples/bigcode-evaluation-harness.humaneval.1/samples_humaneval_2026_first100"
    assert table_keys(run) == sorted(["results", gsm8k_key, humaneval_key])
    assert len(read_table(run, gsm8k_key)[1]) == 100
    assert [r[0] for r in read_table(run, humaneval_key)[1]] == list(range(50))


def test_samples_in_model_directories_each_get_their_table(make_invocation):
    """lm-evaluation-harness writes samples under artifacts/<model>/; two model directories
    may hold files of the same name, and neither may overwrite the other."""
    inv_dir = make_invocation([gsm8k_task()])
    artifacts = task_dirs(inv_dir)[0] / "artifacts"
    for model, n in (("model-a", 3), ("model-b", 5)):
        (artifacts / model).mkdir()
        write_samples(artifacts.parent, n, name=f"{model}/samples_gsm8k_2026.jsonl")
    (artifacts / "model-b" / "samples_mmlu_2026.jsonl").write_bytes(sample_lines(2))
    report = export(inv_dir, log_samples=True, samples_limit=10)
    run = offline_run_of(report.tasks[0])
    assert table_keys(run) == sorted([
        "results",
        "samples/gsm8k.0/model-a/samples_gsm8k_2026_first10",
        "samples/gsm8k.0/model-b/samples_gsm8k_2026_first10",
        "samples/gsm8k.0/samples_mmlu_2026_first10",  # a unique name keeps the short key
    ])
    assert len(read_table(run, "samples/gsm8k.0/model-a/samples_gsm8k_2026_first10")[1]) == 3
    assert len(read_table(run, "samples/gsm8k.0/model-b/samples_gsm8k_2026_first10")[1]) == 5
    assert sorted(p for p in report.tasks[0].files if p.startswith("samples/")) == [
        "samples/model-a/samples_gsm8k_2026.jsonl", "samples/model-b/samples_gsm8k_2026.jsonl",
        "samples/samples_mmlu_2026.jsonl"]


def test_no_per_sample_table_without_log_samples(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    write_samples(task_dirs(inv_dir)[0], 200)
    report = export(inv_dir)  # log_samples defaults to false
    run = offline_run_of(report.tasks[0])
    assert table_keys(run) == ["results"]
    assert not (inv_dir / "wandb-export" / INV / "gsm8k.0" / "samples").exists()
    (artifact,) = [a for a in run.artifacts if a.type == "evaluation_result"]
    assert not [p for p in artifact.files if p.startswith("samples/")]


def test_no_per_sample_table_when_the_harness_wrote_no_samples(make_invocation):
    inv_dir = make_invocation([gsm8k_task()])
    report = export(inv_dir, log_samples=True)
    run = offline_run_of(report.tasks[0])
    assert table_keys(run) == ["results"]
    assert report.tasks[0].error is None


def test_reading_a_huge_samples_file_is_streamed(make_invocation):
    """A 200 MB samples file: the export's peak RSS stays far below the file size, and only
    `samples_limit` lines are staged."""
    inv_dir = make_invocation([gsm8k_task()])
    task_dir = task_dirs(inv_dir)[0]
    block = sample_lines(5000)
    big = task_dir / "artifacts" / "samples_gsm8k_2026.jsonl"
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)")
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "nemo_wandb_hook", "export",
               str(inv_dir), "--offline", "-o", "entity=e", "-o", "project=p",
               "-o", "log_samples=true", "-o", "samples_limit=1000"]

    def peak_rss_mb() -> float:
        shutil.rmtree(inv_dir / "wandb-export", ignore_errors=True)  # a fresh, full export
        done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        kilobytes, code = done.stdout.split()[-2:]
        assert code == "0", done.stderr
        (row,) = [li for li in done.stderr.splitlines() if li.startswith("gsm8k.0 ")]
        assert row.split()[1] == "exported", done.stderr
        return int(kilobytes) / 1024

    try:
        big.write_bytes(block)
        small = peak_rss_mb()
        with big.open("wb") as fh:
            for _ in range(200 * MB // len(block) + 1):
                fh.write(block)
        size_mb = big.stat().st_size / MB
        huge = peak_rss_mb()
        staged = inv_dir / "wandb-export" / INV / "gsm8k.0" / "samples" / big.name
        assert staged.read_bytes().count(b"\n") == 1000
        assert staged.read_bytes() == b"".join(block.splitlines(True)[:1000])
    finally:
        big.unlink(missing_ok=True)
    print(f"\npeak RSS of `export` with log_samples: {small:.0f} MB with a "
          f"{len(block) / MB:.1f} MB samples file, {huge:.0f} MB with a {size_mb:.0f} MB one")
    assert size_mb >= 200
    assert huge < 150, f"peak RSS {huge:.0f} MB reading a {size_mb:.0f} MB samples file"


# --- results.md (--dest local) ---------------------------------------------------------------


def markdown_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [li for li in path.read_text().splitlines() if li.startswith("|")]
    header, divider, *body = lines
    assert set(divider.replace("|", "")) == {"-"}
    cells = [[c.strip() for c in li.strip("|").split("|")] for li in body]
    return [c.strip() for c in header.strip("|").split("|")], cells


def test_results_md_lists_every_metric_with_value_and_stderr(make_invocation):
    specs = several_harnesses()
    inv_dir = make_invocation(specs)
    report = export_results(str(inv_dir), dest="local", config=ORG)
    assert report.ok and {t.status for t in report.tasks} == {"staged"}
    results_md = inv_dir / "wandb-export" / INV / "results.md"
    assert results_md.read_text().startswith(f"# Results: {INV}\n")
    header, rows = markdown_rows(results_md)
    assert header == ["task directory", "task", "metric", "score", "value", "stderr", "count"]

    expected = [(d.name, *row) for d, s in zip(task_dirs(inv_dir), specs, strict=True)
                for row in expected_rows(d, s)]
    assert len(rows) == len(expected)
    for cells, (task_dir, entry, _, _, metric, score, value, stderr, count) in zip(
            rows, expected, strict=True):
        assert cells[:4] == [task_dir, entry, metric, score]
        assert float(cells[4]) == value, cells
        assert (cells[5] == "") if stderr is None else (float(cells[5]) == stderr), cells
        assert cells[6] == ("" if count is None else str(count)), cells

    # exporting again updates the file in place, without duplicate rows
    before = results_md.read_text()
    export_results(str(inv_dir), dest="local", config=ORG)
    assert results_md.read_text() == before


def test_results_md_rounds_full_precision_values_to_four_significant_digits(make_invocation):
    """Harnesses write full precision; results.md is for reading and shows 4 significant
    digits (processed_results.json keeps the exact values)."""
    spec = TaskSpec(
        name="simple-evals.mmlu_pro", harness="simple-evals", benchmark="mmlu_pro",
        results={"tasks": {"mmlu_pro": {"metrics": {
            "acc": metric_of(acc=score_of(0.68121351664, stderr=0.0037121478, count=12032.0)),
            "score": metric_of(score=score_of(71.34615384615384)),
        }}}},
    )
    inv_dir = make_invocation([spec])
    assert export_results(str(inv_dir), dest="local", config=ORG).ok
    _, rows = markdown_rows(inv_dir / "wandb-export" / INV / "results.md")
    assert [r[:4] for r in rows] == [["simple-evals.mmlu_pro.0", "mmlu_pro", "acc", "acc"],
                                     ["simple-evals.mmlu_pro.0", "mmlu_pro", "score", "score"]]
    assert float(rows[0][4]) == pytest.approx(0.68121351664, rel=5e-4)
    assert float(rows[0][5]) == pytest.approx(0.0037121478, rel=5e-4)
    assert rows[0][6] == "12032"
    assert float(rows[1][4]) == pytest.approx(71.34615384615384, rel=5e-4)
    assert rows[1][5:] == ["", ""]
    processed = json.loads((inv_dir / "wandb-export" / INV / "processed_results.json")
                           .read_text())["rows"]
    assert {r["metric"]: r["value"] for r in processed} == {
        "mmlu_pro_acc": 0.68121351664, "mmlu_pro_acc_stderr": 0.0037121478,
        "mmlu_pro_score": 71.34615384615384}


def test_results_md_covers_tasks_staged_by_separate_exports(make_invocation):
    specs = [gsm8k_task(), humaneval_task()]
    inv_dir = make_invocation(specs)
    for task_dir in task_dirs(inv_dir):
        assert export_results(str(task_dir), dest="local", config=ORG).ok
    _, rows = markdown_rows(inv_dir / "wandb-export" / INV / "results.md")
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("gsm8k.0", "gsm8k", "flexible-extract"), ("gsm8k.0", "gsm8k", "strict-match"),
        ("bigcode-evaluation-harness.humaneval.1", "humaneval", "pass@1"),
        ("bigcode-evaluation-harness.humaneval.1", "humaneval", "pass@10")]


# --- the summary table on stderr -------------------------------------------------------------

ORG_ARGS = ["-o", "entity=myorg", "-o", "project=evals"]
OUTCOME_KEYS = ["invocation_id", "task", "job_id", "status", "run_id", "run_path",
                "offline_dir", "error", "metrics", "files"]


def test_export_prints_a_summary_table_on_stderr_and_json_on_stdout(make_invocation):
    inv_dir = make_invocation(example_tasks())
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    (header,) = [li for li in lines if li.startswith("TASK")]
    assert header.split()[:3] == ["TASK", "STATE", "METRICS"]
    assert header.endswith("RUN / OFFLINE DIR")
    rows = {li.split()[0]: li for li in lines if li.split() and li.split()[0] in {
        d.name for d in task_dirs(inv_dir)}}
    assert sorted(rows) == sorted(d.name for d in task_dirs(inv_dir))
    expected_metrics = {
        "lm-evaluation-harness.mmlu.0": ["mmlu_acc=0.6812", "mmlu_humanities_acc=0.6419",
                                         "mmlu_abstract_algebra_acc=0.41"],
        "gsm8k.1": ["gsm8k_exact_match_flexible-extract=0.8044",
                    "gsm8k_exact_match_strict-match=0.7794"],
        "bigcode-evaluation-harness.humaneval.2": ["humaneval_pass@1=0.6524",
                                                   "humaneval_pass@10=0.8171"],
    }
    for task, row in rows.items():
        assert row.split()[1] == "exported"
        for text in expected_metrics[task]:
            assert text in row
        assert "_stderr=" not in row
        offline_dir = row.split()[-1]
        assert "offline-run-" in offline_dir and Path(offline_dir).is_dir()
        assert offline_run_at(offline_dir).exit_code == 0

    as_json = run_cli("export", inv_dir, "--offline", "--json", *ORG_ARGS)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)  # stdout is the JSON document and nothing else
    assert sorted(result) == ["errors", "ok", "tasks"]
    assert [sorted(t) for t in result["tasks"]] == [sorted(OUTCOME_KEYS)] * 3
    assert [t["status"] for t in result["tasks"]] == ["unchanged"] * 3
    assert "TASK" not in as_json.stdout and not any(
        li.startswith("TASK") for li in as_json.stderr.splitlines())


def test_summary_table_names_a_failed_task_and_its_reason(make_invocation):
    inv_dir = make_invocation([gsm8k_task(), humaneval_task()])
    (task_dirs(inv_dir)[1] / "artifacts" / "results.yml").write_text("results: [unclosed\n")
    proc = run_cli("export", inv_dir, "--offline", *ORG_ARGS)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    (failed,) = [li for li in lines if li.startswith("bigcode-evaluation-harness.humaneval.1 ")]
    assert failed.split()[1] == "failed"
    assert any(li.startswith("bigcode-evaluation-harness.humaneval.1: ") and "results.yml" in li
               for li in lines)
    (ok,) = [li for li in lines if li.startswith("gsm8k.0 ")]
    assert ok.split()[1] == "exported"


# --- figures for the record (printed, not asserted) -------------------------------------------


def test_measure_a_32_task_multi_task_run(tmp_path):
    """What a multi_task run of 32 tasks holds, and what log_tables costs in export time."""
    specs = [synthetic_task(i) for i in range(32)]
    timings: dict[bool, list[float]] = {True: [], False: []}
    runs = {}
    for repeat in range(3):
        for log_tables in (True, False):
            inv_id = f"{repeat:02d}{int(log_tables)}{'0' * 13}"
            inv_dir = write_invocation(tmp_path / f"m{repeat}{log_tables}", specs,
                                       invocation_id=inv_id)
            started = time.perf_counter()
            report = export(inv_dir, log_mode="multi_task", log_tables=log_tables)
            timings[log_tables].append(time.perf_counter() - started)
            runs[log_tables] = offline_run_of(report.tasks[-1])
    with_tables, without = runs[True], runs[False]
    assert table_keys(with_tables) == ["results"] and table_keys(without) == []
    columns, rows = read_table(with_tables, "results")
    assert len(rows) == 64 and columns == COLUMNS
    table_file = with_tables.run_dir / "files" / with_tables.summary["results"]["path"]

    def size(run) -> int:
        return sum(p.stat().st_size for p in run.run_dir.rglob("*") if p.is_file())

    def fmt(values: list[float]) -> str:
        return "/".join(f"{v:.2f}" for v in values) + f" s (median {sorted(values)[1]:.2f} s)"

    print("\n32-task multi_task run (offline):"
          f"\n  tables: {table_keys(with_tables)}; `results` has {len(rows)} rows x "
          f"{len(columns)} columns ({table_file.stat().st_size} bytes)"
          f"\n  summary keys: {len([k for k in with_tables.summary if not k.startswith('_')])} "
          f"with tables, {len([k for k in without.summary if not k.startswith('_')])} without"
          f"\n  artifacts: {len(with_tables.artifacts)} with tables "
          f"({sorted({a.type for a in with_tables.artifacts})}), {len(without.artifacts)} "
          f"without"
          f"\n  offline run dir: {size(with_tables)} bytes with tables, {size(without)} without"
          f"\n  export time log_tables=true:  {fmt(timings[True])}"
          f"\n  export time log_tables=false: {fmt(timings[False])}")
