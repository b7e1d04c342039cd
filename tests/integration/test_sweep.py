"""Sweeps of real guests with the local executor: results, kill -9 of the driver and resume,
a job's node dying (its QEMU, or the whole job) and being retried, cancel. Those about a
job's own QEMU run without the node pool (VMWU_POOL=off; tests/integration/test_pool.py
has the pooled sweep's)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from tests.integration.conftest import Vmwu
from tests.integration.sweeps import (
    assert_whole_results,
    jobs_running,
    markers,
    qemu_of,
    running_app,
    sleeper_plan,
    sleeper_unit,
    start_sweep,
    summary,
)
from tests.waits import wait_for
from vmwu import procstat as procs


def test_a_sweep_of_real_guests(vmwu: Vmwu) -> None:
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 3)
    result = vmwu("sweep", plan, "--results", "res", "-j", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    res = vmwu.tmp / "res"
    assert_whole_results(res, 3)
    for job in summary(res)["jobs"]:
        assert job["state"] == "done" and job["exit_code"] == 0 and job["attempts"] == 1
        out = res / job["result"]
        status = json.loads((out / "status.json").read_text())
        assert status["outcome"] == "app"  # the vmwu run's own status.json, kept
        assert (out / "result.txt").read_text().startswith(f"job {job['params']['n']} ")
    again = vmwu("sweep", plan, "--results", "res", timeout=300)
    assert again.returncode == 0 and "3 jobs (0 new)" in again.stderr


def test_kill_9_of_the_driver_mid_sweep_then_resume(vmwu: Vmwu) -> None:
    vmwu.extra_env["VMWU_POOL"] = "off"  # QEMU in the job's own process tree
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 5, seconds="2")
    res = vmwu.tmp / "res"
    driver = start_sweep(vmwu, plan, "--results", res, "-j", "2")
    # kill it while some jobs are done and others are running
    wait_for(lambda: list((res / "jobs").glob("j-*")) and markers(res), 120, "a job done")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    running = {m["job"] for m in markers(res)}
    resumed = vmwu("sweep", "resume", res, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    jobs = summary(res)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 5
    assert all(j["attempts"] == 1 for j in jobs)  # the running ones were waited for, not rerun
    assert running  # (there were some to re-attach)
    assert_whole_results(res, 5)
    assert not list((res / "attempts").iterdir())


def test_a_job_whose_node_dies_is_retried(vmwu: Vmwu) -> None:
    vmwu.extra_env["VMWU_POOL"] = "off"  # QEMU in the job's own process tree
    unit = sleeper_unit(vmwu)
    # the first attempt of each job sleeps long enough to be killed; retries do not sleep
    seconds = '$([ "$VMWU_JOB_ATTEMPT" = 1 ] && echo 60 || echo 0)'
    plan = sleeper_plan(vmwu.tmp, unit, 2, seconds=seconds)
    res = vmwu.tmp / "res"
    driver = start_sweep(vmwu, plan, "--results", res, "-j", "2")
    first = wait_for(lambda: jobs_running(res, 2), 120, "2 jobs running")
    by_job = {m["job"]: m for m in first}
    crashed, lost = sorted(by_job)
    # 1. the VM dies under vmwu run (exit 245, "VM crashed"): an infrastructure failure
    qemu = wait_for(lambda: running_app(by_job[crashed]), 120, "the first job's app")
    os.kill(qemu, signal.SIGKILL)
    # 2. the whole job disappears, as with a node that goes down
    wait_for(lambda: qemu_of(by_job[lost]), 120, "QEMU of the second job")
    for pid in [int(by_job[lost]["pid"]), *procs.descendants(int(by_job[lost]["pid"]))]:
        with contextlib.suppress(ProcessLookupError):  # already gone with the runner
            os.kill(pid, signal.SIGKILL)
    assert driver.wait(timeout=300) == 0, driver.stderr.read() if driver.stderr else ""
    jobs = {j["job"]: j for j in summary(res)["jobs"]}
    assert jobs[crashed]["state"] == jobs[lost]["state"] == "done"
    assert jobs[crashed]["attempts"] == jobs[lost]["attempts"] == 2
    record = json.loads((res / "attempts" / f"{crashed}.a1" / "job.json").read_text())
    assert record["infrastructure_failure"] and record["exit_code"] == 245
    assert not (res / "attempts" / f"{lost}.a1").exists()  # a lost node leaves nothing
    assert_whole_results(res, 2)


def test_cancel_leaves_no_guest_running(vmwu: Vmwu) -> None:
    vmwu.extra_env["VMWU_POOL"] = "off"  # QEMU in the job's own process tree
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 3, seconds="60")
    res = vmwu.tmp / "res"
    driver = start_sweep(vmwu, plan, "--results", res, "-j", "2")
    running = wait_for(lambda: jobs_running(res, 2), 120, "2 jobs running")
    qemus = [wait_for(lambda m=m: qemu_of(m), 120, "QEMU") for m in running]
    stamps = {q: procs.start_time(q) for q in qemus}
    result = vmwu("sweep", "cancel", res, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 cancelled" in result.stdout
    assert driver.wait(timeout=120) == 1
    assert not any(procs.alive(q, stamps[q]) for q in qemus)
    assert list((res / "jobs").iterdir()) == []
    assert [j["state"] for j in summary(res)["jobs"]] == ["cancelled"] * 3


def test_status_and_report_of_a_real_sweep(vmwu: Vmwu) -> None:
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 2, code="3")
    result = vmwu("sweep", plan, "--results", "res", timeout=300)
    assert result.returncode == 1  # the app exited 3: failed, recorded, not retried
    res = vmwu.tmp / "res"
    jobs = summary(res)["jobs"]
    assert [(j["state"], j["exit_code"], j["attempts"]) for j in jobs] == [("failed", 3, 1)] * 2
    status = vmwu("sweep", "status", res)
    assert "2 failed" in status.stdout and "exit 3" in status.stdout
    report = vmwu("sweep", "report", res, "-o", vmwu.tmp / "t.png")
    assert report.returncode == 0, report.stderr
    assert Path(report.stdout.strip()).read_bytes()[:4] == b"\x89PNG"
