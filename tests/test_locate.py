"""TARGET resolution: invocation ids, job ids, directories, the exec DB; unknown and ambiguous
targets; and results.yml files that are not complete or not in the launcher's shape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nemo_wandb_hook import export_results
from nemo_wandb_hook import results as results_mod
from nemo_wandb_hook.example import example_tasks, write_invocation
from nemo_wandb_hook.results import LocateError, WaitTimeout, locate, locate_all, wait_for_results
from tests.support.results_fixtures import INV, ORG, task_dirs

NAMES = ["lm-evaluation-harness.mmlu.0", "gsm8k.1", "bigcode-evaluation-harness.humaneval.2"]


def names(locations) -> list[str]:
    return [loc.dir_name for loc in locations]


@pytest.fixture
def inv_dir(make_invocation) -> Path:
    return make_invocation()


@pytest.fixture
def root(inv_dir: Path) -> Path:
    return inv_dir.parent


def test_invocation_directory(inv_dir: Path) -> None:
    found = locate(str(inv_dir))
    assert names(found) == NAMES
    assert {loc.invocation_id for loc in found} == {INV}
    assert {loc.invocation_dir for loc in found} == {inv_dir}
    assert [loc.index for loc in found] == [0, 1, 2]
    assert [loc.job_id for loc in found] == [f"{INV}.0", f"{INV}.1", f"{INV}.2"]
    assert [loc.task_name for loc in found] == [n.rsplit(".", 1)[0] for n in NAMES]


def test_task_directory(inv_dir: Path) -> None:
    (loc,) = locate(str(inv_dir / "gsm8k.1"))
    assert (loc.invocation_id, loc.dir_name, loc.job_id) == (INV, "gsm8k.1", f"{INV}.1")


def test_invocation_id_under_job_dirs(root: Path) -> None:
    assert names(locate(INV, [root])) == NAMES


def test_invocation_id_one_level_deeper(tmp_path: Path) -> None:
    write_invocation(tmp_path / "root" / "team-a", example_tasks())
    assert names(locate(INV, [tmp_path / "root"])) == NAMES


def test_job_id_selects_one_task(root: Path) -> None:
    assert names(locate(f"{INV}.2", [root])) == ["bigcode-evaluation-harness.humaneval.2"]


def test_invocation_id_from_the_exec_db(inv_dir: Path) -> None:
    db = Path(os.environ["NEMO_EVALUATOR_EXEC_DB_FILE"])
    records = [  # the launcher appends one line per job; some point at the task directory
        {"invocation_id": INV, "job_id": f"{INV}.0", "executor": "slurm",
         "data": {"remote_rundir_path": str(inv_dir / NAMES[0])}},
        {"invocation_id": INV, "job_id": f"{INV}.1", "executor": "slurm",
         "data": {"output_dir": str(inv_dir)}},
        {"invocation_id": "0000aaaa1111bbbb", "job_id": "0000aaaa1111bbbb.0", "data": {}},
    ]
    db.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    assert names(locate(INV)) == NAMES  # no --job-dirs needed


def test_targets_naming_the_same_task_twice_export_it_once(inv_dir: Path, root: Path) -> None:
    found = locate_all([str(inv_dir), f"{INV}.1", str(inv_dir / "gsm8k.1")], [root])
    assert names(found) == NAMES


def test_unknown_invocation_id_says_where_it_looked(root: Path) -> None:
    with pytest.raises(LocateError) as err:
        locate("deadbeef00112233", [root])
    message = str(err.value)
    assert message.startswith("deadbeef00112233: no directory found; searched exec DB ")
    assert os.environ["NEMO_EVALUATOR_EXEC_DB_FILE"] in message
    assert f"--job-dirs {root}" in message


@pytest.mark.parametrize("target", ["not-an-id", "mmlu", "/no/such/dir"])
def test_target_that_is_neither_a_directory_nor_an_id(target: str) -> None:
    with pytest.raises(LocateError, match="not a directory, an invocation id"):
        locate(target)


def test_directory_that_is_neither_a_task_nor_an_invocation(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocateError, match="neither a task directory"):
        locate(str(tmp_path / "empty"))


def test_job_id_with_no_such_index(root: Path) -> None:
    with pytest.raises(LocateError, match=f"{INV}.7: .* has no task index 7"):
        locate(f"{INV}.7", [root])


def test_ambiguous_invocation_id_lists_every_match(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = write_invocation(root, example_tasks(), timestamp="20261204_120000")
    second = write_invocation(root, example_tasks(), timestamp="20261205_090000")
    with pytest.raises(LocateError) as err:
        locate(INV, [root])
    assert str(err.value) == f"{INV}: ambiguous, matches {first}, {second}"


def test_export_reports_locate_errors_without_exporting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_invocation(root, example_tasks(), timestamp="20261204_120000")
    write_invocation(root, example_tasks(), timestamp="20261205_090000")
    report = export_results(INV, config=ORG, job_dirs=[root], offline=True)
    assert not report.ok
    assert report.tasks == []
    assert len(report.errors) == 1 and "ambiguous" in report.errors[0]
    report = export_results("deadbeef00112233", config=ORG, job_dirs=[root], offline=True)
    assert not report.ok and "no directory found" in report.errors[0]
    assert not list(root.rglob("wandb-export"))


# --- waiting for and reading results.yml -------------------------------------------------------


def test_wait_returns_a_complete_results_file(inv_dir: Path) -> None:
    (loc, *_) = locate(str(inv_dir))
    doc = wait_for_results(loc, timeout=5, poll=0.05)
    assert doc["results"]["groups"]["mmlu"]["metrics"]["acc"]["scores"]["acc"]["value"] == 0.6812


class FakeClock:
    """Stands in for the `time` module in results.py: sleeping advances the clock at once, so
    the number of polls within a timeout is exact. Wall and monotonic time are the same."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def set_mtime(self, path: Path, age: float = 0.0) -> None:
        """Give `path` the modification time `age` seconds before now."""
        stamp = int((self.now - age) * 1_000_000_000)
        os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(results_mod, "time", fake)
    return fake


def test_wait_polls_until_the_deadline(inv_dir: Path, clock: FakeClock) -> None:
    task_dir = task_dirs(inv_dir)[0]
    (task_dir / "artifacts" / "results.yml").unlink()
    (loc,) = locate(str(task_dir))
    with pytest.raises(WaitTimeout, match="does not exist after waiting 2s"):
        wait_for_results(loc, timeout=2, poll=0.5)
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]


def test_wait_needs_two_equal_looks_unless_the_timeout_is_zero(
    inv_dir: Path, clock: FakeClock
) -> None:
    (loc, *_) = locate(str(inv_dir))
    clock.set_mtime(loc.results_file)  # just written
    assert wait_for_results(loc, timeout=5, poll=0.5)["results"]
    # the first look only records size and mtime; the second comes soon after
    assert clock.sleeps == [results_mod.FIRST_RECHECK]
    clock.set_mtime(loc.results_file)
    assert wait_for_results(loc, timeout=0)["results"]
    assert clock.sleeps == [results_mod.FIRST_RECHECK]


def test_a_results_file_untouched_for_a_while_is_read_at_once(
    inv_dir: Path, clock: FakeClock
) -> None:
    (loc, *_) = locate(str(inv_dir))
    clock.set_mtime(loc.results_file, age=results_mod.SETTLED_AFTER + 1)
    assert wait_for_results(loc, timeout=5, poll=0.5)["results"]
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "results.yml does not exist"),
        ("", "results.yml is empty"),
        ("results: {tasks: [unclosed\n", "results.yml is not valid YAML"),
        ("config: {}\n", "results.yml has no 'results' section"),
    ],
)
def test_incomplete_results_time_out_with_the_reason(
    inv_dir: Path, clock: FakeClock, content: str | None, reason: str
) -> None:
    task_dir = task_dirs(inv_dir)[1]
    results = task_dir / "artifacts" / "results.yml"
    if content is None:
        results.unlink()
    else:
        results.write_text(content)
        clock.set_mtime(results)  # written just now, then left alone
    (loc,) = locate(str(task_dir))
    with pytest.raises(WaitTimeout) as err:
        wait_for_results(loc, timeout=results_mod.SETTLED_AFTER, poll=0.25)
    assert str(err.value).startswith(f"{results}: {reason}")
    assert str(err.value).endswith(f"after waiting {results_mod.SETTLED_AFTER:g}s")
    # a file that is there is looked at again soon, then at every poll
    first = 0.25 if content is None else results_mod.FIRST_RECHECK
    assert clock.sleeps[0] == first and set(clock.sleeps[1:-1]) == {0.25}
    assert sum(clock.sleeps) == pytest.approx(results_mod.SETTLED_AFTER)
