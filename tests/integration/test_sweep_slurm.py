"""The Slurm executor against a real single-node Slurm (slurmctld + slurmd + munge from
Debian's packages) that these tests start themselves with scripts/slurm-test-cluster.sh,
in a temporary directory, on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator

import pytest

from tests.budgets import slow_fixture
from tests.conftest import ROOT
from tests.integration.conftest import Vmwu
from tests.integration.sweeps import (
    assert_whole_results,
    markers,
    sleeper_plan,
    sleeper_unit,
    start_sweep,
    summary,
)
from tests.waits import wait_for

SCRIPT = ROOT / "scripts" / "slurm-test-cluster.sh"


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port < 65000:
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


@slow_fixture(240, scope="module")  # the cluster's start, below
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "VMWU_SLURM_DIR": str(directory),
        "VMWU_SLURM_PORT": str(_free_port_pair()),
        "VMWU_SLURM_CPUS": "2",
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().endswith(f"SLURM_CONF={directory}/slurm.conf")
    try:
        yield {"SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def svmwu(vmwu: Vmwu, slurm: dict[str, str]) -> Vmwu:
    vmwu.extra_env.update(slurm)
    return vmwu


def squeue(env: dict[str, str]) -> str:
    return subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%j"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_sweep_on_slurm_uses_one_job_array(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 3)
    result = svmwu("sweep", plan, "--executor", "slurm", "--results", "res", timeout=300)
    assert result.returncode == 0, result.stderr
    res = svmwu.tmp / "res"
    assert_whole_results(res, 3)
    jobs = summary(res)["jobs"]
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
    assert sorted(p.name for p in (res / "slurm").glob("*.sh")) == ["b00001.sh"]
    # the journal keeps the Slurm ids: ARRAYID_TASK
    rows = sqlite3.connect(res / "journal.sqlite").execute("SELECT handle FROM jobs").fetchall()
    array_ids = {h.split("_")[0] for (h,) in rows}
    assert len(array_ids) == 1 and all(h.split("_")[1].isdigit() for (h,) in rows)
    assert "vmwu-" in squeue(svmwu.extra_env)


def test_jobs_per_task_runs_several_jobs_in_each_array_task(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 5)
    result = svmwu(
        "sweep", plan, "--executor", "slurm", "--jobs-per-task", "2", "--results", "res",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    res = svmwu.tmp / "res"
    assert_whole_results(res, 5)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in summary(res)["jobs"])
    # 5 jobs, 2 per task: tasks 0, 1 and 2 of one array, each job its own result
    rows = sqlite3.connect(res / "journal.sqlite").execute("SELECT handle FROM jobs").fetchall()
    tasks = sorted(h for (h,) in rows)
    assert len({h.split("_")[0] for h in tasks}) == 1
    assert sorted(int(h.split("_")[1]) for h in tasks) == [0, 0, 1, 1, 2]
    lines = (res / "slurm" / "b00001.list").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [4, 4, 2]


def test_kill_9_of_the_driver_then_resume_reattaches(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 3, seconds="4")
    res = svmwu.tmp / "res"
    driver = start_sweep(svmwu, plan, "--executor", "slurm", "--results", res, env=svmwu.extra_env)
    wait_for(lambda: markers(res), 120, "a job running in Slurm")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = svmwu("sweep", "resume", res, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    jobs = summary(res)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert all(j["attempts"] == 1 for j in jobs)
    # re-attached, not resubmitted: still the one batch
    assert sorted(p.name for p in (res / "slurm").glob("*.sh")) == ["b00001.sh"]
    assert_whole_results(res, 3)


def test_scancel_from_outside_is_recorded_as_cancelled(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 2, seconds="$(( ${n} == 1 ? 60 : 0 ))")
    res = svmwu.tmp / "res"
    driver = start_sweep(svmwu, plan, "--executor", "slurm", "--results", res, env=svmwu.extra_env)

    def long_job() -> str | None:
        for m in markers(res):
            params = json.loads((res / "spec" / f"{m['job']}.json").read_text())["params"]
            if params["n"] == 1:
                db = sqlite3.connect(res / "journal.sqlite")
                row = db.execute("SELECT handle FROM jobs WHERE id = ?", (m["job"],)).fetchone()
                return str(row[0]) if row and row[0] and "_" in row[0] else None
        return None

    handle = wait_for(long_job, 120, "the long job running")
    subprocess.run(["scancel", handle], env={**os.environ, **svmwu.extra_env}, check=True)
    assert driver.wait(timeout=300) == 1
    jobs = {j["params"]["n"]: j for j in summary(res)["jobs"]}
    assert jobs[1]["state"] == "cancelled" and jobs[1]["result"] is None
    assert "CANCELLED" in (jobs[1]["error"] or "")
    assert jobs[2]["state"] == "done"


def test_exported_slurm_scripts_run_without_the_driver(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 2)
    out = svmwu.tmp / "export"
    result = svmwu("sweep", "export", "--format", "slurm", plan, "-o", out)
    assert result.returncode == 0, result.stderr
    sub = subprocess.run(
        ["sbatch", "--parsable", str(out / "submit.slurm")],
        env={**os.environ, **svmwu.env},
        capture_output=True,
        text=True,
    )
    assert sub.returncode == 0, sub.stderr
    wait_for(
        lambda: len([p for p in (out / "jobs").iterdir() if p.name.startswith("j-")]) == 2,
        timeout=240,
        message="2 exported jobs done",
    )
    for job in (out / "jobs").iterdir():
        info = json.loads((job / "job.json").read_text())
        assert info["state"] == "done", (job / "task.log").read_text()
        assert (job / "out" / "status.json").is_file()  # the vmwu run output, kept


def test_slurm_job_names_encode_the_experiment(svmwu: Vmwu) -> None:
    unit = sleeper_unit(svmwu)
    plan = sleeper_plan(svmwu.tmp, unit, 1)
    result = svmwu("sweep", plan, "--executor", "slurm", "--results", "r", timeout=300)
    assert result.returncode == 0, result.stderr
    exp = json.loads((svmwu.tmp / "r" / "experiment.json").read_text())["id"]
    assert f"vmwu-{exp}-b00001" in squeue(svmwu.extra_env)
