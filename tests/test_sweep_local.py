"""The local executor finds the runners it started again (what a resumed driver relies on
after a crash between forking a job and recording its handle), also before a runner has
written its run marker: a forked runner's command line is the driver's, so it is found by
what it is (the leader of its own session writing to the attempt's log), not by its name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waits import wait_for
from vmwu import procstat as procs
from vmwu.sweep.executors import Context, Submission
from vmwu.sweep.executors.local import LocalExecutor, find_exec_jobs, parse_handle
from vmwu.sweep.experiment import SweepOptions, create
from vmwu.sweep.layout import Layout


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, str]:
    """A created (not started) experiment of one job that sleeps: (results, job id)."""
    plan = tmp_path / "s.plan"
    plan.write_text("task main\n  exec sleep 300\nendtask\n")
    exp = create(plan, tmp_path / "res", SweepOptions())
    return exp.results, exp.journal.jobs()[0].id


@pytest.fixture
def executor(sweep: tuple[Path, str]) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(Context(sweep[0], "t", slots=1))
    yield ex
    ex.cancel({handle: handle for handle in ex.children})  # what a failed test left
    ex.close()


def test_a_forked_runner_is_found_without_its_marker(
    sweep: tuple[Path, str], executor: LocalExecutor
) -> None:
    results, job = sweep
    sub = Submission(job, 1)
    handle = executor.submit([sub], "b1")[job]
    marker = Layout(results).marker(job, 1)
    wait_for(marker.exists, 60, "the runner's run marker")
    assert executor.find("b1", [sub]) == {job: handle}  # from the marker
    marker.unlink()  # as before the runner writes it
    assert executor.find("b1", [sub]) == {job: handle}  # from /proc
    # another attempt of the same job was never started: not found
    assert executor.find("b1", [Submission(job, 2)]) == {}
    executor.cancel({job: handle})
    assert executor.find("b1", [sub]) == {}


def test_an_exec_job_started_as_the_dask_executor_does_is_found(
    sweep: tuple[Path, str],
) -> None:
    """`vmwu sweep exec-job` in a session of its own, its output to the attempt's log."""
    results, job = sweep
    layout = Layout(results)
    argv = [sys.executable, "-m", "vmwu", "sweep", "exec-job", str(results), job]
    with open(layout.log(job, 1), "ab") as log:
        proc = subprocess.Popen(
            [*argv, "--attempt", "1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        found = wait_for(lambda: find_exec_jobs(results, [Submission(job, 1)]), 60, "the exec-job")
        assert parse_handle(found[job]) == (proc.pid, procs.start_time(proc.pid))
        wait_for(layout.marker(job, 1).exists, 60, "the runner's run marker")
        layout.marker(job, 1).unlink()
        assert parse_handle(find_exec_jobs(results, [Submission(job, 1)])[job])[0] == proc.pid
    finally:
        procs.kill_tree(proc.pid, grace=5.0)
        proc.wait(timeout=60)
    assert find_exec_jobs(results, [Submission(job, 1)]) == {}


def test_a_process_writing_to_the_log_outside_a_session_of_its_own_is_not_a_runner(
    sweep: tuple[Path, str],
) -> None:
    """A step's program that inherited the log is not taken for the runner."""
    results, job = sweep
    with open(Layout(results).log(job, 1), "ab") as log:
        proc = subprocess.Popen(["sleep", "300"], stdout=log)
    try:
        assert os.getsid(proc.pid) != proc.pid
        assert find_exec_jobs(results, [Submission(job, 1)]) == {}
    finally:
        proc.kill()
        proc.wait()
