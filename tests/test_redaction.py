"""Secrets never leave the task directory: not staged, not spooled, not in any W&B file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nemo_wandb_hook import export_results
from nemo_wandb_hook.example import gsm8k_task
from nemo_wandb_hook.redaction import MASK, Redactor, is_secret_name
from tests.support.results_fixtures import (
    ORG,
    by_task,
    edit_yaml,
    files_containing,
    offline_run_of,
    staged_files,
    task_dirs,
)

R = Redactor()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("api_key: s3cr3tvalue\n", f"api_key: {MASK}\n"),
        ("    HF_TOKEN: plainvalue\n", f"    HF_TOKEN: {MASK}\n"),
        ('{"api_key": "s3cr3t", "model": "m"}', f'{{"api_key": "{MASK}", "model": "m"}}'),
        ("export WANDB_API_KEY=abc123\n", f"export WANDB_API_KEY={MASK}\n"),
        ("NGC_API_KEY='quoted value'", f"NGC_API_KEY='{MASK}'"),
        ("env_vars: {HF_TOKEN: x1, OTHER: y}", f"env_vars: {{HF_TOKEN: {MASK}, OTHER: y}}"),
        ("run --api-key abc123 --model m", f"run --api-key {MASK} --model m"),
        ("run --token=abc123", f"run --token={MASK}"),
        ("password = hunter2", f"password = {MASK}"),
    ],
)
def test_values_of_secret_looking_keys_are_masked(line: str, expected: str) -> None:
    assert R.line(line) == expected


@pytest.mark.parametrize(
    "line", ["Authorization: Bearer eyJhbGciOi.payload.sig", "-H 'authorization: bearer "
             "eyJhbGciOi.payload.sig'", '{"Authorization": "Bearer eyJhbGciOi.payload.sig"}'],
)
def test_bearer_tokens_are_masked(line: str) -> None:
    masked = R.line(line)
    assert "eyJhbGciOi" not in masked and "payload" not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    "token",
    [
        "hf_abcdefghijklmnopqrstuvwxyz012345",
        "sk-proj-abcdefghijklmnop1234",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "nvapi-abcdefghijklmnop-1234",
        "xoxb-1234567890-abcdef",
        "0123456789abcdef0123456789abcdef01234567",  # a W&B API key
        "local-0123456789abcdef0123456789abcdef01234567",  # a W&B server key
    ],
)
def test_token_shaped_strings_are_masked_anywhere(token: str) -> None:
    text = f"using model m with {token} today"
    assert R.line(text) == f"using model m with {MASK} today"


@pytest.mark.parametrize(
    "line",
    [
        "max_tokens: 512\n",
        "api_key_name: NGC_API_KEY\n",  # the variable's name, not its value
        "tokenizer: meta-llama/Llama-3.1-8B\n",
        "key_metric: acc\n",
        "git_hash: 0123abc\n",
        "sha: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",  # sha256
        "model_id: meta/llama-3.1-8b-instruct\n",
    ],
)
def test_ordinary_values_are_kept(line: str) -> None:
    assert R.line(line) == line


def test_masking_is_idempotent() -> None:
    once = R.text("api_key: abc\nHF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz\n")
    assert R.text(once) == once


def test_extra_patterns() -> None:
    redactor = Redactor([r"corp-[0-9]{6}"])
    assert redactor.line("id corp-123456 x") == f"id {MASK} x"
    with pytest.raises(ValueError, match="not a valid regex"):
        Redactor(["(x"])


@pytest.mark.parametrize(
    ("name", "secret"),
    [("api_key", True), ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("client-secret", True),
     ("db.password", True), ("max_tokens", False), ("api_key_name", False), ("monkey", False),
     ("tokenizer", False), ("", False)],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


# --- planted secrets, end to end ---------------------------------------------------------------

SECRETS = {
    "hf token in the launcher config": "hf_PlantedLauncherToken0123456789",
    "api_key value in the launcher config": "PlantedApiKeyValue-launcher",
    "HF_TOKEN env var in config.yml": "PlantedEnvTokenValue-configyml",
    "api_key in run_config.yml": "PlantedApiKeyValue-runconfig",
    "token on the launcher command line": "PlantedCommandLineToken-42",
    "W&B key in a log": "feedfacecafebeef0123456789abcdef01234567",
    "bearer token in a log": "PlantedBearerToken.abc.def",
    "HF token in results.yml's command": "hf_PlantedResultsCommandToken0123",
    ".secrets.env": "nvapi-demo-secret-not-real",
}


def plant_secrets(task_dir: Path) -> None:
    artifacts = task_dir / "artifacts"
    s = SECRETS
    launcher_extra = {
        "target": {"api_endpoint": {"model_id": "m", "api_key": s["api_key value in the "
                                                                    "launcher config"]}},
        "evaluation": {"env_vars": {"HF_TOKEN": s["hf token in the launcher config"]}},
    }
    meta = yaml.safe_load((artifacts / "metadata.yaml").read_text())
    meta["launcher_resolved_config"].update(launcher_extra)
    meta["launcher_command"] = (
        f"nemo-evaluator-launcher run --config-name gsm8k "
        f"-o evaluation.env_vars.HF_TOKEN={s['token on the launcher command line']}"
    )
    (artifacts / "metadata.yaml").write_text(yaml.safe_dump(meta))
    config = yaml.safe_load((artifacts / "config.yml").read_text())
    config.update(launcher_extra)
    config["execution"]["env_vars"] = {"HF_TOKEN": s["HF_TOKEN env var in config.yml"]}
    (artifacts / "config.yml").write_text(yaml.safe_dump(config))
    run_config = yaml.safe_load((artifacts / "run_config.yml").read_text())
    run_config["target"]["api_endpoint"]["api_key"] = s["api_key in run_config.yml"]
    (artifacts / "run_config.yml").write_text(yaml.safe_dump(run_config))
    edit_yaml(artifacts / "results.yml", {
        "command": f"HF_TOKEN={s['HF token in results.yml' + chr(39) + 's command']} lm-eval"})
    (task_dir / "logs" / "client.log").write_text(
        "starting\n"
        f"export WANDB_API_KEY={s['W&B key in a log']}\n"
        f"POST /v1/chat -H 'Authorization: Bearer {s['bearer token in a log']}'\n"
        "done\n"
    )
    (task_dir / "logs" / ".secrets.env").write_text(f"NGC_API_KEY={s['.secrets.env']}\n")


@pytest.mark.parametrize("log_mode", ["per_task", "multi_task"])
def test_planted_secrets_appear_in_no_staged_spooled_or_wandb_file(
    make_invocation, tmp_path: Path, log_mode: str
) -> None:
    inv_dir = make_invocation([gsm8k_task()])
    (task_dir,) = task_dirs(inv_dir)
    plant_secrets(task_dir)
    for label, secret in SECRETS.items():  # the plant worked: each is in the task dir
        assert files_containing(task_dir, secret), label

    report = export_results(str(inv_dir), config={**ORG, "log_logs": True, "log_mode": log_mode},
                            offline=True, wait_timeout=0)
    assert report.ok, report.as_dict()

    # What was exported is complete, with the secrets masked out of it ...
    stage = inv_dir / "wandb-export" / inv_dir.name.rsplit("-", 1)[1] / task_dir.name
    assert staged_files(stage) == [
        "config.yaml", "eval_factory_metrics.json", "logs/client-4242000.log", "logs/client.log",
        "logs/slurm-4242000.log", "manifest.json", "metadata.yaml", "results.yml",
        "run_config.yml",
    ]
    assert MASK in (stage / "config.yaml").read_text()
    assert MASK in (stage / "logs" / "client.log").read_text()
    assert "starting\n" in (stage / "logs" / "client.log").read_text()
    run = offline_run_of(by_task(report)[task_dir.name])
    assert run.config["launcher_command"].startswith("nemo-evaluator-launcher run")

    # ... and no file anywhere outside the original task directory holds any of them.
    for label, secret in SECRETS.items():
        leaked = files_containing(tmp_path, secret, exclude=[task_dir])
        assert leaked == [], f"{label} leaked into {leaked}"
