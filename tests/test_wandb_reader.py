"""Tests for tests/support/wandb_reader.py against real wandb offline runs."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest
import wandb

from tests.support.wandb_reader import (
    BLOCK_SIZE,
    find_offline_runs,
    read_offline_run,
    read_records,
    read_table,
    user_config,
)


@pytest.fixture
def offline_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Isolated offline wandb: every wandb dir inside tmp_path, no real host, no API key."""
    dirs = {
        "WANDB_DIR": "wandb_dir",
        "WANDB_DATA_DIR": "wandb_data",
        "WANDB_CACHE_DIR": "wandb_cache",
        "WANDB_CONFIG_DIR": "wandb_config",
    }
    for var, name in dirs.items():
        (tmp_path / name).mkdir(exist_ok=True)  # the autouse conftest fixture made it
        monkeypatch.setenv(var, str(tmp_path / name))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "wandb_dir"
    wandb.teardown()


def _finish(run: wandb.Run, **kwargs: object) -> None:
    """Finish and flush: in 0.31 offline mode ``run.finish()`` can return while the
    ``.wandb`` file still holds only its header; tearing the service down flushes it."""
    run.finish(**kwargs)
    wandb.teardown()


def _only_run(root: Path) -> Path:
    runs = find_offline_runs(root)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def small_run(offline_wandb_env: Path) -> Path:
    run = wandb.init(project="p", name="small", config={"a": 1})
    run.log({"x": 1})
    run.log({"x": 2})
    _finish(run)
    return _only_run(offline_wandb_env)


def test_full_run_round_trip(offline_wandb_env: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    (src / "b.json").write_text('{"x": 1}')
    blob = "z" * 100_000  # forces FIRST/MIDDLE/LAST chunks across 32 KiB blocks

    run = wandb.init(
        entity="ent",
        project="proj",
        name="my-name",
        group="grp",
        job_type="eval",
        tags=["t1", "t2"],
        notes="some notes",
        config={"lr": 0.1, "model": {"name": "m", "layers": [1, 2]}, "blob": blob},
    )
    run.config.update({"extra": "e"})
    run.log({"acc": 0.5, "loss": 1})
    run.log({"acc": 0.75, "d": {"inner": 3}, "s": "txt", "n": None})
    run.summary["score"] = 1
    run.summary.update({"score": 2, "nested": {"k": "v"}})
    run.summary["gone"] = 1
    del run.summary["gone"]
    run.summary["tbl"] = wandb.Table(columns=["q", "a"], data=[["1+1", 2], ["2+2", 4]])
    art = wandb.Artifact("myart", type="dataset", description="desc", metadata={"k": "v"})
    art.add_file(str(src / "a.txt"))
    art.add_file(str(src / "b.json"), name="sub/b.json")
    run.log_artifact(art, aliases=["best"])
    run_id = run.id
    _finish(run)

    run_dir = _only_run(offline_wandb_env)
    assert (run_dir / f"run-{run_id}.wandb").stat().st_size > 2 * BLOCK_SIZE
    got = read_offline_run(run_dir)

    assert not got.truncated
    assert got.exit_code == 0
    assert (got.run_id, got.name, got.group, got.job_type) == (run_id, "my-name", "grp", "eval")
    assert (got.tags, got.notes) == (["t1", "t2"], "some notes")
    assert (got.entity, got.project) == ("ent", "proj")
    assert got.record_types[:2] == ["header", "run"]
    assert got.record_types[-1] == "exit"

    assert "_wandb" in got.config
    assert user_config(got) == {
        "lr": 0.1,
        "model": {"name": "m", "layers": [1, 2]},
        "blob": blob,
        "extra": "e",
    }

    assert [(h["_step"], h["acc"]) for h in got.history] == [(0, 0.5), (1, 0.75)]
    assert got.history[0]["loss"] == 1
    assert got.history[1]["d"] == {"inner": 3}
    assert got.history[1]["s"] == "txt"
    assert got.history[1]["n"] is None

    assert got.summary["score"] == 2
    assert got.summary["nested"] == {"k": "v"}
    assert got.summary["acc"] == 0.75
    assert got.summary["d"] == {"inner": 3}
    assert "gone" not in got.summary

    ref = got.summary["tbl"]
    assert ref["_type"] == "table-file"
    assert ref["path"].startswith("media/table/")
    table_file = run_dir / "files" / ref["path"]
    assert ref["sha256"] == hashlib.sha256(table_file.read_bytes()).hexdigest()
    assert read_table(got, "tbl") == (["q", "a"], [["1+1", 2], ["2+2", 4]])

    arts = {a.name: a for a in got.artifacts}
    assert arts[f"run-{run_id}-tbl"].type == "run_table"  # the SDK's auto table artifact
    a = arts["myart"]
    assert (a.type, a.description, a.metadata) == ("dataset", "desc", {"k": "v"})
    assert a.digest
    assert set(a.aliases) == {"best", "latest"}
    assert sorted(a.files) == ["a.txt", "sub/b.json"]
    for path, content in {"a.txt": b"hello", "sub/b.json": b'{"x": 1}'}.items():
        f = a.files[path]
        assert f.path == path
        assert f.size == len(content)
        assert f.digest == base64.b64encode(hashlib.md5(content).digest()).decode()
        assert f.read_bytes() == content


def test_exit_code_and_value_dicts_kept(offline_wandb_env: Path) -> None:
    run = wandb.init(project="p", config={"w": {"value": 1, "desc": "d"}, "plain": 2})
    _finish(run, exit_code=3)
    got = read_offline_run(_only_run(offline_wandb_env))
    assert got.exit_code == 3
    # 0.31 stores config values raw in the log: nothing to unwrap, user dicts stay intact.
    assert user_config(got) == {"w": {"value": 1, "desc": "d"}, "plain": 2}


def test_resumed_pieces_found_in_start_order(offline_wandb_env: Path) -> None:
    for piece in range(2):
        run = wandb.init(project="p", id="fixedid1", resume="allow", config={"piece": piece})
        run.log({"piece": piece})
        _finish(run)
    dirs = find_offline_runs(offline_wandb_env.parent)
    assert len(dirs) == 2
    runs = [read_offline_run(d) for d in dirs]
    assert [r.run_id for r in runs] == ["fixedid1", "fixedid1"]
    assert [user_config(r)["piece"] for r in runs] == [0, 1]
    assert [r.history[0]["piece"] for r in runs] == [0, 1]


def test_find_offline_runs_orders_by_stamp_then_collision_suffix(
    offline_wandb_env: Path, tmp_path: Path
) -> None:
    names = [
        ("a/offline-run-20240101_000000-abc-1", "abc"),
        ("offline-run-20240101_000000-abc", "abc"),
        ("b/c/offline-run-20231231_235959-x-y", "x-y"),
        ("offline-run-20240101_000000-abc-2", "abc"),
    ]
    for rel, run_id in names:
        (tmp_path / "tree" / rel).mkdir(parents=True)
        (tmp_path / "tree" / rel / f"run-{run_id}.wandb").touch()
    (tmp_path / "tree" / "latest-run").symlink_to(tmp_path / "tree" / names[1][0])
    (tmp_path / "tree" / "offline-run-20990101_000000-link").symlink_to(tmp_path / "tree" / "a")
    found = [p.name for p in find_offline_runs(tmp_path / "tree")]
    assert found == [
        "offline-run-20231231_235959-x-y",
        "offline-run-20240101_000000-abc",
        "offline-run-20240101_000000-abc-1",
        "offline-run-20240101_000000-abc-2",
    ]


def _copy_log(run_dir: Path, dest: Path, cut: int = 0) -> Path:
    shutil.copytree(run_dir, dest)
    log = next(dest.glob("run-*.wandb"))
    if cut:
        log.write_bytes(log.read_bytes()[:-cut])
    return log


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_truncated_file_keeps_earlier_records(small_run: Path, tmp_path: Path, cut: int) -> None:
    full, full_truncated = read_records(next(small_run.glob("run-*.wandb")))
    assert not full_truncated
    log = _copy_log(small_run, tmp_path / "cut" / small_run.name, cut)
    records, truncated = read_records(log)
    assert truncated
    assert records == full[: len(records)]
    assert len(records) == len(full) - 1

    got = read_offline_run(log.parent)
    assert got.truncated
    assert got.exit_code is None  # the exit record was lost
    assert got.name == "small"
    assert [h["x"] for h in got.history] == [1, 2]


def test_truncated_inside_multi_block_record(offline_wandb_env: Path, tmp_path: Path) -> None:
    run = wandb.init(project="p", config={"blob": "z" * 100_000})
    _finish(run)
    src = next(_only_run(offline_wandb_env).glob("run-*.wandb"))
    log = tmp_path / "cut.wandb"
    log.write_bytes(src.read_bytes()[: BLOCK_SIZE + 100])  # mid-way through the run record
    records, truncated = read_records(log)
    assert truncated
    assert [r.WhichOneof("record_type") for r in records] == ["header"]


def test_bad_checksum_raises_naming_file(small_run: Path, tmp_path: Path) -> None:
    log = _copy_log(small_run, tmp_path / "bad" / small_run.name)
    data = bytearray(log.read_bytes())
    data[-3] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checksum mismatch.*offset \d+") as err:
        read_records(log)
    assert str(log) in str(err.value)


def test_bad_header_raises(offline_wandb_env: Path, tmp_path: Path) -> None:
    log = tmp_path / "junk.wandb"
    log.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="bad header") as err:
        read_records(log)
    assert str(log) in str(err.value)


def test_read_table_missing_key(small_run: Path) -> None:
    got = read_offline_run(small_run)
    with pytest.raises(KeyError, match="no table under 'nope'"):
        read_table(got, "nope")
    with pytest.raises(KeyError, match="no table under 'x'"):
        read_table(got, "x")  # present, but not a table
