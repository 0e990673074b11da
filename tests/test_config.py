"""The export configuration: launcher defaults, aliases, layered sources, and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from nemo_wandb_hook import export_results
from nemo_wandb_hook.config import ConfigError, ExportConfig, resolve
from tests.support.results_fixtures import ORG, edit_yaml, set_launcher_wandb, task_dirs


def artifacts_of(inv_dir: Path) -> Path:
    return task_dirs(inv_dir)[0] / "artifacts"


def write_config(tmp_path: Path, doc: object, name: str = "export.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_launcher_defaults() -> None:
    cfg = resolve(None, api=ORG)
    assert (cfg.entity, cfg.project) == ("myorg", "evals")
    assert cfg.log_mode == "per_task"
    assert cfg.job_type == "evaluation"
    assert cfg.log_artifacts is True
    assert cfg.log_logs is False
    assert cfg.group is None  # the run's group falls back to the invocation id
    assert (cfg.name, cfg.description, cfg.run_id) == (None, None, None)
    assert (cfg.tags, cfg.log_metrics, cfg.extra_metadata) == ([], [], {})
    assert cfg.webhook_fields() == {}
    assert cfg.log_stats == ["stderr"]
    assert cfg.mode == "auto"
    assert (cfg.log_tables, cfg.log_samples) == (True, False)


def test_every_key_can_be_set() -> None:
    every = {
        **ORG, "log_mode": "multi_task", "name": "n", "group": "g", "tags": ["a", "b"],
        "description": "d", "job_type": "jt", "log_metrics": ["acc"], "log_artifacts": False,
        "log_logs": True, "extra_metadata": {"team": "x"}, "run_id": "rid",
        "triggered_by_webhook": True, "webhook_source": "ci", "source_artifact": "org/a:v1",
        "config_source": "cfg.yaml", "stage_dir": "/s", "mode": "offline", "wait_timeout": 5,
        "budget": 30, "retry": {"attempts": 2, "max_wait": 1, "deadline": 10},
        "log_stats": ["stderr", "count"], "redact": ["secret-[0-9]+"],
        "log_tables": False, "log_samples": True, "samples_limit": 50,
        "only_required": False, "job_dirs": ["/r"],
    }
    assert set(every) == set(ExportConfig.model_fields), "a config key is not covered here"
    cfg = resolve(None, api=every)
    dumped = cfg.model_dump()
    dumped["stage_dir"] = str(dumped["stage_dir"])
    dumped["job_dirs"] = [str(p) for p in dumped["job_dirs"]]
    assert dumped == {**every, "wait_timeout": 5.0, "budget": 30.0,
                      "retry": {"attempts": 2, "max_wait": 1.0, "deadline": 10.0}}
    assert cfg.webhook_fields() == {"triggered_by_webhook": True, "webhook_source": "ci",
                                    "source_artifact": "org/a:v1", "config_source": "cfg.yaml"}


@pytest.mark.parametrize("source", ["api", "override", "file", "task"])
def test_aliases_copy_artifacts_and_copy_logs(source: str, make_invocation, tmp_path: Path) -> None:
    aliased = {"copy_artifacts": False, "copy_logs": True}
    kwargs: dict = {}
    if source == "api":
        kwargs["api"] = {**ORG, **aliased}
    elif source == "override":
        kwargs["api"] = ORG
        kwargs["overrides"] = ["copy_artifacts=false", "copy_logs=true"]
    elif source == "file":
        kwargs["api"] = ORG
        kwargs["config_file"] = write_config(tmp_path, aliased)
    inv_dir = make_invocation(wandb={**ORG, **aliased} if source == "task" else ORG)
    cfg = resolve(artifacts_of(inv_dir), **kwargs)
    assert (cfg.log_artifacts, cfg.log_logs) == (False, True)


# --- sources and their precedence ------------------------------------------------------------


def test_task_launcher_config_is_used(make_invocation) -> None:
    inv_dir = make_invocation(wandb={**ORG, "tags": ["from-task"], "log_mode": "multi_task"})
    cfg = resolve(artifacts_of(inv_dir))
    assert (cfg.entity, cfg.project, cfg.tags, cfg.log_mode) == (
        "myorg", "evals", ["from-task"], "multi_task")


def test_task_config_files_config_yml_then_metadata_then_export_config(make_invocation) -> None:
    inv_dir = make_invocation()
    task = task_dirs(inv_dir)[0]
    artifacts = task / "artifacts"
    set_launcher_wandb(task, {**ORG, "name": "from-config-yml"}, ["config.yml"])
    set_launcher_wandb(task, {**ORG, "name": "from-metadata"}, ["metadata.yaml"])
    set_launcher_wandb(task, {**ORG, "name": "from-export-config"}, ["export_config.yml"])
    assert resolve(artifacts).name == "from-config-yml"
    (artifacts / "config.yml").unlink()
    assert resolve(artifacts).name == "from-metadata"
    edit_yaml(artifacts / "metadata.yaml", {"launcher_resolved_config": None})
    assert resolve(artifacts).name == "from-export-config"
    (artifacts / "export_config.yml").unlink()
    with pytest.raises(ConfigError, match="missing entity and project"):
        resolve(artifacts)


def test_metadata_only_layout(make_invocation) -> None:
    """Without the auto-export files, metadata.yaml's launcher_resolved_config is read."""
    inv_dir = make_invocation(wandb={**ORG, "job_type": "nightly"}, with_auto_export_files=False)
    artifacts = artifacts_of(inv_dir)
    assert not (artifacts / "config.yml").exists()
    assert resolve(artifacts).job_type == "nightly"


def test_malformed_task_config_falls_through_with_a_warning(
    make_invocation, caplog: pytest.LogCaptureFixture
) -> None:
    inv_dir = make_invocation(wandb={**ORG, "job_type": "from-metadata"})
    artifacts = artifacts_of(inv_dir)
    (artifacts / "config.yml").write_text("execution: [unclosed\n")
    with caplog.at_level(logging.WARNING):
        assert resolve(artifacts).job_type == "from-metadata"
    assert "config.yml" in caplog.text and "not valid YAML" in caplog.text


def test_unknown_key_in_task_launcher_config_is_ignored_with_a_warning(
    make_invocation, caplog: pytest.LogCaptureFixture
) -> None:
    inv_dir = make_invocation(wandb={**ORG, "copy_everything": True})
    with caplog.at_level(logging.WARNING):
        cfg = resolve(artifacts_of(inv_dir))
    assert cfg.entity == "myorg"
    assert "unknown key 'copy_everything'" in caplog.text


def test_launcher_generic_export_keys_are_accepted(tmp_path: Path) -> None:
    """A launcher export config passed verbatim works: only_required and job_dirs are its keys."""
    config = tmp_path / "export_config.yml"
    config.write_text(yaml.safe_dump({"export": {"wandb": {
        **ORG, "only_required": False, "job_dirs": [str(tmp_path / "runs")]}}}))
    cfg = resolve(None, config)
    assert cfg.only_required is False and cfg.job_dirs == [tmp_path / "runs"]


def test_precedence_defaults_task_file_api_overrides(make_invocation, tmp_path: Path) -> None:
    inv_dir = make_invocation(wandb={
        "entity": "task-ent", "project": "task-proj", "job_type": "task-jt",
        "tags": ["task"], "description": "task", "name": "task",
        "extra_metadata": {"a": "task", "b": "task", "c": "task"},
    })
    config_file = write_config(tmp_path, {
        "project": "file-proj", "tags": ["file"], "description": "file", "name": "file",
        "extra_metadata": {"b": "file", "c": "file"},
    })
    cfg = resolve(
        artifacts_of(inv_dir),
        config_file=config_file,
        api={"description": "api", "name": "api"},
        overrides=["name=override", "extra_metadata.c=override"],
    )
    assert cfg.entity == "task-ent"
    assert cfg.job_type == "task-jt"
    assert cfg.project == "file-proj"
    assert cfg.tags == ["file"]
    assert cfg.description == "api"
    assert cfg.name == "override"
    assert cfg.log_mode == "per_task"  # untouched default
    assert cfg.extra_metadata == {"a": "task", "b": "file", "c": "override"}


@pytest.mark.parametrize(
    "shape",
    [
        "launcher_run_config",  # execution.auto_export.configs.wandb
        "export_config",  # export.wandb
        "bare",  # the keys themselves
    ],
)
def test_config_file_shapes(shape: str, tmp_path: Path) -> None:
    keys = {**ORG, "log_mode": "multi_task", "tags": ["t"]}
    doc = {
        "launcher_run_config": {
            "execution": {"type": "slurm", "auto_export": {"destinations": ["wandb"],
                                                           "configs": {"wandb": keys}}},
            "evaluation": {"tasks": [{"name": "gsm8k"}]},
        },
        "export_config": {"export": {"wandb": keys, "local": {"format": "json"}}},
        "bare": keys,
    }[shape]
    cfg = resolve(None, config_file=write_config(tmp_path, doc))
    assert (cfg.entity, cfg.project, cfg.log_mode, cfg.tags) == (
        "myorg", "evals", "multi_task", ["t"])


def test_overrides_are_yaml_typed_and_dotted_keys_nest() -> None:
    cfg = resolve(None, overrides=[
        "entity=myorg", "project=evals", "log_artifacts=false", "log_logs=yes",
        "tags=[a, b]", "wait_timeout=2.5", "retry.attempts=3",
        "extra_metadata.team=nlp", "extra_metadata.budget=3", "extra_metadata.sweep.lr=0.1",
    ])
    assert cfg.log_artifacts is False and cfg.log_logs is True
    assert cfg.tags == ["a", "b"]
    assert cfg.wait_timeout == 2.5
    assert cfg.retry.attempts == 3
    assert cfg.extra_metadata == {"team": "nlp", "budget": 3, "sweep": {"lr": 0.1}}


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("group=2024", "group", "2024"),
        ("run_id=0123", "run_id", "0123"),  # not the YAML 1.1 octal 83
        ("name=20261204_1200", "name", "20261204_1200"),  # not the integer 202612041200
        ("description=yes", "description", "yes"),  # not True
        ("name='quoted'", "name", "quoted"),
    ],
)
def test_text_keys_keep_the_text_as_typed(override: str, key: str, text: str) -> None:
    cfg = resolve(None, api=ORG, overrides=[override])
    assert getattr(cfg, key) == text


def test_single_string_for_a_list_key() -> None:
    cfg = resolve(None, api=ORG, overrides=["tags=nightly", "log_metrics=pass@1"])
    assert (cfg.tags, cfg.log_metrics) == (["nightly"], ["pass@1"])


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": ["projcet=x"]}, "-o: unknown key 'projcet'; did you mean 'project'?"),
        ({"overrides": ["copy_log=true"]}, "unknown key 'copy_log'; did you mean 'copy_logs'?"),
        ({"api": {"job_typ": "x"}}, "config= argument: unknown key 'job_typ'; did you mean "
                                    "'job_type'?"),
        ({"overrides": ["retry.atempts=3"]}, "unknown key 'retry.atempts'; did you mean "
                                             "'attempts'?"),
    ],
)
def test_unknown_key_names_the_closest_valid_key(kwargs: dict, message: str) -> None:
    kwargs.setdefault("api", {})
    kwargs["api"] = {**ORG, **kwargs["api"]}
    with pytest.raises(ConfigError) as err:
        resolve(None, **kwargs)
    assert message in str(err.value)


def test_unknown_key_in_config_file_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"export": {"wandb": {**ORG, "log_artefacts": True}}})
    with pytest.raises(ConfigError) as err:
        resolve(None, config_file=path)
    assert f"{path}: unknown key 'log_artefacts'; did you mean 'log_artifacts'?" in str(err.value)


def test_missing_entity_says_where_it_looked(make_invocation, tmp_path: Path) -> None:
    inv_dir = make_invocation(wandb={"project": "evals"})
    artifacts = artifacts_of(inv_dir)
    config_file = write_config(tmp_path, {"tags": ["x"]})
    with pytest.raises(ConfigError) as err:
        resolve(artifacts, config_file=config_file, overrides=["log_mode=multi_task"])
    message = str(err.value)
    assert message.startswith("missing entity:")
    assert "-o entity=" in message
    assert str(artifacts / "config.yml") in message  # where the task's config was found
    assert str(config_file) in message
    assert "-o options" in message


def test_missing_both_without_any_source_lists_the_task_files(make_invocation) -> None:
    inv_dir = make_invocation(wandb={})
    artifacts = artifacts_of(inv_dir)
    with pytest.raises(ConfigError) as err:
        resolve(artifacts)
    assert "missing entity and project" in str(err.value)
    assert f"{artifacts}/{{config.yml,metadata.yaml,export_config.yml}}" in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("log_artifacts=maybe", "log_artifacts: 'maybe' is not valid"),
        ("log_mode=both", "log_mode: 'both' is not valid"),
        ("wait_timeout=-1", "wait_timeout: -1 is not valid"),
        ("extra_metadata=5", "extra_metadata: 5 is not valid"),
        ("retry.attempts=0", "retry.attempts: 0 is not valid"),
        ("mode=sometimes", "mode: 'sometimes' is not valid"),
    ],
)
def test_wrong_type_names_key_and_value(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(None, api=ORG, overrides=[override])
    assert expected in str(err.value)


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match=r"-o 'entity': expected KEY=VALUE"):
        resolve(None, overrides=["entity"])


def test_malformed_yaml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("entity: myorg\nproject: [evals\n")
    with pytest.raises(ConfigError) as err:
        resolve(None, config_file=path)
    assert f"config file {path} is not valid YAML" in str(err.value)


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write_config(tmp_path, ["entity", "myorg"])
    with pytest.raises(ConfigError, match="expected a mapping of settings, got list"):
        resolve(None, config_file=path)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"cannot read config file {path}"):
        resolve(None, config_file=path)


def test_invalid_redact_pattern_is_a_config_error(make_invocation) -> None:
    inv_dir = make_invocation()
    with pytest.raises(ConfigError, match=r"redact pattern '\(unclosed' is not a valid regex"):
        export_results(str(inv_dir), config={**ORG, "redact": ["(unclosed"]}, wait_timeout=0,
                       offline=True)


def test_export_results_raises_config_errors(make_invocation) -> None:
    inv_dir = make_invocation(wandb={})
    with pytest.raises(ConfigError, match="missing entity and project"):
        export_results(str(inv_dir), offline=True)
    with pytest.raises(ConfigError, match="unknown --dest"):
        export_results(str(inv_dir), dest="s3", config=ORG)
