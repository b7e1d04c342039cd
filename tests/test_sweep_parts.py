"""Small pieces of the sweep machinery: Slurm state mapping, the timeline's segments, the
progress line, process identity, summary rows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmwu import procstat as procs
from vmwu.sweep.executors import Phase, check_name
from vmwu.sweep.executors.slurm import _field, phase_of
from vmwu.sweep.journal import State
from vmwu.sweep.progress import compact_line, progress_line
from vmwu.sweep.report import segments


def test_slurm_states() -> None:
    assert phase_of("PENDING") is Phase.QUEUED
    assert phase_of("RUNNING") is Phase.RUNNING
    assert phase_of("COMPLETING") is Phase.RUNNING
    assert phase_of("CANCELLED") is Phase.CANCELLED
    assert phase_of("CANCELLED+") is Phase.CANCELLED
    for gone in ("COMPLETED", "FAILED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", ""):
        assert phase_of(gone) is Phase.ENDED


def test_slurm_fields() -> None:
    line = (
        "JobId=6 UserId=root(0) Name=vmwu-ab12-b00001 JobState=CANCELLED Partition=test "
        "NodeList=localhost ArrayJobId=5 ArrayTaskId=0 ExitCode=0:15"
    )
    assert _field(line, "JobState") == "CANCELLED"
    assert _field(line, "JobId") == "6"
    assert _field(line, "ArrayJobId") == "5"
    assert _field(line, "Missing") == ""


def test_timeline_segments() -> None:
    events = [
        {"job": "a", "at": 0.0, "state": "submitting"},
        {"job": "a", "at": 0.1, "state": "submitted"},
        {"job": "a", "at": 1.0, "state": "running"},
        {"job": "a", "at": 3.0, "state": "pending"},  # a retry
        {"job": "a", "at": 3.1, "state": "submitting"},
        {"job": "a", "at": 4.0, "state": "done"},
        {"job": "b", "at": 0.0, "state": "submitting"},
        {"job": "b", "at": 2.0, "state": "running"},
    ]
    segs = [(s.job, s.start, s.end, s.kind) for s in segments(events, now=5.0)]
    assert ("a", 0.0, 1.0, "queued") in segs
    assert ("a", 1.0, 3.0, "retried") in segs
    assert ("a", 3.1, 4.0, "done") in segs
    assert ("b", 2.0, 5.0, "running") in segs


def test_progress_lines() -> None:
    counts = dict.fromkeys(State, 0)
    counts.update({State.DONE: 3, State.FAILED: 1, State.RUNNING: 2, State.PENDING: 4})
    line = progress_line(counts, 0.5)
    assert line.startswith("4/10 ended: 3 done, 1 failed, 0 cancelled, 2 running")
    assert "30.0 jobs/min, ETA 12s" in line
    assert compact_line(counts, None) == "done 3  failed 1  running 2  pending 4"


def test_a_pid_is_the_same_process_only_with_its_start_time() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = procs.start_time(proc.pid)
        assert start is not None and procs.alive(proc.pid, start)
        assert not procs.alive(proc.pid, start + 1)  # pid reused by another process
        assert proc.pid in procs.descendants(os.getpid())
    finally:
        proc.kill()
        proc.wait()
    assert not procs.alive(proc.pid, start)


def test_executor_names() -> None:
    assert check_name("dask") == "dask"


def test_summary_row(tmp_path: Path) -> None:
    from vmwu.sweep.journal import JobRow
    from vmwu.sweep.summary import row_dict

    row = JobRow("j-1", 0, {"n": 1}, State.DONE, 1, 0, "node1", "pid:1:2", None, 1.0, 2.0, 5.5)
    d = row_dict(row, tmp_path)
    assert d["seconds"] == 3.5 and d["result"] is None and d["node"] == "node1"
