"""The wrapper: a job's tasks in sequence, under control, with status and checkpoints.

States of a job (``RunState``, written to the status file)::

    starting -> running <-> suspended          (signals, `vmwu wrap ctl`)
                running -> checkpointing -> running
                running -> done | failed | temporary-exit | aborted

What survives a restart is the wrapper state (``state.py``: unzip done, the task index,
CPU and run time) and, for a VM task, its checkpoints (``checkpoint.py``). Host tasks
restart from the beginning and find their own checkpoint files, as under BOINC.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmwu.errors import ExitCode, GuestTimeout, VmwuError
from vmwu.locks import held_by_this_process
from vmwu.sizes import format_size
from vmwu.wrapper.boinc.links import resolve_phrases
from vmwu.wrapper.checkpoint import Checkpoint, CheckpointStore
from vmwu.wrapper.control import Action, Control, Request
from vmwu.wrapper.jobxml import JobDesc, TaskKind, TaskSpec, expand, load_job
from vmwu.wrapper.state import STATE_FILE, WrapperState
from vmwu.wrapper.status import STATUS_FILE, RunState, StatusFile, TaskStatus, fraction_done
from vmwu.wrapper.tasks_host import HostTask
from vmwu.wrapper.tasks_vm import RestoreFailed, VmSettings, VmTask

# Quit with a checkpoint: run the wrapper again to go on (docs/exit-codes.md).
TEMPORARY_EXIT = ExitCode.INTERRUPTED
WRAP_DIR = ".vmwu-wrap"
TICK = 0.2  # seconds between looks at the task and the control socket
STATUS_EVERY = 1.0
STATE_EVERY = 5.0

Runner = HostTask | VmTask


@dataclass(frozen=True)
class WrapOptions:
    job: Path
    slot: Path
    project_dir: Path
    nthreads: int = 1
    checkpoint_interval: float = 600.0
    keep_checkpoints: int = 2
    status_file: Path | None = None
    socket: Path | None = None
    extra_args: tuple[str, ...] = ()
    vm: VmSettings = field(default_factory=VmSettings)
    fresh: bool = False
    quiet: bool = False
    # BOINC's logical names: name -> the path boinc_resolve_filename gives for it (the
    # client's soft link, relative to the slot). `boinc_resolve(NAME)` on a host task's
    # command line becomes that path (NAME itself when it is not here).
    names: Mapping[str, str] = field(default_factory=dict)


def socket_path(slot: Path) -> Path:
    return slot.absolute() / WRAP_DIR / "ctl.sock"


class _Stop(Exception):
    """A quit or abort request ended the job early."""

    def __init__(self, action: Action, message: str, source: str = "") -> None:
        super().__init__(message)
        self.action = action
        self.source = source  # who asked: "SIGTERM", "socket", "BOINC client", …


class Wrapper:
    def __init__(
        self, opts: WrapOptions, control_factory: Callable[[Path], Control] = Control
    ) -> None:
        """``control_factory`` makes the control source from the socket path (the BOINC
        client's, vmwu/wrapper/boinc/control.py, when a client started us)."""
        self.opts = opts
        self._control_factory = control_factory
        self.slot = opts.slot.absolute()
        self.dir = self.slot / WRAP_DIR
        self.state_path = self.slot / STATE_FILE
        self.store = CheckpointStore(self.dir / "checkpoints", keep=opts.keep_checkpoints)
        self.status = StatusFile((opts.status_file or self.slot / STATUS_FILE).absolute())
        self.socket = (opts.socket or socket_path(self.slot)).absolute()
        self.macros = {
            "PROJECT_DIR": os.fspath(opts.project_dir.absolute()),
            "PWD": os.fspath(self.slot),
            "NTHREADS": str(opts.nthreads),
        }
        self.job = JobDesc(str(opts.job))
        self.state = WrapperState(job_sha256="")
        self.runstate = RunState.STARTING
        self.suspended = False
        self.control: Control | None = None
        self.current: Runner | None = None
        self.task_status: TaskStatus | None = None
        self.daemons: list[HostTask] = []
        self.cpu_base = 0.0  # CPU seconds of everything but the current task's live processes
        # and this wrapper process's own CPU time in this run
        self.run_cpu0 = 0.0  # cpu_time() when this run started
        self._own0 = time.process_time()
        # this run's CPU time (cpu_time() - run_cpu0) when the last checkpoint of this run
        # was written: a VM checkpoint (when the guest was paused for it), a host task's
        # checkpoint file, a task's or the unzip tasks' end. What a restart goes on from.
        self.checkpoint_run_cpu: float | None = None
        self.checkpoint_info: dict[str, Any] | None = None
        self.restored_from: str | None = None
        self.restore_seconds: float | None = None
        self._last = time.monotonic()
        self._last_status = 0.0
        self._last_state = 0.0

    # -- reporting --------------------------------------------------------------------------

    def report(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.suppress(OSError):
            with open(self.dir / "wrapper.log", "a") as fh:
                fh.write(f"{stamp} {message}\n")
        if not self.opts.quiet:
            print(f"vmwu wrap: {message}", file=sys.stderr, flush=True)

    def own_cpu_time(self) -> float:
        """This wrapper process's own CPU seconds in this run."""
        return time.process_time() - self._own0

    def cpu_time(self) -> float:
        """CPU seconds of the job: every run's tasks (QEMU's included) and wrappers."""
        live = self.current.cpu_seconds() if self.current is not None else 0.0
        live += sum(d.cpu_seconds() for d in self.daemons)
        return self.cpu_base + live + self.own_cpu_time()

    def run_cpu_time(self) -> float:
        """CPU seconds of this run alone."""
        return self.cpu_time() - self.run_cpu0

    def _checkpointed(self, run_cpu: float | None = None) -> None:
        """A checkpoint has been written; ``run_cpu`` is this run's CPU time at the moment
        it was (now, unless given)."""
        self.checkpoint_run_cpu = round(self.run_cpu_time() if run_cpu is None else run_cpu, 3)
        self.state.last_checkpoint = time.time()

    def _status_data(self) -> dict[str, Any]:
        weights = [t.weight for t in self.job.tasks]
        ts = self.task_status
        current = ts.fraction if ts is not None and ts.index >= 0 else None
        last = self.state.last_checkpoint
        return {
            "state": self.runstate.value,
            "pid": os.getpid(),
            "job": os.fspath(self.opts.job),
            "slot_dir": os.fspath(self.slot),
            "socket": os.fspath(self.socket),
            "tasks": len(self.job.tasks),
            "task_index": self.state.task_index,
            "task": None if ts is None else dict(ts.__dict__),
            "fraction_done": 1.0
            if self.runstate is RunState.DONE
            else fraction_done(weights, self.state.task_index, current),
            "cpu_time": round(self.cpu_time(), 3),
            "run_cpu_time": round(self.run_cpu_time(), 3),
            "wrapper_cpu_time": round(self.own_cpu_time(), 3),
            "checkpoint_run_cpu_time": self.checkpoint_run_cpu,
            "elapsed": round(self.state.elapsed, 3),
            "last_checkpoint": last,
            "last_checkpoint_utc": None
            if last is None
            else datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint": self.checkpoint_info,
            "checkpoint_interval": self.opts.checkpoint_interval,
            "restored_from": self.restored_from,
            "restore_seconds": self.restore_seconds,
            "starts": self.state.starts,
            "exit_code": self.state.exit_code,
            "message": self.state.message,
        }

    def write_status(self) -> None:
        self._last_status = time.monotonic()
        data = self._status_data()
        self.status.write(data)
        if self.control is not None:
            self.control.status_changed(data)

    def save_state(self) -> None:
        self._last_state = time.monotonic()
        self.state.cpu_time = round(self.cpu_time(), 3)
        self.state.save(self.state_path)

    def _tick(self) -> None:
        """Account the time since the last tick; write status and state when due."""
        now = time.monotonic()
        if not self.suspended and self.runstate is RunState.RUNNING:
            dt = now - self._last
            self.state.elapsed += dt
            self.state.task_elapsed += dt
            if self.task_status is not None:
                self.task_status.elapsed = round(self.state.task_elapsed, 3)
        self._last = now
        self._refresh_task()
        if now - self._last_status >= STATUS_EVERY:
            self.write_status()
        if now - self._last_state >= STATE_EVERY:
            self.save_state()

    def _refresh_task(self) -> None:
        if self.current is not None and self.task_status is not None:
            self.task_status.fraction = self.current.fraction()
            if isinstance(self.current, VmTask):
                self.task_status.message = self.current.message

    # -- the job ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run (or resume) the job; returns the exit code."""
        data = self._read_job()
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.opts.fresh:
                self.state_path.unlink(missing_ok=True)
            new = not self.state_path.exists()
            self.state = WrapperState.load(self.state_path, hashlib.sha256(data).hexdigest())
            if new:  # nothing of an earlier job may be taken for this one's
                self.store.drop_all()
                shutil.rmtree(self.dir / "tasks", ignore_errors=True)
            if self.state.finished:
                self.runstate = RunState.DONE if self.state.exit_code == 0 else RunState.FAILED
                self.write_status()
                # `vmwu wrap --fresh` starts it again; a BOINC client has no such option
                again = (
                    "pass --fresh to run it again"
                    if self._control_factory is Control
                    else "reporting its exit status again"
                )
                self.report(
                    f"this job already ended ({self.state.message or 'done'}, exit "
                    f"{self.state.exit_code}); {again}"
                )
                return int(self.state.exit_code or 0)
            self._clean_leftovers()
            self.state.starts += 1
            self._own0 = time.process_time()
            self.cpu_base = self.state.cpu_time
            self.run_cpu0 = self.cpu_time()
            self.save_state()
            self.write_status()
            self.control = self._control_factory(self.socket)
            self.control.install_signals()
            try:
                return self._run_job()
            finally:
                self.control.close()
                self.control = None

    def _read_job(self) -> bytes:
        self.job = load_job(self.opts.job)
        return self.opts.job.read_bytes()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with held_by_this_process(
            self.dir / "lock",
            "vmwu wrap",
            f"in {self.slot}",
            hint="control it with `vmwu wrap ctl`",
        ):
            yield

    def _clean_leftovers(self) -> None:
        """What a killed wrapper left: half-written checkpoints, its VM's instance dir."""
        self.store.clean_partial()
        if self.state.instance_dir:
            inst = Path(self.state.instance_dir)
            if (inst / "qmp-dir").is_symlink():
                shutil.rmtree((inst / "qmp-dir").resolve(), ignore_errors=True)
            shutil.rmtree(inst, ignore_errors=True)
            self.state.instance_dir = None

    def _run_job(self) -> int:
        try:
            if not self.state.unzipped:
                for spec in self.job.unzip_tasks:
                    code = self._run_host(spec, -1, "unzip")
                    if code != 0:
                        return self._finish(code, f"unzip task failed with exit code {code}")
                self.state.unzipped = True
                self._checkpointed()
                self.save_state()
            self._start_daemons()
            while self.state.task_index < len(self.job.tasks):
                index = self.state.task_index
                spec = self.job.tasks[index]
                code = self._run_vm(spec, index) if spec.is_vm else self._run_host(spec, index)
                if code != 0:
                    return self._finish(code, self.state.message or f"task {index + 1} failed")
                self.state.task_index += 1
                self.state.task_elapsed = 0.0
                self._checkpointed()  # a restart goes on with the next task
                self.save_state()
                self.store.drop_all()  # only after the state says the task is done
            return self._finish(0, "done")
        except _Stop as stop:
            return self._stopped(stop)
        except _TimeLimit as exc:
            return self._finish(int(exc.exit_code), str(exc))
        except VmwuError as exc:
            # Bad input or a host failure: nothing is marked finished, so the job can be
            # run again once the cause is fixed.
            self.current = None
            self.runstate = RunState.FAILED
            self.state.message = str(exc)
            self.save_state()
            self.write_status()
            raise
        finally:
            for daemon in self.daemons:
                daemon.stop(grace=2.0)
                self.cpu_base += daemon.cpu_seconds()
            self.daemons = []

    def _finish(self, code: int, message: str, runstate: RunState | None = None) -> int:
        self.state.finished = True
        self.state.exit_code = code
        self.state.message = message
        self.runstate = runstate or (RunState.DONE if code == 0 else RunState.FAILED)
        self.current = None
        self.save_state()
        self.write_status()
        self.store.drop_all()
        self.report(message if code == 0 else f"failed (exit {code}): {message}")
        return code

    def _stopped(self, stop: _Stop) -> int:
        self.current = None
        if stop.action is Action.ABORT:
            self.store.drop_all()
            return self._finish(int(TEMPORARY_EXIT), "aborted", RunState.ABORTED)
        self.runstate = RunState.TEMPORARY_EXIT
        self.state.message = str(stop)
        self.save_state()
        self.write_status()
        if self.control is not None:
            self.report(f"{stop}; {self.control.resume_hint(self.slot, stop.source)}")
        return int(TEMPORARY_EXIT)

    def _start_daemons(self) -> None:
        # VMwrapper starts its VM-manage tasks only for jobs that have a VM task.
        for spec in self.job.daemons:
            if spec.kind is TaskKind.MANAGE and not self.job.has_vm_tasks:
                continue
            task, extra = self._resolved(expand(spec, self.macros), spec.where(self.job.source))
            daemon = HostTask(task, self.slot, task.where(self.job.source), extra)
            daemon.check()
            daemon.start()
            self.report(f"started daemon {daemon.label}")
            self.daemons.append(daemon)

    # -- one task ----------------------------------------------------------------------------

    def _begin(self, runner: Runner, index: int, kind: str) -> None:
        self.current = runner
        self.task_status = TaskStatus(index, kind, runner.label)
        self.runstate = RunState.SUSPENDED if self.suspended else RunState.RUNNING
        self._last = time.monotonic()
        self.write_status()

    def _end(self, runner: Runner) -> None:
        self.cpu_base += runner.cpu_seconds()
        self.current = None

    def _run_host(self, spec: TaskSpec, index: int, kind: str = "host") -> int:
        task = expand(spec, self.macros)
        where = f"{task.where(self.job.source)}" + (f" {index + 1}" if index >= 0 else "")
        task, extra = self._resolved(task, where)
        runner = HostTask(task, self.slot, where, extra)
        runner.check()
        runner.start()
        if self.suspended:
            runner.suspend()
        self.report(f"started {kind} task {runner.label}")
        self._begin(runner, index, kind)
        last_ck = runner.checkpoint_mtime()
        try:
            while (code := runner.poll()) is None:
                self._serve(runner)
                mtime = runner.checkpoint_mtime()
                if mtime is not None and mtime != last_ck:
                    # the app checkpointed: what the wrapper knows is saved beside it
                    last_ck = mtime
                    self._checkpointed()
                    self.save_state()
                self._check_time_limit(runner, task, where)
                self._tick()
                if self.control is not None:
                    self.control.wait(TICK)
        finally:
            self._end(runner)
        if code != 0:
            self.state.message = f"{where}: {runner.label} exited with {code}"
        self.report(f"{kind} task {runner.label} exited with {code}")
        return code

    def _run_vm(self, spec: TaskSpec, index: int) -> int:
        task = expand(spec, self.macros)
        where = f"{task.where(self.job.source)} {index + 1}"
        task, extra = self._resolved(task, where, in_vm=True)
        task_dir = self.dir / "tasks" / str(index + 1)
        task_dir.mkdir(parents=True, exist_ok=True)
        runner = VmTask(task, index, self.slot, task_dir, where, self.opts.vm, extra, self.report)
        runner.check()
        self._start_vm(runner, index)
        self._begin(runner, index, "vm")
        # Checkpoints come every interval of the task's running time (suspended time
        # does not count: the guest makes no progress then).
        due = self.state.task_elapsed + self.opts.checkpoint_interval
        try:
            while (code := runner.poll()) is None:
                self._serve(runner)
                if not self.suspended and self.state.task_elapsed >= due:
                    self._checkpoint(runner)
                    due = self.state.task_elapsed + self.opts.checkpoint_interval
                self._check_time_limit(runner, task, where)
                self._tick()
                if self.control is not None:
                    self.control.wait(TICK)
        finally:
            runner.stop()  # only does something if the loop was left by an exception
            self._end(runner)
            self.state.instance_dir = None
        if runner.error is not None and code != 0:
            self.state.message = f"{where}: {runner.error}"
        elif code != 0:
            self.state.message = f"{where}: the application exited with {code}"
        self.report(f"VM task {runner.label} exited with {code} ({runner.start_how})")
        return code

    def _start_vm(self, runner: VmTask, index: int) -> None:
        """Restore the task from its newest good checkpoint, else start it afresh."""
        t0 = time.monotonic()  # restore time: verifying the checkpoint included
        for ck in self.store.candidates(index, self.report):
            try:
                runner.restore(ck, suspended=self.suspended)
            except RestoreFailed as exc:
                self.report(str(exc))
                continue
            self.restored_from = ck.name
            self.restore_seconds = round(time.monotonic() - t0, 3)
            guest = ck.manifest.get("guest", {})
            at = guest.get("fraction")
            self.report(
                f"restored VM task {index + 1} from checkpoint {ck.name} in "
                f"{self.restore_seconds} s"
                + (f" (guest at {at:.1%}: {guest.get('message')})" if at is not None else "")
            )
            break
        else:
            runner.start(suspended=self.suspended)
            self.report(f"started VM task {index + 1}: {runner.label} ({runner.start_how})")
        self.state.instance_dir = os.fspath(runner.instance_dir) if runner.instance_dir else None
        self.save_state()

    def _resolved(
        self, task: TaskSpec, where: str, *, in_vm: bool = False
    ) -> tuple[TaskSpec, tuple[str, ...]]:
        """The task, and the wrapper's extra arguments, with BOINC's
        ``boinc_resolve(NAME)`` phrases replaced. On the host, NAME becomes the path of
        the file it stands for (as BOINC's wrapper resolves it), relative to the task's
        working directory. In a VM the files are the guest's: NAME stays NAME (a
        base-image task finds its ``copy_file_to_VM`` files under their names in its
        working directory, a unit at ``/cdrom/NAME``)."""

        def resolve(name: str) -> str:
            if in_vm or name not in self.opts.names:
                return name
            path = self.opts.names[name]
            if task.exec_dir and not os.path.isabs(path):
                return os.path.relpath(self.slot / path, self.slot / task.exec_dir)
            return path

        line = resolve_phrases(task.command_line, resolve, where)
        extra = resolve_phrases(self.opts.extra_args, resolve, f"{where}: -- arguments")
        return dataclasses.replace(task, command_line=tuple(line)), tuple(extra)

    def _check_time_limit(self, runner: Runner, task: TaskSpec, where: str) -> None:
        limit = task.time_limit
        if limit is None or self.state.task_elapsed <= limit:
            return
        runner.stop()
        self.state.message = f"{where}: ran longer than its time_limit of {limit:g} s"
        raise _TimeLimit(self.state.message)

    def _checkpoint(self, runner: VmTask) -> Checkpoint | None:
        """Checkpoint the VM task; report a failure (the older checkpoints stay) and
        carry on."""
        before = self.runstate
        self.runstate = RunState.CHECKPOINTING
        self.write_status()
        t0 = time.monotonic()
        run_cpu = self.run_cpu_time()  # the guest is paused for the checkpoint right after
        meta = {"cpu_time": round(self.cpu_time(), 3), "task_elapsed": self.state.task_elapsed}
        try:
            ck = runner.checkpoint(self.store, meta)
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not end the job
            kept = self.store.newest()
            what = f"{kept.name} is kept" if kept else "there is no earlier checkpoint"
            message = exc.message if isinstance(exc, VmwuError) else f"{type(exc).__name__}: {exc}"
            if runner.poll() is None:
                self.report(f"checkpoint failed ({what}): {message}")
            ck = None
        finally:
            self.runstate = before
        if ck is None:
            return None
        seconds = round(time.monotonic() - t0, 3)
        size = ck.size
        self.checkpoint_info = {
            "name": ck.name,
            "seconds": seconds,
            "guest_paused_seconds": runner.paused_seconds,
            "size_bytes": size,
        }
        self._checkpointed(run_cpu)
        self.state.last_checkpoint = ck.created
        self.save_state()
        self.write_status()
        self.report(
            f"checkpoint {ck.name}: {format_size(size)} in {seconds} s "
            f"(guest paused {runner.paused_seconds} s)"
        )
        return ck

    # -- control -----------------------------------------------------------------------------

    def _serve(self, runner: Runner) -> None:
        if self.control is None:
            return
        for request in self.control.requests():
            self._handle(request, runner)

    def _handle(self, request: Request, runner: Runner) -> None:
        action = request.action
        if action is Action.STATUS:
            self._refresh_task()
            request.reply({"ok": True, **self._status_data()})
        elif action is Action.SUSPEND:
            if not self.suspended:
                runner.suspend()
                for daemon in self.daemons:
                    daemon.suspend()
                self.suspended = True
                self.runstate = RunState.SUSPENDED
                self.report(f"suspended ({request.source})")
                self.write_status()
            request.reply({"ok": True, "state": self.runstate.value})
        elif action is Action.RESUME:
            if self.suspended:
                for daemon in self.daemons:
                    daemon.resume()
                runner.resume()
                self.suspended = False
                self.runstate = RunState.RUNNING
                self._last = time.monotonic()
                self.report(f"resumed ({request.source})")
                self.write_status()
            request.reply({"ok": True, "state": self.runstate.value})
        elif action is Action.CHECKPOINT:
            if not isinstance(runner, VmTask):
                error = "the current task runs on the host; it checkpoints itself"
                request.reply({"ok": False, "error": error})
                return
            ck = self._checkpoint(runner)
            request.reply({"ok": ck is not None, "checkpoint": self.checkpoint_info})
        elif action is Action.QUIT:
            message = self._quit(runner, request.source)
            request.reply({"ok": True, "state": RunState.TEMPORARY_EXIT.value, "message": message})
            raise _Stop(Action.QUIT, message, request.source)
        elif action is Action.ABORT:
            runner.stop()
            self.report(f"aborting ({request.source})")
            request.reply({"ok": True, "state": RunState.ABORTED.value})
            raise _Stop(Action.ABORT, "aborted")

    def _quit(self, runner: Runner, source: str) -> str:
        self.report(f"quitting ({source})")
        if isinstance(runner, VmTask):
            ck = self._checkpoint(runner)
            runner.stop()
            if ck is not None:
                return f"stopped after checkpoint {ck.name}"
            kept = self.store.newest()
            if kept is not None:
                return f"stopped; the quit checkpoint failed, {kept.name} is kept"
            return "stopped; the quit checkpoint failed and there is no earlier one"
        runner.stop()
        return "stopped the host task (it resumes from its own checkpoint file)"


class _TimeLimit(VmwuError):
    exit_code = GuestTimeout.exit_code
