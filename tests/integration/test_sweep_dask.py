"""The Dask executor: a LocalCluster by default, an existing scheduler with --scheduler, and
a resume after kill -9 of the driver (whose LocalCluster died with it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

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


def test_a_sweep_on_a_dask_local_cluster(vmwu: Vmwu) -> None:
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 3)
    result = vmwu("sweep", plan, "--executor", "dask", "-j", "2", "--results", "res", timeout=300)
    assert result.returncode == 0, result.stderr
    assert_whole_results(vmwu.tmp / "res", 3)
    assert all(j["attempts"] == 1 for j in summary(vmwu.tmp / "res")["jobs"])


def test_kill_9_of_a_dask_driver_then_resume(vmwu: Vmwu) -> None:
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 3, seconds="3")
    res = vmwu.tmp / "res"
    driver = start_sweep(vmwu, plan, "--executor", "dask", "-j", "2", "--results", res)
    wait_for(lambda: markers(res), 120, "a job running")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = vmwu("sweep", "resume", res, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    jobs = summary(res)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert_whole_results(res, 3)


@pytest.fixture
def scheduler(vmwu: Vmwu) -> Iterator[str]:
    """A dask scheduler and one worker, as a cluster would have them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **vmwu.env}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "2",
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_sweep_on_an_existing_scheduler(vmwu: Vmwu, scheduler: str) -> None:
    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 2)
    result = vmwu(
        "sweep",
        plan,
        "--executor",
        "dask",
        "--scheduler",
        scheduler,
        "--results",
        "res",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_whole_results(vmwu.tmp / "res", 2)


def test_an_unreachable_scheduler_is_one_line(vmwu: Vmwu) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = sleeper_plan(vmwu.tmp, vmwu.tmp / "x.ova", 1)
    (vmwu.tmp / "x.ova").write_text("not used")
    result = vmwu(
        "sweep", plan, "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}", timeout=120
    )
    assert result.returncode == 247, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Dask scheduler not reachable" in lines[0]
