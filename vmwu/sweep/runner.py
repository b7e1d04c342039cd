"""The node side of every executor: ``vmwu sweep exec-job RESULTS JOB_ID --attempt N``
runs one job's ``task main`` and leaves its result whole or not at all.

1. A private working directory on the node (``node:``), under ``$VMWU_SWEEP_SCRATCH``
   (default ``$TMPDIR`` or /tmp) in a per-experiment directory, which is ``node:..``.
2. The steps in order: ``copy`` in (plan-relative sources), ``execute`` (``sh -c`` with
   parameter values shell-quoted, in the working directory, output to ``task.log``),
   ``substitute`` (a template file with ``${name}``), ``copy node:X Y`` out.
3. The output directories of any ``vmwu run`` in the working directory (found by their
   ``status.json``) are kept with the result: one run's files at the top, several runs'
   under their own names.
4. ``job.json`` (state, exit code, node, timings, attempt), then one ``os.rename`` of the
   temporary result directory to ``RESULTS/jobs/JOBID`` (the job's result) or, when the
   attempt failed for the infrastructure and will be retried, ``RESULTS/attempts/JOBID.aN``.
   If a result is already there (a duplicate run), this one is thrown away.

A non-zero exit of an execute step fails the job with that code. ``vmwu run`` exiting 243
(never booted), 245 (VM crashed) or 247 (host failure), confirmed by its status.json, is an
infrastructure failure: retried while attempts remain. SIGTERM (cancel, scancel) stops the
steps, kills their processes (QEMU too) and leaves no result.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from vmwu import tools
from vmwu.errors import BadInput, ExitCode, HostDiskFull, VmwuError
from vmwu.sweep import procs
from vmwu.sweep.expand import source_path
from vmwu.sweep.layout import Layout, read_json, write_json
from vmwu.sweep.model import NODE, ROOT, Plan, Step, StepKind, Template, Value

INFRA_CODES = frozenset({ExitCode.NEVER_BOOTED, ExitCode.VM_CRASHED, ExitCode.HOST_FAILURE})
RETRY_EXIT = 75  # EX_TEMPFAIL: this attempt left a retry record, not a result


class Cancelled(Exception):
    """SIGTERM: the job was cancelled (or its allocation is going away)."""


@dataclass
class Outcome:
    state: str = "done"  # done | failed
    exit_code: int | None = 0
    error: str | None = None
    infra: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)


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
            params: dict[str, Value] = read_json(layout.spec(job_id))["params"]
        except FileNotFoundError:
            raise BadInput(f"no job {job_id} in {results}") from None
        code = Runner(layout, exp, plan, job_id, attempt, params).run()
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
    ) -> None:
        self.layout = layout
        self.exp = exp
        self.plan = plan
        self.job_id = job_id
        self.attempt = attempt
        self.params = params
        self.host = socket.gethostname()
        self.input_dir = Path(exp["input_dir"])
        scratch = Path(os.environ.get("VMWU_SWEEP_SCRATCH") or tempfile.gettempdir())
        self.node_root = scratch / f"vmwu-sweep-{exp['id']}"
        tag = f"a{attempt}-{self.host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.work = self.node_root / f"{job_id}.{tag}"
        self.tmp = layout.jobs / f".{job_id}.tmp-{tag}"
        self.child: tools.Process | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = tool_path()
        env.update(
            VMWU_JOB_ID=self.job_id,
            VMWU_JOB_ATTEMPT=str(self.attempt),
            VMWU_WORK_DIR=str(self.work),
            VMWU_RESULTS=str(self.layout.root),
        )
        return env

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        started = time.time()
        write_json(
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
            self.work.mkdir(parents=True)
            self.tmp.mkdir(parents=True)
            with open(self.tmp / "task.log", "w", encoding="utf-8") as log:
                outcome = self.steps(log)
            self.keep_vmwu_runs()
            return self.finish(outcome, started)
        except Cancelled:
            if self.child is not None:
                procs.kill_tree(self.child.pid)
            print(f"vmwu: job {self.job_id}: cancelled", file=sys.stderr)
            return 128 + signal.SIGTERM
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise HostDiskFull(str(self.layout.root)) from None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.exp.get("keep_work"):
                shutil.rmtree(self.work, ignore_errors=True)
            self.layout.marker(self.job_id, self.attempt).unlink(missing_ok=True)

    # -- steps ----------------------------------------------------------------------------

    def steps(self, log: TextIO) -> Outcome:
        outcome = Outcome()
        for number, step in enumerate(self.plan.main.steps, start=1):
            t0 = time.time()
            record: dict[str, Any] = {"step": number, "kind": str(step.kind), "at": str(step.where)}
            try:
                code = self.step(step, log)
            except VmwuError as err:
                code, outcome.error = None, str(err)
            record.update(exit_code=code, seconds=round(time.time() - t0, 3))
            outcome.steps.append(record)
            if outcome.error is not None or code not in (0, None):
                outcome.state = "failed"
                outcome.exit_code = code
                if code is not None:
                    outcome.error = f"{step.where}: {step.kind} exited with {code}"
                    outcome.infra = code in INFRA_CODES and self.vmwu_confirms(code)
                break
        return outcome

    def step(self, step: Step, log: TextIO) -> int | None:
        if step.kind is StepKind.EXECUTE:
            return self.execute(step.args[0], log)
        src, dest = (self.render_path(a) for a in step.args)
        if step.kind is StepKind.SUBSTITUTE:
            self.substitute(step, src, dest)
        else:
            self.copy(step, src, dest)
        log.write(f"vmwu: {step.kind} {src} {dest}\n")
        log.flush()
        return None

    def render_path(self, template: Template) -> str:
        return template.render(self.params, env=os.environ)

    def execute(self, template: Template, log: TextIO) -> int:
        command = template.render(self.params, quote=True)
        log.write(f"vmwu: execute {command}\n")
        log.flush()
        # under vmwu's process guard: the step's whole tree (a `vmwu run` and its QEMU, what
        # it left in the background) dies with this runner and ends with the step
        self.child = tools.spawn(
            ["sh", "-c", command],
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            tree=True,
        )
        code = self.child.wait()
        assert code is not None
        self.child = None
        if code in (-signal.SIGTERM, 128 + signal.SIGTERM):
            # scancel (and `vmwu sweep cancel`) may signal the whole process tree at once:
            # give our own SIGTERM a moment to arrive, so that a cancelled job does not
            # leave a "failed" result behind.
            time.sleep(0.5)
        return 128 - code if code < 0 else code

    def node_path(self, text: str, where: str) -> Path:
        rel = text.removeprefix(NODE) or "."
        path = Path(os.path.normpath(self.work / rel))
        if path != self.node_root and self.node_root not in path.parents:
            raise BadInput(f"{where}: {text} is outside the job's node directories")
        return path

    def copy(self, step: Step, src: str, dest: str) -> None:
        where = str(step.where)
        if src.startswith(NODE):
            source = self.node_path(src, where)
            if not source.exists():
                raise BadInput(f"{where}: copy: {src} was not produced by the job")
        else:
            source = source_path(src, self.input_dir)
            if not source.exists():
                raise BadInput(f"{where}: copy: {source} does not exist")
        if dest.startswith(NODE):
            target = self.node_path(dest, where)
        else:
            target = self.tmp / dest.removeprefix(ROOT)
        if target.is_dir() or dest.endswith("/"):
            target = target / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        # node:.. is shared by the node's jobs: land every copy with a rename
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        if source.is_dir():
            shutil.copytree(source, partial, symlinks=True)
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        else:
            copy_file(source, partial)
        os.replace(partial, target)

    def substitute(self, step: Step, src: str, dest: str) -> None:
        where = str(step.where)
        source = (
            self.node_path(src, where) if src.startswith(NODE) else source_path(src, self.input_dir)
        )
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as err:
            raise BadInput(f"{where}: substitute: cannot read {src}: {err.strerror}") from None
        rendered = Template.parse(text, lambda i: step.where).render(self.params)
        target = self.node_path(dest if dest.startswith(NODE) else NODE + dest, where)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered, encoding="utf-8")

    # -- outcome --------------------------------------------------------------------------

    def vmwu_runs(self) -> list[Path]:
        """Output directories of ``vmwu run`` in the working directory (up to 2 deep)."""
        found = []
        for status in sorted(
            [*self.work.glob("*/status.json"), *self.work.glob("*/*/status.json")]
        ):
            with contextlib.suppress(OSError, ValueError):
                if "vmwu_version" in json.loads(status.read_text()):
                    found.append(status.parent)
        return found

    def vmwu_confirms(self, code: int) -> bool:
        """Did a ``vmwu run`` report this code as its own failure (not the app's)?"""
        statuses = []
        for run in self.vmwu_runs():
            with contextlib.suppress(OSError, ValueError):
                statuses.append(json.loads((run / "status.json").read_text()))
        if not statuses:  # vmwu run failed before it wrote anything: trust the code
            return True
        return any(
            s.get("outcome") == "vmwu-error" and s.get("exit_code") == code for s in statuses
        )

    def keep_vmwu_runs(self) -> None:
        runs = self.vmwu_runs()
        for run in runs:
            if len(runs) == 1:
                for entry in run.iterdir():
                    target = self.tmp / entry.name
                    if not target.exists():
                        _move(entry, target)
            else:
                target = self.tmp / run.relative_to(self.work)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _move(run, target)

    def finish(self, outcome: Outcome, started: float) -> int:
        max_attempts = int(self.exp.get("max_attempts", 3))
        retry_app = bool(self.exp.get("retry_app_failures"))
        retryable = outcome.state == "failed" and (outcome.infra or retry_app)
        final = not retryable or self.attempt >= max_attempts
        run_status = {}
        with contextlib.suppress(OSError, ValueError):
            run_status = json.loads((self.tmp / "status.json").read_text())
        write_json(
            self.tmp / "job.json",
            {
                "job": self.job_id,
                "params": self.params,
                "attempt": self.attempt,
                "state": outcome.state,
                "exit_code": outcome.exit_code,
                "error": outcome.error,
                "infrastructure_failure": outcome.infra,
                "final": final,
                "node": self.host,
                "started": started,
                "finished": time.time(),
                "steps": outcome.steps,
                "vmwu_run": {k: run_status.get(k) for k in ("outcome", "exit_code", "timings")}
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
        if outcome.state == "done":
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


def copy_file(src: Path, dest: Path) -> None:
    """Copy keeping holes (output images are mostly empty) and timestamps."""
    if src.stat().st_size < 1024 * 1024:
        shutil.copy2(src, dest)
        return
    tools.run(["cp", "--sparse=always", "--preserve=timestamps", src, dest], disk_hint=str(dest))


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
