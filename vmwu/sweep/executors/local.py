"""The local executor: N jobs at once on this machine (default N = cores).

Each job is a child process forked from the driver that calls the node-side runner
(:func:`vmwu.sweep.runner.exec_job`, the code behind ``vmwu sweep exec-job``) directly:
forking skips a Python start-up per job, the biggest per-job cost on a loaded machine.
The child starts a session of its own, so a driver that dies (kill -9, a closed terminal)
does not take its jobs with it; a resumed driver finds them again by pid and start time
(``pid:PID:START`` handles, also written by the runner to ``run/JOBID.aN.json``).

With ``VMWU_POOL=auto`` the executor also owns a node pool service for the sweep's
duration (``vmwu pool serve``, issue 15; docs/pool.md), ``slots`` ready VMs per machine,
which the jobs' ``vmwu run`` steps use through ``$VMWU_POOL``. It is started through the
spawn door, so it (and its QEMUs) die with the driver; a job whose ``vmwu run`` loses it
then fails as an infrastructure failure (247) and is retried by a resumed driver. Unset
or ``off``: every instance runs in its own QEMU (the default); a ``VMWU_POOL`` naming a
socket is used as it is.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmwu import procstat as procs
from vmwu import tools
from vmwu.errors import VmwuError
from vmwu.sweep.executors import Context, Executor, Observed, Phase, Submission
from vmwu.sweep.layout import Layout, read_json


def parse_handle(handle: str) -> tuple[int, int | None]:
    _, pid, start = handle.split(":")
    return int(pid), int(start) if start != "?" else None


def make_handle(pid: int) -> str:
    start = procs.start_time(pid)
    return f"pid:{pid}:{start if start is not None else '?'}"


def find_exec_jobs(results: Path, subs: Sequence[Submission]) -> dict[str, str]:
    """Handles of these attempts' runners that are alive on this machine: from their run
    markers, else (before the runner has written its marker) by what every runner started
    by an executor is: the leader of a session of its own whose standard output is the
    attempt's log. That holds for a runner forked by this executor (whose command line is
    the driver's) and for a ``vmwu sweep exec-job`` that the Dask executor starts."""
    found: dict[str, str] = {}
    wanted: dict[tuple[int, int], str] = {}  # the log's (st_dev, st_ino) -> job
    layout = Layout(results)
    for sub in subs:
        try:
            marker = read_json(layout.marker(sub.job_id, sub.attempt))
        except (OSError, ValueError):
            with contextlib.suppress(OSError):  # no log: the runner was never started
                log = os.stat(layout.log(sub.job_id, sub.attempt))
                wanted[(log.st_dev, log.st_ino)] = sub.job_id
            continue
        pid, start = int(marker["pid"]), marker.get("pid_start")
        if marker.get("host") == os.uname().nodename and procs.alive(pid, start):
            found[sub.job_id] = f"pid:{pid}:{start if start is not None else '?'}"
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != int(entry):
                continue
            out = os.stat(f"/proc/{entry}/fd/1")  # the file itself, even if renamed
        except OSError:
            continue
        job = wanted.get((out.st_dev, out.st_ino))
        if job is not None and procs.alive(int(entry), None):
            found[job] = make_handle(int(entry))
    return found


def _child(results: Path, sub: Submission, log: Path) -> None:
    """In the forked child: become a session of its own, run the job, never return."""
    code = 240
    try:
        os.setsid()
        # Nothing of the driver's: above all not its lock on the results directory (an
        # inherited flock would keep "a driver is running" true while this job runs).
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        # fresh stream objects: the driver's may be locked by a thread that fork left behind
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        from vmwu.sweep.runner import exec_job

        code = exec_job(results, sub.job_id, sub.attempt)
    except VmwuError as err:
        print(f"vmwu: error: {err}", file=sys.stderr)
        code = int(err.exit_code)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class LocalExecutor(Executor):
    name = "local"
    poll_interval = 0.5  # wait() wakes up as soon as a job ends

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.slots is None:
            ctx.slots = os.cpu_count() or 1
        self.children: dict[str, int] = {}  # handle -> pid, for jobs forked by this driver
        self.pidfds: dict[int, int] = {}  # pid -> pidfd, to wake up when one exits
        self.pool: tools.Process | None = None
        self.pool_dir: Path | None = None
        self._pool_tried = False  # started at the first submission (not for a cancel)

    def _start_pool(self, size: int) -> None:
        from vmwu.run import poolclient

        # opt-in: with a pool a job's guest belongs to the service, so a driver killed
        # with -9 takes the running jobs with it (they are re-run, not re-attached), and
        # on 2 busy cores the pool's refill competes with the slots (docs/pool.md)
        if os.environ.get(poolclient.ENV) != "auto":  # unset, "off", or the user's socket
            return
        self.pool_dir = Path(tempfile.mkdtemp(prefix="vmwu-pool-"))
        sock = self.pool_dir / "pool.sock"
        argv = [sys.executable, "-m", "vmwu", "pool", "serve", "--socket", str(sock)]
        argv += ["--size", str(size), "--idle", "86400"]
        with open(self.pool_dir / "serve.log", "wb") as log:
            self.pool = tools.spawn(argv, stdout=log, stderr=log, session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.pool.poll() is None:
            try:
                poolclient.ask(sock, {"v": 1, "status": True}, timeout=10)
            except OSError:
                time.sleep(0.02)
                continue
            os.environ[poolclient.ENV] = str(sock)  # the jobs, forked from here, see it
            return
        self._stop_pool()

    def _stop_pool(self) -> None:
        from vmwu.run import poolclient

        if os.environ.get(poolclient.ENV) and self.pool_dir is not None:
            if os.environ[poolclient.ENV] == str(self.pool_dir / "pool.sock"):
                del os.environ[poolclient.ENV]
        if self.pool is not None:
            if self.pool.poll() is None:
                self.pool.terminate()
                if self.pool.wait(60) is None:
                    self.pool.signal(signal.SIGKILL)
                    self.pool.wait(10)
            self.pool = None
        if self.pool_dir is not None:
            shutil.rmtree(self.pool_dir, ignore_errors=True)
            self.pool_dir = None

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        if not self._pool_tried:
            self._pool_tried = True
            self._start_pool(self.ctx.slots or 1)
        handles: dict[str, str] = {}
        for sub in subs:
            log = self.ctx.layout.log(sub.job_id, sub.attempt)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(self.ctx.results, sub, log)
            handle = make_handle(pid)
            self.children[handle] = pid
            with contextlib.suppress(OSError):
                self.pidfds[pid] = os.pidfd_open(pid)
            handles[sub.job_id] = handle
        return handles

    def _reap(self, handle: str) -> bool:
        """Has our child behind ``handle`` exited? (reaps it)"""
        pid = self.children[handle]
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == 0:
            return False
        del self.children[handle]
        fd = self.pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)
        return True

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        for job, handle in handles.items():
            if handle in self.children:
                running = not self._reap(handle)
            else:
                pid, start = parse_handle(handle)
                running = procs.alive(pid, start)
            out[job] = Observed(Phase.RUNNING if running else Phase.ENDED)
        return out

    def wait(self, timeout: float) -> None:
        fds = list(self.pidfds.values())
        if fds:
            select.select(fds, [], [], timeout)
        else:
            time.sleep(timeout)

    def cancel(self, handles: Mapping[str, str]) -> None:
        # The runner first (it stops its steps and leaves no result), then anything left.
        stamps = {h: parse_handle(h) for h in handles.values()}
        for pid, start in stamps.values():
            if procs.alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for handle, (pid, start) in stamps.items():
            while time.monotonic() < deadline and procs.alive(pid, start):
                if handle in self.children and self._reap(handle):
                    break
                time.sleep(0.05)
            if procs.alive(pid, start):
                procs.kill_tree(pid, grace=2.0)
            if handle in self.children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.children.pop(handle, None)
                fd = self.pidfds.pop(pid, None)
                if fd is not None:
                    os.close(fd)

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        return find_exec_jobs(self.ctx.results, subs)

    def close(self) -> None:
        # The children go on without us (resume finds them); just stop tracking them.
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        self.children.clear()
        self._stop_pool()
