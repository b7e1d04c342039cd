"""The node side of every executor: ``vmwu sweep exec-job RESULTS JOB_ID --attempt N``
runs one job's ``task main`` and leaves its result whole or not at all.

1. A private working directory on the node (``node:``), under ``$VMWU_SWEEP_SCRATCH``
   (default ``$TMPDIR`` or /tmp) in a per-experiment directory, which is ``node:..``.
   The first job on a node runs ``task nodestart`` there (in ``node:../nodestart``, once,
   under a lock); every job starts with what it left.
2. The commands in order (:mod:`vmwu.sweep.commands`): ``copy`` in (plan-relative
   sources), ``execute``/``shexec`` (``sh -c`` with values quoted for their place), ``exec``
   (a program, no shell), ``substitute``, ``redirect``, ``onerror``; output to ``task.log``
   unless redirected. ``copy node:X Y`` keeps X with the result (``.root/Y``); the driver
   puts it at ``RESULTS/Y`` when it settles the job.
3. The output directories of any ``vmwu run`` in the working directory (found by their
   ``status.json``) are kept with the result: one run's files at the top, several runs'
   under their own names.
4. ``job.json`` (state, exit code, node, timings, attempt, root-side outputs), then one
   ``os.rename`` of the temporary result directory to ``RESULTS/jobs/JOBID`` (the job's
   result) or, when the attempt failed for the infrastructure and will be retried,
   ``RESULTS/attempts/JOBID.aN``. If a result is already there (a duplicate run), this one
   is thrown away.

A failing command fails the job with its code (unless ``onerror ignore``). ``vmwu run``
exiting 243 (never booted), 245 (VM crashed) or 247 (host failure) is an infrastructure
failure, retried while attempts remain, unless its status.json says that the application
itself exited with that code. SIGTERM (cancel, scancel) stops the commands, kills their
processes (QEMU too) and leaves no result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import IO, Any

from vmwu import procstat as procs
from vmwu.errors import BadInput, ExitCode, HostDiskFull, VmwuError
from vmwu.hostfs import SafeDir, is_disk_full, write_json_atomic
from vmwu.run.status import RunStatus
from vmwu.sweep.commands import JobState, Outcome, Place, TaskRun
from vmwu.sweep.expand import NIMROD_VAR, job_values
from vmwu.sweep.hostcopy import copy_untrusted
from vmwu.sweep.layout import ROOT_STAGE, Layout, read_json
from vmwu.sweep.model import Plan, Value, format_value

INFRA_CODES = frozenset({ExitCode.NEVER_BOOTED, ExitCode.VM_CRASHED, ExitCode.HOST_FAILURE})
RETRY_EXIT = 75  # EX_TEMPFAIL: this attempt left a retry record, not a result


class Cancelled(Exception):
    """SIGTERM: the job was cancelled (or its allocation is going away)."""


class NodeStartFailed(Exception):
    """Task nodestart failed on this node."""


# Names of a result that are vmwu's: a vmwu run's outputs never land on them.
OWN_NAMES = frozenset({"job.json", "task.log", ROOT_STAGE})


def load_experiment(results: Path) -> tuple[dict[str, Any], Plan]:
    layout = Layout(results)
    try:
        exp = read_json(layout.experiment)
    except FileNotFoundError:
        raise BadInput(f"{results} is not a sweep results directory (no experiment.json)") from None
    from vmwu.sweep.plan import parse_plan, read_text
    from vmwu.sweep.plan_toml import parse_toml_plan

    copy = results / exp["plan_copy"]
    text = read_text(copy)
    source = exp["plan_source"]
    if copy.suffix == ".toml":
        return exp, parse_toml_plan(text, Path(source))
    return exp, parse_plan(text, Path(source))


def exec_job(results: Path, job_id: str, attempt: int) -> int:
    return exec_jobs(results, [(job_id, attempt)])


def list_line(listing: Path, line: int) -> list[tuple[str, int]]:
    """The (job, attempt) pairs of line ``line`` (from 0) of a Slurm job list."""
    try:
        words = listing.read_text().splitlines()[line].split()
    except (OSError, IndexError) as err:
        raise BadInput(f"{listing} has no line {line}: {err}") from None
    if not words or len(words) % 2:
        raise BadInput(f"{listing} line {line}: expected JOB ATTEMPT pairs")
    return [(words[i], int(words[i + 1])) for i in range(0, len(words), 2)]


def exec_jobs(results: Path, jobs: list[tuple[str, int]]) -> int:
    """Jobs one after the other (one, or a Slurm array task of ``--jobs-per-task``),
    with the experiment and plan read once: each leaves its own result; a cancelled one
    stops the rest. The exit code is the first non-zero one (Slurm shows it; the driver
    reads each job's own result)."""
    results = results.absolute()
    layout = Layout(results)
    exp, plan = load_experiment(results)
    first = 0
    for job_id, attempt in jobs:
        try:
            spec = read_json(layout.spec(job_id))
        except FileNotFoundError:
            raise BadInput(f"no job {job_id} in {results}") from None
        params: dict[str, Value] = spec["params"]
        index = int(spec.get("seq", 0)) + 1
        code = Runner(layout, exp, plan, job_id, attempt, params, index).run()
        first = first or code
        if code == 128 + signal.SIGTERM:
            break  # cancelled (scancel): the others of this task do not start
    return first


class Runner:
    def __init__(
        self,
        layout: Layout,
        exp: dict[str, Any],
        plan: Plan,
        job_id: str,
        attempt: int,
        params: dict[str, Value],
        index: int = 1,
    ) -> None:
        self.layout = layout
        self.exp = exp
        self.plan = plan
        self.job_id = job_id
        self.attempt = attempt
        self.params = params
        self.index = index
        self.host = socket.gethostname()
        self.input_dir = Path(exp["input_dir"])
        self.node_root = node_directory(str(exp["id"]))
        tag = f"a{attempt}-{self.host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.work = self.node_root / f"{job_id}.{tag}"
        self.tmp = layout.jobs / f".{job_id}.tmp-{tag}"
        self.task: TaskRun | None = None
        self.root_files: list[str] = []

    def env(self, values: dict[str, Value] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = tool_path()
        env.update(
            VMWU_JOB_ID=self.job_id,
            VMWU_JOB_ATTEMPT=str(self.attempt),
            VMWU_WORK_DIR=str(self.work),
            VMWU_RESULTS=str(self.layout.root),
            NIMROD_EXPNAME=str(self.exp["id"]),
        )
        if values is None:
            env.update(NIMROD_JOBINDEX=str(self.index), NIMROD_JOBNAME=str(self.index))
            values = self.params
        env.update({NIMROD_VAR + k: format_value(v) for k, v in values.items()})
        return env

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        started = time.time()
        write_json_atomic(
            self.layout.marker(self.job_id, self.attempt),
            {
                "job": self.job_id,
                "attempt": self.attempt,
                "host": self.host,
                "pid": os.getpid(),
                "pid_start": procs.start_time(os.getpid()),
                "started": started,
            },
        )
        clean_stale_work(self.node_root, self.host)
        try:
            make_dir(self.work)
            self.tmp.mkdir(parents=True)
            with open(self.tmp / "task.log", "wb") as log:
                try:
                    self.nodestart(log)
                except NodeStartFailed as err:
                    outcome = Outcome(JobState.FAILED, None, str(err), infra=True)
                else:
                    outcome = self.main(log)
            self.keep_vmwu_runs()
            return self.finish(outcome, started)
        except Cancelled:
            if self.task is not None and self.task.child is not None:
                procs.kill_tree(self.task.child.pid)
            print(f"vmwu: job {self.job_id}: cancelled", file=sys.stderr)
            return 128 + signal.SIGTERM
        except OSError as err:
            if is_disk_full(err):
                raise HostDiskFull(str(self.layout.root)) from None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.exp.get("keep_work"):
                shutil.rmtree(self.work, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rmdir(self.node_root)  # only if empty: other jobs may be using it
            self.layout.marker(self.job_id, self.attempt).unlink(missing_ok=True)

    # -- tasks ----------------------------------------------------------------------------

    def main(self, log: IO[bytes]) -> Outcome:
        place = Place(
            "main",
            self.work,
            self.input_dir,
            job_values(self.params, self.index),
            self.env(),
            log,
            node_root=self.node_root,
            stage=self.stage,
        )
        self.task = TaskRun(place, infra=self.is_infra)
        return self.task.run(self.plan.main.steps)

    def nodestart(self, log: IO[bytes]) -> None:
        """Task nodestart, once on this node (the first job runs it, the others wait);
        every job starts with (hard links to) what it left."""
        task = self.plan.tasks.get("nodestart")
        if task is None:
            return
        home = self.node_root / "nodestart"
        done = self.node_root / ".nodestart.done"
        with _locked(self.node_root / ".nodestart.lock"):
            if not done.exists():
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir()
                single: dict[str, Value] = dict(self.exp.get("single_values") or {})
                place = Place(
                    "nodestart",
                    home,
                    self.input_dir,
                    single,
                    self.env(single),
                    log,
                    node_root=self.node_root,
                )
                self.task = TaskRun(place)
                outcome = self.task.run(task.steps)
                self.task = None
                if outcome.state is not JobState.DONE:
                    raise NodeStartFailed(f"task nodestart failed on {self.host}: {outcome.error}")
                done.write_text(f"{self.host} {time.time()}\n")
        for entry in home.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, self.work / entry.name, symlinks=True, copy_function=_link)
            else:
                _link(entry, self.work / entry.name)

    def is_infra(self, code: int) -> bool:
        return code in INFRA_CODES and self.vmwu_confirms(code)

    def stage(self, base: Path, rel: str, out: str) -> None:
        """``copy node:X Y``: X is kept with the result as ``.root/Y``; the driver puts it
        at ``RESULTS/Y`` when it settles the job."""
        skipped = copy_untrusted(base, rel, self.tmp / ROOT_STAGE, out)
        if skipped and self.task is not None:
            self.task.note(f"copy skipped: {'; '.join(skipped)}")
        if out not in self.root_files:
            self.root_files.append(out)

    # -- outcome --------------------------------------------------------------------------

    def vmwu_runs(self) -> list[Path]:
        """Output directories of ``vmwu run`` in the working directory (up to 2 deep)."""
        found = []
        for status in sorted(
            [*self.work.glob("*/status.json"), *self.work.glob("*/*/status.json")]
        ):
            if _status(self.work, status.parent) is not None:
                found.append(status.parent)
        return found

    def vmwu_confirms(self, code: int) -> bool:
        """Is this code ``vmwu run``'s own failure, not the app's exit code passed on?"""
        statuses = [s for run in self.vmwu_runs() if (s := _status(self.work, run))]
        if not statuses:  # vmwu run failed before it wrote anything: trust the code
            return True
        if any(s.vmwu_failed and s.exit_code == code for s in statuses):
            return True
        # no run recorded this code as its outcome: vmwu failed after writing status.json
        # (a node pool service that ended before it answered), not the application
        return not any(s.exit_code == code for s in statuses)

    def keep_vmwu_runs(self) -> None:
        runs = self.vmwu_runs()
        for run in runs:
            if len(runs) == 1:
                for entry in run.iterdir():
                    target = self.tmp / entry.name
                    if entry.name not in OWN_NAMES and not target.exists():
                        _move(entry, target)
            else:
                target = self.tmp / run.relative_to(self.work)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _move(run, target)

    def finish(self, outcome: Outcome, started: float) -> int:
        max_attempts = int(self.exp.get("max_attempts", 3))
        retry_app = bool(self.exp.get("retry_app_failures"))
        retryable = outcome.state is JobState.FAILED and (outcome.infra or retry_app)
        final = not retryable or self.attempt >= max_attempts
        run_status = _status(self.tmp, self.tmp)
        write_json_atomic(
            self.tmp / "job.json",
            {
                "job": self.job_id,
                "params": self.params,
                "attempt": self.attempt,
                "state": outcome.state.value,
                "exit_code": outcome.exit_code,
                "error": outcome.error,
                "ignored_failures": outcome.ignored,
                "root_files": self.root_files,
                "index": self.index,
                "infrastructure_failure": outcome.infra,
                "final": final,
                "node": self.host,
                "started": started,
                "finished": time.time(),
                "steps": outcome.steps,
                "vmwu_run": {
                    "outcome": run_status.outcome.value,
                    "exit_code": run_status.exit_code,
                    "timings": asdict(run_status.timings) if run_status.timings else None,
                }
                if run_status
                else None,
            },
        )
        target = (
            self.layout.result(self.job_id)
            if final
            else self.layout.attempt_dir(self.job_id, self.attempt)
        )
        try:
            os.rename(self.tmp, target)  # the one moment a result appears, whole
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            print(
                f"vmwu: job {self.job_id}: a result is already there; dropped this one",
                file=sys.stderr,
            )
        if not final:
            return RETRY_EXIT
        if outcome.state is JobState.DONE:
            return 0
        code = outcome.exit_code if outcome.exit_code is not None else 1
        return code if 0 < code < 256 else 1


def clean_stale_work(node_root: Path, host: str) -> None:
    """Working directories that jobs killed on this node (kill -9, a crash) left behind:
    their names say host and pid (JOBID.aN-HOST-PID-RANDOM)."""
    with contextlib.suppress(OSError):
        for entry in node_root.iterdir():
            parts = entry.name.rsplit("-", 3)
            if len(parts) == 4 and parts[1] == host and parts[2].isdigit():
                if not procs.alive(int(parts[2]), None):
                    shutil.rmtree(entry, ignore_errors=True)


def node_directory(experiment: str) -> Path:
    """This node's directory for the experiment's jobs (``node:..``)."""
    scratch = Path(os.environ.get("VMWU_SWEEP_SCRATCH") or tempfile.gettempdir())
    return scratch / f"vmwu-sweep-{experiment}"


def _status(base: Path, out_dir: Path) -> RunStatus | None:
    """The ``vmwu run`` status.json in ``out_dir`` (a job's directory or one below it),
    read without following a link a guest may have left."""
    try:
        parts = [] if out_dir == base else list(out_dir.relative_to(base).parts)
        with SafeDir.open(base) as root, root.walk(parts) as d:
            return RunStatus.read_in(d)
    except (VmwuError, OSError, ValueError):
        return None


def make_dir(path: Path) -> None:
    """``mkdir -p`` that survives another job removing the empty parent meanwhile."""
    for _ in range(10):
        try:
            path.mkdir(parents=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _link(src: str | Path, dest: str | Path) -> None:
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dest, follow_symlinks=False)


def tool_path() -> str:
    """PATH with this Python's bin directory first: a plan's `vmwu` (and `python3`) is
    this vmwu, whatever the node's PATH says."""
    return str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")


def _move(src: Path, dest: Path) -> None:
    try:
        os.rename(src, dest)
    except OSError:  # another file system (node scratch vs shared results)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Cancelled()
