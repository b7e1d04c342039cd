"""Host tasks: a program run in the slot directory, as BOINC's wrapper runs it.

The program gets its own session (so a terminal's Ctrl-C or Ctrl-Z reaches only the
wrapper, which decides). It runs under vmwu's process guard (``tools.spawn(tree=True)``,
vmwu/guard.py): it and every process it starts die with the wrapper, however the wrapper
dies (``kill -9`` included, and also while the task is suspended), and what it leaves
running when it ends is ended too. Suspending stops its whole process group with SIGSTOP;
quitting sends SIGTERM, then SIGKILL. Its
progress is the number the app writes into ``fraction_done_filename``; its checkpoints
are its own business (``checkpoint_filename``), the wrapper only notices them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from vmwu import tools
from vmwu.errors import BadInput, ToolNotFound
from vmwu.hostfs import SafeDir, rel_parts
from vmwu.wrapper.jobxml import TaskSpec

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a live process from /proc/PID/stat (its threads
    included; with ``children``, also the children it has waited for). 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return 0.0
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = data[data.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def resolve_application(app: str, slot: Path, where: str) -> str:
    """The program to run: a path (it has a '/') relative to the slot directory; else a
    file of that name in the slot directory (BOINC's logical names); else one on PATH."""
    if "/" in app:
        path = Path(app) if Path(app).is_absolute() else slot / app
        if not path.is_file():
            raise BadInput(f"{where}: application {app} does not exist")
        return os.fspath(path)
    if (slot / app).is_file():
        return os.fspath(slot / app)
    found = shutil.which(app)
    if found is None:
        raise BadInput(f"{where}: application {app!r} is neither in {slot} nor on PATH")
    return found


class HostTask:
    """One run of a host task; ``start()``, then ``poll()`` until it returns the code."""

    def __init__(
        self, task: TaskSpec, slot: Path, where: str, extra_args: Sequence[str] = ()
    ) -> None:
        self.task = task
        self.slot = slot
        self.where = where
        self.args = list(task.command_line)
        if task.append_cmdline_args:
            self.args += extra_args
        self._proc: tools.Process | None = None
        self.returncode: int | None = None
        self._final_cpu = 0.0
        self.suspended = False

    @property
    def label(self) -> str:
        return shlex.join([self.task.application or "", *self.args])

    def _path(self, name: str) -> Path:
        return self.slot / name

    def _in_workdir(self, name: str) -> Path:
        """Files the app itself writes are relative to its working directory."""
        return self._path(self.task.exec_dir or ".") / name

    def check(self) -> None:
        """Raise :class:`BadInput` now for what would fail at start."""
        resolve_application(self.task.application or "", self.slot, self.where)
        if self.task.exec_dir and not self._path(self.task.exec_dir).is_dir():
            raise BadInput(f"{self.where}: exec_dir {self.task.exec_dir} is not a directory")

    def start(self) -> None:
        task = self.task
        argv = [resolve_application(task.application or "", self.slot, self.where), *self.args]
        cwd = self._path(task.exec_dir) if task.exec_dir else self.slot
        files: list[IO[bytes]] = []
        try:
            stdin: IO[bytes] | int = subprocess.DEVNULL
            if task.stdin_filename:
                try:
                    stdin = open(self._path(task.stdin_filename), "rb")
                except OSError as exc:
                    raise BadInput(
                        f"{self.where}: stdin_filename {task.stdin_filename}: {exc.strerror}"
                    ) from None
                files.append(stdin)
            outs: list[IO[bytes] | int] = []
            for name in (task.stdout_filename, task.stderr_filename):
                if name:
                    # appended: a task restarted after a quit adds to what it wrote before;
                    # opened without following links (a VM task may have left one there)
                    *dirs, leaf = rel_parts(name, self.where)
                    with SafeDir.open(self.slot) as slot, slot.walk(dirs, create=True) as d:
                        out: IO[bytes] = open(d.open_append(leaf), "ab")
                    files.append(out)
                    outs.append(out)
                else:
                    outs.append(subprocess.DEVNULL)
            try:
                self._proc = tools.spawn(
                    argv,
                    cwd=cwd,
                    env=dict(task.setenv),
                    stdin=stdin,
                    stdout=outs[0],
                    stderr=outs[1],
                    session=True,
                    tree=True,
                )
            except ToolNotFound as exc:
                cause = exc.__cause__
                why = cause.strerror if isinstance(cause, OSError) else "not executable"
                raise BadInput(f"{self.where}: cannot run {argv[0]}: {why}") from None
        finally:
            for fh in files:
                fh.close()

    @property
    def pid(self) -> int | None:
        """The task's own pid (its guard's is ``_proc.pid``)."""
        return self._proc.leader if self._proc else None

    def poll(self) -> int | None:
        """The exit code once the program has ended (death by signal N: 128 + N)."""
        if self._proc is None or self.returncode is not None:
            return self.returncode
        code = self._proc.poll()
        if code is None:
            return None
        usage = self._proc.rusage  # the guard's: it waited for the task and its children
        if usage is not None:
            self._final_cpu = usage.ru_utime + usage.ru_stime
        self.returncode = 128 - code if code < 0 else code
        return self.returncode

    def cpu_seconds(self) -> float:
        if self.returncode is not None or self._proc is None:
            return self._final_cpu
        return proc_cpu_seconds(self._proc.leader, children=True)

    def fraction(self) -> float | None:
        name = self.task.fraction_done_filename
        if not name:
            return None
        try:
            value = float(self._in_workdir(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return min(max(value, 0.0), 1.0)

    def checkpoint_mtime(self) -> float | None:
        """When the app last wrote its ``checkpoint_filename``."""
        name = self.task.checkpoint_filename
        if not name:
            return None
        try:
            return self._in_workdir(name).stat().st_mtime
        except OSError:
            return None

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self.returncode is None:
            self._proc.signal(sig)  # its process group (not the guard)

    def suspend(self) -> None:
        self._signal(signal.SIGSTOP)
        self.suspended = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.suspended = False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (a well-behaved app checkpoints and exits), SIGKILL after ``grace``."""
        if self._proc is None or self.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        end = time.monotonic() + grace
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if self.poll() is None:
            self._signal(signal.SIGKILL)
            while self.poll() is None:
                time.sleep(0.02)
