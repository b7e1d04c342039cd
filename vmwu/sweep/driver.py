"""The driver: hands pending jobs to an executor, follows them, settles each from the
results directory, retries infrastructure failures, and survives its own death.

Every state change is committed to the journal before it is acted on:

- submit: ``submitting`` (attempt + 1, handle ``batch:NAME``) → ask the executor →
  ``submitted`` with the executor's handles. A crash in between is resolved on resume by
  :meth:`Executor.find` (the batch name is how the engine knows the jobs).
- settle: when the executor says a job ended (or vanished), the results directory says how:
  ``jobs/JOBID/`` → done or failed (as its job.json says), and the job's root-side outputs
  (``copy node:X Y``) are put at ``RESULTS/Y``, never over another job's or a file the
  sweep did not write; ``attempts/JOBID.aN/`` → an infrastructure failure, retried;
  nothing → the node was lost (retried) or the job was cancelled (the engine says so).
- resume (:meth:`Driver.reconcile`): results present → settled exactly once (a result
  directory only ever appears by rename); jobs still queued or running → followed again,
  not resubmitted; jobs gone without a result → settled as above.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from vmwu.errors import Interrupted, VmwuError
from vmwu.locks import held_by_this_process, holder
from vmwu.sweep.commands import JobState, Place, TaskRun
from vmwu.sweep.executors import Context, Executor, Observed, Phase, Submission, get_executor
from vmwu.sweep.expand import NIMROD_VAR, root_relative
from vmwu.sweep.experiment import Experiment
from vmwu.sweep.hostcopy import kind_of, move_in
from vmwu.sweep.journal import ACTIVE, ONE_ATTEMPT_LESS, ONE_MORE_ATTEMPT, JobRow, State
from vmwu.sweep.layout import ROOT_STAGE, Layout, read_json
from vmwu.sweep.model import Task, Value, format_value
from vmwu.sweep.progress import SweepProgress
from vmwu.sweep.runner import node_directory, tool_path
from vmwu.sweep.summary import write_summary

SUMMARY_EVERY = 2.0  # seconds between rewrites of results.csv/json while running


@contextlib.contextmanager
def driver_lock(results: Path) -> Iterator[None]:
    """One driver per results directory (an flock, released even by kill -9)."""
    with held_by_this_process(
        Layout(results).lock,
        "vmwu sweep driver",
        str(results),
        hint=f"wait for it, or stop it with `vmwu sweep cancel {results}`",
    ):
        yield


def driver_pid(results: Path) -> int | None:
    """The pid of the driver running ``results``, if one holds the lock."""
    return holder(Layout(results).lock)


def make_executor(exp: Experiment, slots: int | None = None) -> Executor:
    meta = exp.meta
    ctx = Context(
        exp.results,
        exp.id,
        slots=slots if slots is not None else meta.get("slots"),
        options=dict(meta.get("executor_options") or {}),
    )
    return get_executor(str(meta["executor"]), ctx)


class Driver:
    def __init__(self, exp: Experiment, executor: Executor, progress: SweepProgress) -> None:
        self.exp = exp
        self.journal = exp.journal
        self.layout = exp.layout
        self.executor = executor
        self.progress = progress
        self.max_attempts = int(exp.meta.get("max_attempts", 3))
        self.cancel_requested = False
        self.cancelled = False
        self.last_summary = 0.0

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.executor.check()
            self.reconcile()
            self.root_task("rootstart")
            while True:
                if self.cancel_requested:
                    self.cancel_all()
                self.poll()
                self.submit()
                counts = self.journal.counts()
                self.progress.update(counts)
                self.summary()
                if counts[State.PENDING] + sum(counts[s] for s in ACTIVE) == 0:
                    break
                self.executor.wait(self.executor.poll_interval)
            self.progress.update(self.journal.counts(), final=True)
            self.clean_leftovers()
            if not self.exp.meta.get("keep_work"):
                # what jobs left on this host's scratch (node:.., nodestart's files)
                shutil.rmtree(node_directory(self.exp.id), ignore_errors=True)
        except KeyboardInterrupt:
            active = len(self.journal.jobs(ACTIVE))
            raise Interrupted(
                f"interrupted; {active} jobs are still queued or running",
                hint=f"`vmwu sweep resume {self.exp.results}` follows them again, "
                f"`vmwu sweep cancel {self.exp.results}` stops them",
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.progress.close()
            with contextlib.suppress(VmwuError):  # what driving cost, for bench/sweep.py
                spent = float(self.journal.meta().get("driver_cpu_s", 0.0))
                self.journal.set_meta({"driver_cpu_s": round(spent + time.process_time(), 3)})
            with contextlib.suppress(VmwuError, OSError):
                self.summary(force=True)
            self.executor.close()
        counts = self.journal.counts()
        if counts[State.DONE] == sum(counts.values()):
            self.root_task("rootfinish")
            return 0
        return 1

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.cancel_requested = True

    def summary(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_summary >= SUMMARY_EVERY:
            write_summary(self.journal, self.exp.results, list(self.exp.meta["parameters"]))
            self.last_summary = now

    # -- submit -------------------------------------------------------------------------------

    def submit(self) -> None:
        if self.cancel_requested:
            return
        pending = self.journal.jobs([State.PENDING])
        if not pending:
            return
        slots = self.executor.slots
        if slots is not None:
            free = slots - len(self.journal.jobs(ACTIVE))
            pending = pending[: max(0, free)]
        size = int(getattr(self.executor, "max_batch", 1000))
        for i in range(0, len(pending), size):
            self.submit_batch(pending[i : i + size])

    def submit_batch(self, rows: Sequence[JobRow]) -> None:
        batches = int(self.journal.meta().get("batches", 0)) + 1
        batch = f"b{batches:05d}"
        self.journal.set_meta({"batches": batches})
        ids = [r.id for r in rows]
        self.journal.transition(
            ids, State.SUBMITTING, attempts=ONE_MORE_ATTEMPT, handle=f"batch:{batch}"
        )
        subs = [Submission(r.id, r.attempts + 1) for r in rows]
        try:
            handles = self.executor.submit(subs, batch)
        except Exception:
            # Nothing was accepted (the engine said no): back to pending, then report.
            self.journal.transition(ids, State.PENDING, attempts=ONE_ATTEMPT_LESS, handle=None)
            raise
        now = time.time()
        self.journal.transition_each(
            State.SUBMITTED, {j: {"handle": h, "submitted_at": now} for j, h in handles.items()}
        )

    # -- follow and settle --------------------------------------------------------------------

    def poll(self) -> None:
        rows = {r.id: r for r in self.journal.jobs([State.SUBMITTED, State.RUNNING])}
        handles = {j: r.handle for j, r in rows.items() if r.handle}
        if not handles:
            return
        seen = self.executor.poll(handles)
        started: dict[str, dict[str, Any]] = {}
        for job, obs in seen.items():
            row = rows[job]
            if obs.phase in (Phase.ENDED, Phase.CANCELLED) or (
                # several jobs in one engine task (slurm --jobs-per-task): a result is
                # whole once it exists (one rename), so settle it while the rest runs
                self.executor.jobs_share_tasks and self.layout.result(job).is_dir()
            ):
                self.settle(row, obs)
            elif row.state is State.SUBMITTED:
                marker = self.marker(row)
                if marker is not None or obs.phase is Phase.RUNNING:
                    marker = marker or {}
                    started[job] = {
                        "node": marker.get("host") or obs.node,
                        "started_at": marker.get("started") or time.time(),
                    }
        self.journal.transition_each(State.RUNNING, started)

    def marker(self, row: JobRow) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = read_json(self.layout.marker(row.id, row.attempts))
            return data
        except (OSError, ValueError):
            return None

    def settle(self, row: JobRow, obs: Observed) -> None:
        """A job the executor no longer runs: what the results directory says."""
        if self.layout.result(row.id).is_dir():
            self.from_result(row)
            return
        record = self.layout.attempt_dir(row.id, row.attempts)
        if record.is_dir():
            info = _job_json(record)
            self.retry_or_fail(row, str(info.get("error") or "infrastructure failure"), info)
        elif obs.phase is Phase.CANCELLED or self.cancel_requested:
            detail = f" ({obs.detail})" if obs.detail else ""
            self.journal.transition(
                [row.id],
                State.CANCELLED,
                "cancelled" + detail,
                finished_at=time.time(),
                error="cancelled" + detail,
            )
        else:
            tail = self.log_tail(row)
            why = f"attempt {row.attempts} ended without a result (node lost?)"
            if obs.detail:
                why += f"; {self.executor.name}: {obs.detail}"
            if tail:
                why += f"; last output: {tail}"
            # what the lost attempt left: its marker and half-written result
            self.layout.marker(row.id, row.attempts).unlink(missing_ok=True)
            for tmp in self.layout.jobs.glob(f".{row.id}.tmp-a{row.attempts}-*"):
                shutil.rmtree(tmp, ignore_errors=True)
            self.retry_or_fail(row, why, {})

    def from_result(self, row: JobRow) -> None:
        info = _job_json(self.layout.result(row.id))
        state = State.DONE if info.get("state") == JobState.DONE else State.FAILED
        error = info.get("error")
        problem = self.publish(row.id, info.get("root_files") or [])
        if problem is not None:
            state, error = State.FAILED, problem
        self.journal.transition(
            [row.id],
            state,
            exit_code=info.get("exit_code"),
            node=info.get("node") or row.node,
            started_at=info.get("started") or row.started_at,
            finished_at=info.get("finished") or time.time(),
            error=error,
            attempts=max(row.attempts, int(info.get("attempt") or 0)),
        )

    def publish(self, job_id: str, files: Sequence[Any]) -> str | None:
        """Put a job's root-side outputs (kept in its result as ``.root/REL``) at
        ``RESULTS/REL``: never over another job's output or a file this sweep did not
        write (a re-run of the same job replaces its own), never through a link. The
        journal records who wrote what before the file moves, so a crash in between
        is finished on resume. Returns what went wrong, if anything."""
        results = self.exp.results
        stage = self.layout.result(job_id) / ROOT_STAGE
        for item in files:
            try:
                rel = root_relative(str(item), f"{job_id}/job.json")
                owner = self.journal.root_file_owner(rel)
                there = kind_of(results, rel) is not None
                if kind_of(stage, rel) is None:
                    if owner == job_id and there:
                        continue  # put there before a crash of the driver
                    return f"its output {rel} is missing from {stage}"
                if there and owner != job_id:
                    who = f"written by job {owner}" if owner else "not written by this sweep"
                    return (
                        f"its output {rel} was not put in {results}: a file of that name is "
                        f"there ({who}); the job's copy is in {stage}"
                    )
                self.journal.set_root_file(rel, job_id)
                move_in(stage, rel, results, replace=owner == job_id)
            except (VmwuError, OSError) as err:
                text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                return f"its output {item} was not put in {results}: {text}"
        for here, _dirs, _files in os.walk(stage, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(here)
        return None

    def retry_or_fail(self, row: JobRow, why: str, info: dict[str, Any]) -> None:
        if row.attempts < self.max_attempts:
            self.progress.note(f"job {row.id}: {why}; retrying")
            self.journal.transition([row.id], State.PENDING, why, handle=None, error=why)
        else:
            self.journal.transition(
                [row.id],
                State.FAILED,
                why,
                error=why,
                exit_code=info.get("exit_code"),
                node=info.get("node") or row.node,
                finished_at=time.time(),
            )

    def log_tail(self, row: JobRow) -> str:
        path = self.layout.log(row.id, row.attempts)
        if row.handle:
            path = self.executor.output_file(row.handle) or path
        with contextlib.suppress(OSError):
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
            lines = [ln for ln in lines if ln]
            return lines[-1][:300] if lines else ""
        return ""

    # -- resume -------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the journal agree with the results directory and the executor."""
        for row in self.journal.jobs():
            if row.state is State.DONE or not self.layout.result(row.id).is_dir():
                continue
            if (
                row.state is State.FAILED
                and _job_json(self.layout.result(row.id)).get("state") != JobState.DONE
            ):
                continue  # already settled from this result
            self.from_result(row)
        by_batch: dict[str, list[JobRow]] = {}
        for row in self.journal.jobs([State.SUBMITTING]):
            by_batch.setdefault((row.handle or "batch:?").removeprefix("batch:"), []).append(row)
        for batch, rows in by_batch.items():
            found = self.executor.find(batch, [Submission(r.id, r.attempts) for r in rows])
            now = time.time()
            self.journal.transition_each(
                State.SUBMITTED,
                {j: {"handle": h, "submitted_at": now} for j, h in found.items()},
                "found after a restart",
            )
            lost = [r.id for r in rows if r.id not in found]
            self.journal.transition(
                lost, State.PENDING, "never submitted", attempts=ONE_ATTEMPT_LESS, handle=None
            )
        followed = {r.id: r.handle for r in self.journal.jobs(ACTIVE) if r.handle}
        self.executor.attach(followed)
        self.clean_leftovers()

    def clean_leftovers(self) -> None:
        """Temporary result directories and run markers of attempts that are over (their
        runner was killed and could not clean up)."""
        active = {(r.id, r.attempts) for r in self.journal.jobs(ACTIVE)}
        with contextlib.suppress(OSError):
            for entry in self.layout.jobs.iterdir():
                if entry.name.startswith(".") and ".tmp-a" in entry.name:
                    job, _, rest = entry.name[1:].partition(".tmp-a")
                    attempt = rest.split("-", 1)[0]
                    if not attempt.isdigit() or (job, int(attempt)) not in active:
                        shutil.rmtree(entry, ignore_errors=True)
            for marker in self.layout.run.glob("*.a*.json"):
                job, _, attempt = marker.name.removesuffix(".json").rpartition(".a")
                if not attempt.isdigit() or (job, int(attempt)) not in active:
                    marker.unlink(missing_ok=True)

    def rerun(self, states: Sequence[State]) -> int:
        """``resume --retry-failed/--retry-cancelled``: such jobs become pending again; a
        failed result is moved to attempts/ first (else it would settle the job again)."""
        rows = self.journal.jobs(states)
        for row in rows:
            self.journal.transition(
                [row.id], State.PENDING, "rerun requested", handle=None, error=None, exit_code=None
            )
            result = self.layout.result(row.id)
            if result.is_dir():
                os.rename(result, self.layout.attempts / f"{row.id}.a{row.attempts}.{row.state}")
        return len(rows)

    # -- cancel -------------------------------------------------------------------------------

    def cancel_all(self) -> None:
        """Cancel everything not finished: written to the journal first, then done."""
        self.reconcile()
        pending = [r.id for r in self.journal.jobs([State.PENDING])]
        self.journal.transition(
            pending, State.CANCELLED, "cancelled", error="cancelled", finished_at=time.time()
        )
        active = {r.id: r.handle for r in self.journal.jobs(ACTIVE) if r.handle}
        self.journal.transition(
            list(active), State.CANCELLED, "cancelled", error="cancelled", finished_at=time.time()
        )
        self.executor.cancel(active)
        # A job that finished just before it was cancelled keeps its result.
        for row in self.journal.jobs([State.CANCELLED]):
            if self.layout.result(row.id).is_dir():
                self.from_result(row)
        self.cancel_requested = False
        self.cancelled = True

    # -- root tasks -----------------------------------------------------------------------------

    def root_task(self, name: str) -> None:
        task = self.exp.plan.tasks.get(name)
        done_key = f"{name}_done"
        if task is None or self.journal.meta().get(done_key):
            return
        self.progress.note(f"running task {name}")
        run_root_task(
            task,
            self.exp.results,
            Path(self.exp.meta["input_dir"]),
            dict(self.exp.meta.get("single_values") or {}),
        )
        self.journal.set_meta({done_key: time.time()})


def run_root_task(
    task: Task, results: Path, input_dir: Path, values: Mapping[str, Value] | None = None
) -> None:
    """rootstart/rootfinish: on the submit host, in the results directory, seeing the
    parameters with one value; output to ``root.log``. ``copy`` sources are plan-relative,
    destinations results-relative."""
    values = dict(values or {})
    log_path = results / "root.log"
    env = {**os.environ, "PATH": tool_path(), "VMWU_RESULTS": str(results)}
    env.update({NIMROD_VAR + k: format_value(v) for k, v in values.items()})
    with open(log_path, "ab") as log:
        log.write(f"vmwu: task {task.name}\n".encode())
        outcome = TaskRun(Place(task.name, results, input_dir, values, env, log)).run(task.steps)
    if outcome.state is not JobState.DONE:
        raise TaskFailed(f"task {task.name} failed: {outcome.error}", hint=f"see {log_path}")


class TaskFailed(VmwuError):
    """A rootstart/rootfinish command failed (the jobs' results are kept); the sweep
    command reports it and exits 1, like a failed job."""


def _job_json(directory: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = read_json(directory / "job.json")
        return data
    except (OSError, ValueError):
        return {
            "state": JobState.FAILED.value,
            "error": f"{directory}/job.json is missing or unreadable",
        }
