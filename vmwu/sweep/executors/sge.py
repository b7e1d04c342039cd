"""The Grid Engine executor (Son of Grid Engine; Sun, Oracle, Univa Grid Engine): one
``qsub -t`` array job per batch of jobs, followed with ``qstat``, its end read from
``qacct``, cancelled with ``qdel``.

- Each batch gets a script and a job list in ``RESULTS/sge/``; array task *i* (from 1) runs
  line *i - 1* of the list (``JOBID ATTEMPT`` pairs) through ``vmwu sweep exec-job --list``:
  one job per task, or ``--jobs-per-task K`` of them one after the other, as with Slurm.
  The job is submitted as a script (``qsub -b y`` would lose the quoting of a command
  line) with ``-V`` (the driver's environment, as sbatch passes it by default),
  ``-S /bin/sh``, ``-wd RESULTS`` and its output in ``RESULTS/sge/ARRAYID.TASK.out``. The
  job name is ``vmwu-EXPERIMENT-BATCH``, so a driver that died between ``qsub`` and writing
  the job id finds the array again by name (:meth:`GridEngineExecutor.find`).
- Handles are ``ARRAYID.TASK``, as qstat and qdel write them. A task is queued or running
  while ``qstat`` lists it; once it has left, its accounting record (``qacct -j ARRAYID -t
  TASKS``) says how it ended: the node, ``failed`` (0: it ran; 100: Grid Engine killed it,
  as qdel does) and ``exit_status``. A record appears when the accounting file is next
  flushed (``reporting_params flush_time``, read from ``qconf -sconf``), so a task that left
  qstat is waited for that long; one that never gets a record never started: it was
  deleted while queued. ``qsub -sync y`` is not used: its exit code is wrong for arrays and
  for deleted jobs.
- A task in an error state (``Eqw``: its working or output directory is missing, …) would
  wait for an administrator forever: it is deleted, and its record's ``failed`` reason ends
  the attempt (retried like a lost node).
- How a job ended is read from the results directory, as with every executor: a task
  that left qstat and its job's result is over; qacct is asked (it reads the whole
  accounting file) only about tasks whose jobs left none, and its word is what the
  driver reports for them.
- Exit statuses 99 and 100 mean "run it again" and "error state" to Grid Engine: the batch
  script turns them into 1 (the job's own code is in its job.json).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwu import tools
from vmwu.errors import HostFailure, ToolFailed, ToolNotFound
from vmwu.sweep.executors import Context, Executor, Observed, Patience, Phase, Submission

tools.TOOL_PACKAGES.update(
    {
        "qsub": "gridengine-client",
        "qstat": "gridengine-client",
        "qacct": "gridengine-client",
        "qdel": "gridengine-client",
        "qconf": "gridengine-client",
    }
)

MAX_ARRAY = 1000  # tasks per array (Grid Engine's max_aj_tasks defaults to 75000)
PATIENCE = 120.0  # seconds of qstat failures before the driver gives up
DEFAULT_FLUSH = 15.0  # reporting_params flush_time when qconf cannot tell
KILLED_BY_ENGINE = "100"  # failed "100 : assumedly after job": execd killed it (qdel, a limit)


class GridEngineUnavailable(HostFailure):
    """qsub/qstat cannot reach sge_qmaster, or Grid Engine is not configured here."""


@dataclass(frozen=True)
class Task:
    """A task as qstat lists it."""

    state: str  # qw, hqw, r, t, Rr, dr, Eqw, …
    host: str
    name: str


@dataclass(frozen=True)
class Record:
    """A task's accounting record: the fields of ``qacct -j`` the executor uses."""

    host: str
    failed: str  # "0", or "CODE : reason"
    exit_status: int | None
    name: str = ""  # the job's name

    @property
    def failed_code(self) -> str:
        return self.failed.split(":", 1)[0].strip() or "0"

    def describe(self) -> str:
        parts = []
        if self.failed_code != "0":
            parts.append(f"failed {' '.join(self.failed.split())}")
        if self.exit_status is not None:
            status = f"exit status {self.exit_status}"
            if 128 < self.exit_status < 128 + 65:
                with contextlib.suppress(ValueError):
                    status += f" ({signal.Signals(self.exit_status - 128).name})"
            parts.append(status)
        return ", ".join(parts) or "no exit status"

    def observed(self) -> Observed:
        detail = "qacct: " + self.describe()
        if self.failed_code == KILLED_BY_ENGINE:
            return Observed(Phase.CANCELLED, self.host or None, detail + " (qdel or a limit)")
        return Observed(Phase.ENDED, self.host or None, detail)


def phase_of(state: str) -> Phase:
    """A task's phase from its qstat state letters (q queued, w waiting, h hold, r running,
    t transferring, R restarted, s/S/T suspended, d being deleted, E error)."""
    if any(c in state for c in "rtsST"):
        return Phase.RUNNING
    return Phase.QUEUED


def parse_qstat_xml(text: str) -> dict[str, Task]:
    """``qstat -xml -g d``: every task by handle (``JOBID.TASK``; a job that is not an
    array is task 1, as Grid Engine numbers it)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise GridEngineUnavailable(f"qstat printed something that is not XML: {err}") from None
    out: dict[str, Task] = {}
    for job in root.iter("job_list"):
        number = (job.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            continue
        queue = (job.findtext("queue_name") or "").strip()
        task = Task(
            state=(job.findtext("state") or "").strip(),
            host=queue.partition("@")[2],
            name=(job.findtext("JB_name") or "").strip(),
        )
        for t in task_ids(job.findtext("tasks") or "1"):
            out[f"{int(number)}.{t}"] = task
    return out


def task_ids(text: str) -> list[int]:
    """Task ids of qstat's ``tasks`` field: ``3``, or ranges ``3-10:1`` (comma separated)
    for pending tasks that qstat did not list one by one."""
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if match is None:
            continue
        first = int(match[1])
        last = min(int(match[2] or first), first + 100 * MAX_ARRAY)
        out.extend(range(first, last + 1, max(1, int(match[3] or 1))))
    return out


def parse_qacct(text: str) -> dict[str, Record]:
    """``qacct -j …``: the last record of each task, by handle. Records are blocks of
    ``name value`` lines separated by lines of ``=``."""
    out: dict[str, Record] = {}
    for block in re.split(r"^=+[ \t]*$", text, flags=re.MULTILINE):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.strip().partition(" ")
            if name:
                fields[name] = value.strip()
        number = fields.get("jobnumber", "")
        if not (number.isascii() and number.isdigit()):
            continue
        task = fields.get("taskid", "undefined")
        task = task if task.isascii() and task.isdigit() else "1"  # not an array: task 1
        status = (fields.get("exit_status", "").split() or [""])[0]
        out[f"{int(number)}.{int(task)}"] = Record(
            host=fields.get("hostname", ""),
            failed=fields.get("failed", "0"),
            exit_status=int(status) if status.isascii() and status.isdigit() else None,
            name=fields.get("jobname", ""),
        )
    return out


def parse_reporting(conf: str) -> tuple[bool, float]:
    """From ``qconf -sconf``: is accounting on, and how often is the accounting file
    flushed (seconds)? ``reporting_params`` may span lines ending with a backslash."""
    joined = re.sub(r"\\\n\s*", " ", conf)
    match = re.search(r"^reporting_params[ \t]+(.*)$", joined, flags=re.MULTILINE)
    if match is None:
        return True, DEFAULT_FLUSH
    params = dict(p.partition("=")[::2] for p in match[1].split())
    accounting = params.get("accounting", "true").lower() in ("true", "1", "yes")
    flush = params.get("accounting_flush_time") or params.get("flush_time") or ""
    return accounting, seconds(flush, DEFAULT_FLUSH)


def seconds(text: str, default: float) -> float:
    """Grid Engine's time values: ``HH:MM:SS``, ``MM:SS`` or seconds."""
    parts = text.strip().split(":")
    if len(parts) > 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return default
    total = 0
    for p in parts:
        total = total * 60 + int(p)
    return float(total)


def task_ranges(handles: Iterable[str]) -> list[str]:
    """``JOBID.TASK`` handles as qdel's ``JOBID.FIRST-LAST`` ranges."""
    by_job: dict[int, set[int]] = {}
    for handle in handles:
        number, _, task = handle.partition(".")
        if number.isdigit() and task.isdigit():
            by_job.setdefault(int(number), set()).add(int(task))
    out = []
    for job, task_set in sorted(by_job.items()):
        tasks = sorted(task_set)
        start = prev = tasks[0]
        for t in tasks[1:]:
            if t != prev + 1:
                out.append(f"{job}.{start}" if start == prev else f"{job}.{start}-{prev}")
                start = t
            prev = t
        out.append(f"{job}.{start}" if start == prev else f"{job}.{start}-{prev}")
    return out


def job_name(experiment: str, batch: str) -> str:
    """``vmwu-EXPERIMENT-BATCH`` (Grid Engine refuses / : @ \\ * ? and white space)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"vmwu-{experiment}-{batch}")


BATCH_SCRIPT = """#!/bin/sh
# vmwu sweep: batch {batch} ({count} jobs), a Grid Engine array job
{python} -m vmwu sweep exec-job {results_q} --list {listing} --line "$((SGE_TASK_ID - 1))"
code=$?
# 99 would make Grid Engine run the task again, 100 put it in an error state
case $code in 99|100) code=1 ;; esac
exit $code
"""


class GridEngineExecutor(Executor):
    name = "sge"
    poll_interval = 1.0
    max_batch = MAX_ARRAY

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.prefix = job_name(ctx.experiment, "")
        # the user qsub submits as (not $USER, which sudo -E or a login shell may keep)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.jobs_per_task = max(1, int(ctx.options.get("jobs_per_task", 1)))
        self.jobs_share_tasks = self.jobs_per_task > 1
        self.patience = Patience(PATIENCE)
        self._gone_since: dict[str, float] = {}  # handle → when qstat stopped listing it
        self._deleted: set[str] = set()  # tasks in an error state that were qdel'ed
        self._reporting: tuple[bool, float] | None = None

    @property
    def directory(self) -> Path:
        return self.ctx.results / "sge"

    def output_file(self, handle: str) -> Path | None:
        return self.directory / f"{handle}.out"

    def check(self) -> None:
        try:
            self._qstat()
        except ToolNotFound:
            raise ToolNotFound("qsub", "gridengine-client") from None

    # -- submit -----------------------------------------------------------------------------

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        self.directory.mkdir(exist_ok=True)
        listing = self.directory / f"{batch}.list"
        per = self.jobs_per_task
        tasks = [subs[i : i + per] for i in range(0, len(subs), per)]
        listing.write_text(
            "".join(" ".join(f"{s.job_id} {s.attempt}" for s in task) + "\n" for task in tasks)
        )
        script = self.directory / f"{batch}.sh"
        script.write_text(
            BATCH_SCRIPT.format(
                batch=batch,
                count=len(subs),
                python=shlex.quote(sys.executable),
                results_q=shlex.quote(str(self.ctx.results)),
                listing=shlex.quote(str(listing)),
            )
        )
        argv = [
            "qsub",
            "-terse",
            "-N",
            job_name(self.ctx.experiment, batch),
            "-t",
            f"1-{len(tasks)}",
            "-S",
            "/bin/sh",
            "-V",
            "-wd",
            str(self.ctx.results),
            "-j",
            "y",
            # a leading ':' keeps a ':' in the path from being read as HOST:PATH
            "-o",
            f":{self.directory}/$JOB_ID.$TASK_ID.out",
            *self.ctx.options.get("qsub_args", []),
            str(script),
        ]
        try:
            out = tools.output(argv, timeout=120)
        except ToolFailed as err:
            raise GridEngineUnavailable(f"qsub failed: {err.message.split(': ', 1)[-1]}") from None
        except subprocess.TimeoutExpired:
            raise GridEngineUnavailable("qsub got no answer from sge_qmaster in 120 s") from None
        array_id = out.strip().split(".")[0]
        if not array_id.isdigit():
            raise GridEngineUnavailable(f"qsub said {out!r}, not a job id")
        return {s.job_id: f"{array_id}.{i}" for i, task in enumerate(tasks, start=1) for s in task}

    # -- state ------------------------------------------------------------------------------

    def _qstat(self) -> dict[str, Task]:
        """Every task of this user that sge_qmaster knows (queued, running, in error)."""
        try:
            out = tools.output(["qstat", "-xml", "-g", "d", "-u", self.user], timeout=60)
        except ToolFailed as err:
            first = next((ln for ln in err.stderr.splitlines() if ln.strip()), str(err))
            first = first.strip().removeprefix("error: ")
            raise GridEngineUnavailable(
                f"Grid Engine is not reachable: {first.strip()}",
                hint="is sge_qmaster running? check SGE_ROOT and SGE_CELL "
                "(or run scripts/sge-test-cluster.sh start)",
            ) from None
        except subprocess.TimeoutExpired:
            raise GridEngineUnavailable(
                "Grid Engine is not reachable: qstat got no answer in 60 s"
            ) from None
        return parse_qstat_xml(out)

    def _qacct(self, handles: Iterable[str]) -> dict[str, Record] | None:
        """The accounting records of these tasks (of those that have one yet); None when
        qacct cannot read the accounting file."""
        by_job: dict[str, list[int]] = {}
        for handle in handles:
            job, _, task = handle.partition(".")
            by_job.setdefault(job, []).append(int(task))
        records: dict[str, Record] = {}
        for job, tasks in by_job.items():
            argv = ["qacct", "-j", job, "-t", f"{min(tasks)}-{max(tasks)}"]
            try:
                proc = tools.run(argv, check=False, timeout=120)
            except subprocess.TimeoutExpired:
                return None
            if proc.returncode != 0:
                if b"not found" in proc.stderr:
                    continue  # no record yet
                return None
            found = parse_qacct(proc.stdout.decode(errors="replace"))
            # job ids come round again (after 9999999, or a new spool): ours by name only
            records.update({h: r for h, r in found.items() if r.name.startswith(self.prefix)})
        return records

    def reporting(self) -> tuple[bool, float]:
        """(accounting on?, accounting flush interval) from the global configuration."""
        if self._reporting is None:
            try:
                conf = tools.output(["qconf", "-sconf", "global"], timeout=60)
                self._reporting = parse_reporting(conf)
            except (ToolFailed, subprocess.TimeoutExpired):
                self._reporting = (True, DEFAULT_FLUSH)
        return self._reporting

    @property
    def grace(self) -> float:
        """How long a task that left qstat may go without an accounting record."""
        return 2 * self.reporting()[1] + 5.0

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        try:
            seen = self._qstat()
        except GridEngineUnavailable:
            if self.patience.tolerates():  # the jobs go on; give it a while, then stop
                return {}
            raise
        self.patience.reset()
        out: dict[str, Observed] = {}
        gone: dict[str, str] = {}
        errors: list[str] = []
        for job, handle in handles.items():
            task = seen.get(handle)
            if task is None:
                gone[job] = handle
                continue
            self._gone_since.pop(handle, None)
            if "E" in task.state and handle not in self._deleted:
                errors.append(handle)
            out[job] = Observed(phase_of(task.state), task.host or None, task.state or None)
        if errors:
            # an error state waits for an administrator (qmod -cj): end the attempt instead
            self._deleted.update(errors)
            self._qdel(errors)
        if gone:
            out.update(self._ended(gone))
        return out

    def _ended(self, gone: Mapping[str, str]) -> dict[str, Observed]:
        """Tasks qstat no longer lists: a job that left its result has ended (the result
        says how); for the others, what their accounting records say, once there."""
        out: dict[str, Observed] = {}
        without: dict[str, str] = {}
        for job, handle in gone.items():
            if self.ctx.layout.result(job).is_dir():
                self._gone_since.pop(handle, None)
                out[job] = Observed(Phase.ENDED, None, None)
            else:
                without[job] = handle
        if not without:
            return out
        # (qacct reads the whole accounting file: only for tasks that need it)
        records = self._qacct(set(without.values()))
        accounting, _ = self.reporting()
        now = time.monotonic()
        for job, handle in without.items():
            record = (records or {}).get(handle)
            if record is not None:
                self._gone_since.pop(handle, None)
                out[job] = record.observed()
                continue
            since = self._gone_since.setdefault(handle, now)
            if now - since < self.grace:
                continue  # the record is not flushed yet: no news
            self._gone_since.pop(handle, None)
            if records is None or not accounting:
                why = "accounting is off" if not accounting else "qacct cannot read it"
                out[job] = Observed(Phase.ENDED, None, f"no accounting record ({why})")
            else:
                # every task that started has a record: this one was deleted while queued
                out[job] = Observed(
                    Phase.CANCELLED, None, "deleted before it started (no accounting record)"
                )
        return out

    def _qdel(self, handles: Iterable[str]) -> None:
        ranges = task_ranges(handles)
        for i in range(0, len(ranges), 200):
            with contextlib.suppress(subprocess.TimeoutExpired):
                tools.run(["qdel", *ranges[i : i + 200]], check=False, timeout=120)

    def cancel(self, handles: Mapping[str, str]) -> None:
        self._qdel(h for h in handles.values() if h)

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        listing = self.directory / f"{batch}.list"
        try:  # the array's task i runs line i - 1 of the list
            lines = [line.split()[::2] for line in listing.read_text().splitlines() if line]
        except OSError:
            return {}  # the list is written before qsub: qsub never ran
        name = job_name(self.ctx.experiment, batch)
        arrays = {h.split(".")[0] for h, task in self._qstat().items() if task.name == name}
        if not arrays:  # ended already: qacct knows it by name
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc = tools.run(["qacct", "-j", name], check=False, timeout=120)
                if proc.returncode == 0:
                    text = proc.stdout.decode(errors="replace")
                    arrays = {h.split(".")[0] for h in parse_qacct(text)}
        if not arrays:
            return {}
        array_id = max(arrays, key=int)
        wanted = {s.job_id for s in subs}
        return {
            job: f"{array_id}.{i}"
            for i, jobs in enumerate(lines, start=1)
            for job in jobs
            if job in wanted
        }
