"""Tests against a real one-node Slurm (slurmctld + slurmd + munge) started by the fixture.

They check the Slurm behaviour the hook relies on: array jobs, afterany dependencies,
``srun --epilog``, slurm.conf Epilog (as root, no array variables) and ``scontrol show job``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.slurm_cluster import SlurmCluster

JOB_TIMEOUT = 60


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def _wait_for_file(path: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)
    return path


def _array_script(out_dir: Path, sleep: float = 0) -> str:
    return f"""#!/bin/bash
set -euo pipefail
sleep {sleep}
echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID" > {out_dir}/part.$SLURM_ARRAY_TASK_ID.tmp
mv {out_dir}/part.$SLURM_ARRAY_TASK_ID.tmp {out_dir}/part.$SLURM_ARRAY_TASK_ID
"""


def test_array_tasks_all_complete_and_write_files(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.sbatch(_array_script(tmp_path), "--array=0-5", "--job-name=nwh-array")

    states = slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)

    assert states[job] == "COMPLETED"
    assert {k: v for k, v in states.items() if k != job} == {
        f"{job}_{i}": "COMPLETED" for i in range(6)
    }
    for i in range(6):
        assert (tmp_path / f"part.{i}").read_text() == f"task {i} of {job}\n"
    tasks = slurm_cluster.show_array(job)
    assert [t["ArrayTaskId"] for t in tasks] == [str(i) for i in range(6)]
    assert all(t["ArrayJobId"] == job for t in tasks)


def test_afterany_dependency_runs_after_whole_array(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    array = slurm_cluster.sbatch(_array_script(tmp_path, sleep=1), "--array=0-5")
    dep = slurm_cluster.sbatch(
        f"#!/bin/bash\nls {tmp_path} | grep -c '^part\\.[0-9]*$' > {tmp_path}/seen\n",
        f"--dependency=afterany:{array}",
        "--kill-on-invalid-dep=yes",
    )

    states = slurm_cluster.wait_for_jobs([array, dep], timeout=JOB_TIMEOUT)

    assert states[array] == "COMPLETED"
    assert states[dep] == "COMPLETED"
    assert (tmp_path / "seen").read_text().strip() == "6"
    dep_info = slurm_cluster.show_job(dep)
    assert dep_info["Dependency"] == "(null)"  # satisfied and cleared
    last_task_end = max(t["EndTime"] for t in slurm_cluster.show_array(array))
    assert dep_info["StartTime"] >= last_task_end  # ISO timestamps compare as strings


def test_srun_epilog_runs_with_job_id(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    epilog = tmp_path / "srun-epilog.sh"
    epilog.write_text(f"#!/bin/bash\n/usr/bin/env > {tmp_path}/srun-epilog.env\n")
    epilog.chmod(0o755)
    job = slurm_cluster.sbatch(
        f"#!/bin/bash\nset -e\nsrun --epilog={epilog} /bin/true\necho done > {tmp_path}/job-done\n"
    )

    states = slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)

    assert states[job] == "COMPLETED"
    assert (tmp_path / "job-done").exists()
    env = _read_env_file(tmp_path / "srun-epilog.env")
    assert env["SLURM_JOB_ID"] == job
    assert "SLURM_STEP_ID" in env or "SLURM_STEPID" in env


def test_slurm_conf_epilog_runs_as_root_without_array_vars(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    out = tmp_path / "epilog-out"
    out.mkdir()
    # No PATH in a slurm.conf Epilog: absolute paths only.
    slurm_cluster.install_epilog(
        "50-record-env",
        f"""#!/bin/bash
/usr/bin/env > {out}/env.$SLURM_JOB_ID.tmp
echo "EUID=$EUID" >> {out}/env.$SLURM_JOB_ID.tmp
/bin/mv {out}/env.$SLURM_JOB_ID.tmp {out}/env.$SLURM_JOB_ID
""",
    )
    # A failing script must not drain the node: the wrapper always exits 0.
    slurm_cluster.install_epilog("60-fails", "#!/bin/bash\necho failing on purpose >&2\nexit 3\n")
    try:
        job = slurm_cluster.sbatch("#!/bin/bash\ntrue\n", "--array=0-1")
        states = slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)
        assert states[job] == "COMPLETED"

        tasks = slurm_cluster.show_array(job)
        assert len(tasks) == 2
        for task in tasks:
            env_file = _wait_for_file(out / f"env.{task['JobId']}")
            env = _read_env_file(env_file)
            # The epilog sees the task's own job id, not "<array>_<task>" ...
            assert env["SLURM_JOB_ID"] == task["JobId"]
            assert env["SLURM_JOB_USER"] == "root"
            assert env["EUID"] == "0"
            # ... and no array variables, no PATH: map back via `scontrol show job`.
            assert not any(k.startswith("SLURM_ARRAY_") for k in env), env
            assert "PATH" not in env
        log = slurm_cluster.epilog_log_text()
        assert "60-fails" in log
        assert "rc=3" in log
        assert slurm_cluster.wait_node_idle(timeout=15) == "idle"
    finally:
        slurm_cluster.remove_epilog("50-record-env")
        slurm_cluster.remove_epilog("60-fails")


def test_show_job_of_array_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(_array_script(tmp_path), "--array=0-2", cwd=tmp_path)
    slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)

    info = slurm_cluster.show_job(f"{job}_1")

    assert info["ArrayJobId"] == job
    assert info["ArrayTaskId"] == "1"
    assert info["WorkDir"] == str(tmp_path)
    assert info["JobState"] == "COMPLETED"
    # The same record by the task's own numeric job id.
    assert slurm_cluster.show_job(info["JobId"])["ArrayTaskId"] == "1"


def test_failing_job_is_reported_failed(slurm_cluster: SlurmCluster) -> None:
    job = slurm_cluster.sbatch("#!/bin/bash\nexit 3\n")

    states = slurm_cluster.wait_for_jobs([job], timeout=JOB_TIMEOUT)

    assert states[job] == "FAILED"
    assert slurm_cluster.show_job(job)["ExitCode"] == "3:0"
    assert slurm_cluster.node_state() == "idle"


def test_unknown_job_raises_key_error(slurm_cluster: SlurmCluster) -> None:
    with pytest.raises(KeyError):
        slurm_cluster.show_job("999999")
