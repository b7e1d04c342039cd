"""The driver's state machine against a fake executor (no processes, no QEMU): retries,
lost nodes, cancellation, resume after a crash at each point of the submit protocol, and
the journal's rules."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.faults import fill_disk_for
from vmwu.errors import HostDiskFull
from vmwu.hostfs import write_json_atomic
from vmwu.sweep.driver import Driver
from vmwu.sweep.executors import Context, Executor, Observed, Phase, Submission
from vmwu.sweep.experiment import Experiment, SweepOptions, create, open_existing
from vmwu.sweep.journal import ONE_MORE_ATTEMPT, IllegalTransition, Journal, State
from vmwu.sweep.layout import Layout
from vmwu.sweep.progress import SweepProgress

PLAN = """parameter n integer range from 1 to 4 step 1
task main
    execute echo ${n}
endtask
"""


class FakeExecutor(Executor):
    """Each job's attempts follow a script: done | fail:CODE | infra | lost | cancelled |
    hang (stays running until cancelled)."""

    name = "fake"
    poll_interval = 0.0

    def __init__(self, ctx: Context, script: Mapping[int, list[str]] | None = None) -> None:
        super().__init__(ctx)
        self.script = script or {}
        self.submitted: list[tuple[str, int]] = []
        self.cancelled: list[str] = []
        self.found: dict[str, str] = {}
        self.seqs: dict[str, int] = {}

    def outcome(self, job: str, attempt: int) -> str:
        plan = self.script.get(self.seqs[job], ["done"])
        return plan[min(attempt, len(plan)) - 1]

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        out = {}
        for s in subs:
            self.submitted.append((s.job_id, s.attempt))
            out[s.job_id] = f"fake:{s.job_id}:{s.attempt}"
            self.write(s.job_id, s.attempt, self.outcome(s.job_id, s.attempt))
        return out

    def write(self, job: str, attempt: int, what: str) -> None:
        layout = self.ctx.layout
        info: dict[str, Any] = {
            "job": job,
            "attempt": attempt,
            "node": "fakenode",
            "started": 1.0,
            "finished": 2.0,
        }
        if what == "done":
            target, info["state"], info["exit_code"] = layout.result(job), "done", 0
        elif what.startswith("fail:"):
            target, info["state"], info["exit_code"] = layout.result(job), "failed", int(what[5:])
            info["error"] = f"execute exited with {what[5:]}"
        elif what == "infra":
            target, info["state"], info["exit_code"] = (
                layout.attempt_dir(job, attempt),
                "failed",
                245,
            )
            info["error"] = "vmwu run exited with 245"
        else:
            return
        target.mkdir(parents=True)
        write_json_atomic(target / "job.json", info)

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        out = {}
        for job, handle in handles.items():
            attempt = int(handle.rsplit(":", 1)[1])
            what = self.outcome(job, attempt)
            if what == "cancelled":
                out[job] = Observed(Phase.CANCELLED, detail="CANCELLED")
            elif what == "hang" and job not in self.cancelled:
                out[job] = Observed(Phase.RUNNING, node="fakenode")
            else:
                out[job] = Observed(Phase.ENDED)
        return out

    def cancel(self, handles: Mapping[str, str]) -> None:
        self.cancelled.extend(handles)

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        return {s.job_id: self.found[s.job_id] for s in subs if s.job_id in self.found}


def make(
    tmp_path: Path, script: Mapping[int, list[str]] | None = None, retries: int = 2
) -> tuple[Experiment, FakeExecutor, Driver]:
    plan = tmp_path / "t.plan"
    plan.write_text(PLAN)
    exp = create(plan, tmp_path / "results", SweepOptions(retries=retries))
    ex = FakeExecutor(Context(exp.results, exp.id), script)
    ex.seqs = {r.id: r.seq for r in exp.journal.jobs()}
    return exp, ex, Driver(exp, ex, SweepProgress(quiet=True))


def states(exp: Experiment) -> list[tuple[str, int, int | None]]:
    return [(str(r.state), r.attempts, r.exit_code) for r in exp.journal.jobs()]


def test_every_job_done(tmp_path: Path) -> None:
    exp, ex, driver = make(tmp_path)
    assert driver.run() == 0
    assert states(exp) == [("done", 1, 0)] * 4
    assert len(ex.submitted) == 4
    rows = (exp.results / "results.csv").read_text().splitlines()
    assert rows[0] == "job,n,state,exit_code,attempts,node,started,finished,seconds,error"
    assert len(rows) == 5
    summary = json.loads((exp.results / "results.json").read_text())
    assert summary["counts"]["done"] == 4
    assert summary["jobs"][0]["params"] == {"n": 1}
    assert summary["jobs"][0]["node"] == "fakenode"


def test_infrastructure_failures_are_retried_app_failures_are_not(tmp_path: Path) -> None:
    exp, ex, driver = make(
        tmp_path, {0: ["infra", "done"], 1: ["fail:3"], 2: ["lost", "lost", "lost"]}
    )
    assert driver.run() == 1
    got = states(exp)
    assert got[0] == ("done", 2, 0)
    assert got[1] == ("failed", 1, 3)
    assert got[2] == ("failed", 3, None)
    assert "ended without a result" in (exp.journal.jobs()[2].error or "")
    assert got[3] == ("done", 1, 0)


def test_cancelled_by_the_engine(tmp_path: Path) -> None:
    exp, _, driver = make(tmp_path, {1: ["cancelled"]})
    assert driver.run() == 1
    assert [s[0] for s in states(exp)] == ["done", "cancelled", "done", "done"]


def test_cancel_all_writes_first_then_cancels(tmp_path: Path) -> None:
    exp, ex, driver = make(tmp_path, {0: ["hang"], 1: ["hang"], 2: ["hang"], 3: ["hang"]})
    ex.ctx.slots = 2
    driver.submit()
    driver.poll()
    driver.cancel_all()
    assert [s[0] for s in states(exp)] == ["cancelled"] * 4
    assert len(ex.cancelled) == 2  # the two that were running; the pending two never ran


def test_resume_after_a_crash_between_submitting_and_the_handle(tmp_path: Path) -> None:
    exp, ex, driver = make(tmp_path)
    rows = exp.journal.jobs()
    # the crash: jobs 0 and 1 marked submitting, only job 0 reached the engine
    exp.journal.transition(
        [rows[0].id, rows[1].id], State.SUBMITTING, attempts=ONE_MORE_ATTEMPT, handle="batch:b00001"
    )
    ex.found = {rows[0].id: f"fake:{rows[0].id}:1"}
    ex.write(rows[0].id, 1, "done")
    assert driver.run() == 0
    assert states(exp) == [("done", 1, 0)] * 4
    assert rows[0].id not in [j for j, _ in ex.submitted]  # found, not resubmitted
    assert (rows[1].id, 1) in ex.submitted


def test_resume_settles_results_that_appeared_while_no_driver_ran(tmp_path: Path) -> None:
    exp, ex, driver = make(tmp_path)
    rows = exp.journal.jobs()
    exp.journal.transition(
        [rows[0].id], State.SUBMITTING, attempts=ONE_MORE_ATTEMPT, handle="batch:b1"
    )
    exp.journal.transition([rows[0].id], State.SUBMITTED, handle="fake:x:1")
    exp.journal.transition([rows[0].id], State.RUNNING)
    ex.write(rows[0].id, 1, "done")
    driver.reconcile()
    assert exp.journal.job(rows[0].id).state is State.DONE
    assert exp.journal.job(rows[0].id).attempts == 1
    done_events = [e for e in exp.journal.events() if e["state"] == "done"]
    assert len(done_events) == 1


def test_rerun_failed_moves_the_result_aside(tmp_path: Path) -> None:
    exp, ex, driver = make(tmp_path, {1: ["fail:3", "done"]})
    assert driver.run() == 1
    failed = exp.journal.jobs([State.FAILED])[0]
    reopened = open_existing(exp.results)
    ex2 = FakeExecutor(Context(exp.results, exp.id), {1: ["fail:3", "done"]})
    ex2.seqs = ex.seqs
    d2 = Driver(reopened, ex2, SweepProgress(quiet=True))
    assert d2.rerun([State.FAILED]) == 1
    assert d2.run() == 0
    assert ex2.submitted == [(failed.id, 2)]
    assert (exp.results / "attempts" / f"{failed.id}.a1.failed" / "job.json").is_file()


def test_the_same_plan_again_adds_nothing(tmp_path: Path) -> None:
    exp, _, driver = make(tmp_path)
    driver.run()
    again = create(tmp_path / "t.plan", exp.results, SweepOptions())
    assert again.added == 0
    assert len(again.journal.jobs()) == 4


def test_illegal_transitions_are_refused(tmp_path: Path) -> None:
    exp, _, driver = make(tmp_path)
    job = exp.journal.jobs()[0].id
    with pytest.raises(IllegalTransition):
        exp.journal.transition([job], State.RUNNING)
    exp.journal.transition([job], State.DONE)
    with pytest.raises(IllegalTransition):
        exp.journal.transition([job], State.PENDING)


class _FullDisk:
    """A connection whose writes fail the way SQLite's do when the disk is full."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(("UPDATE", "INSERT")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_disk_full_in_the_journal_is_a_host_failure(tmp_path: Path) -> None:
    exp, _, driver = make(tmp_path)
    exp.journal.conn = _FullDisk(exp.journal.conn)  # type: ignore[assignment]
    with pytest.raises(HostDiskFull, match="no space left on the host file system holding"):
        driver.run()


def test_disk_full_while_writing_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    exp, _, driver = make(tmp_path)
    results = str(exp.results)
    fill_disk_for(monkeypatch, lambda p: p.startswith(results) and "results" in Path(p).name)
    with pytest.raises(HostDiskFull):
        driver.summary(force=True)
    # the journal is intact: the sweep can go on once there is room
    monkeypatch.undo()
    assert driver.run() == 0


def test_journal_refuses_a_non_sweep_directory(tmp_path: Path) -> None:
    from vmwu.errors import BadInput

    with pytest.raises(BadInput, match="is not a sweep results directory"):
        Journal.open(tmp_path)
    assert Layout(tmp_path).jobs == tmp_path / "jobs"
