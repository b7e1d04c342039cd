"""The local executor: N ``exec-job`` processes at once on this machine (default N = cores).

Each job is started in a session of its own, so a driver that dies (kill -9, a closed
terminal) does not take its jobs with it: a resumed driver finds them again by pid and
start time (``pid:PID:START`` handles) and waits for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmwu.sweep import procs
from vmwu.sweep.executors import (
    Context,
    Executor,
    Observed,
    Phase,
    Submission,
    exec_job_argv,
)


def parse_handle(handle: str) -> tuple[int, int | None]:
    _, pid, start = handle.split(":")
    return int(pid), int(start) if start != "?" else None


def make_handle(pid: int) -> str:
    start = procs.start_time(pid)
    return f"pid:{pid}:{start if start is not None else '?'}"


def find_exec_jobs(results: Path, subs: Sequence[Submission]) -> dict[str, str]:
    """Handles of running ``exec-job`` processes of these attempts, found in /proc."""
    wanted = {(s.job_id, str(s.attempt)): s.job_id for s in subs}
    found: dict[str, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "exec-job" not in argv:
            continue
        i = argv.index("exec-job")
        rest = argv[i + 1 : i + 5]
        if len(rest) == 4 and rest[2] == "--attempt" and Path(rest[0]) == results:
            job = wanted.get((rest[1], rest[3]))
            if job is not None and procs.alive(int(entry), None):
                found[job] = make_handle(int(entry))
    return found


class LocalExecutor(Executor):
    name = "local"
    poll_interval = 0.1

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.slots is None:
            ctx.slots = os.cpu_count() or 1
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        handles: dict[str, str] = {}
        layout = self.ctx.layout
        for sub in subs:
            with open(layout.log(sub.job_id, sub.attempt), "ab") as log:
                proc = subprocess.Popen(
                    exec_job_argv(self.ctx.results, sub),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.ctx.results,
                    start_new_session=True,  # survives the driver
                )
            handle = make_handle(proc.pid)
            self.children[handle] = proc
            handles[sub.job_id] = handle
        return handles

    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        out: dict[str, Observed] = {}
        for job, handle in handles.items():
            child = self.children.get(handle)
            if child is not None:
                running = child.poll() is None
                if not running:
                    del self.children[handle]
            else:
                pid, start = parse_handle(handle)
                running = procs.alive(pid, start)
            out[job] = Observed(Phase.RUNNING if running else Phase.ENDED, node=None)
        return out

    def cancel(self, handles: Mapping[str, str]) -> None:
        # The runner first (it stops its steps and leaves no result), then anything left.
        stamps = {h: parse_handle(h) for h in handles.values()}
        for pid, start in stamps.values():
            if procs.alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for handle, (pid, start) in stamps.items():
            child = self.children.pop(handle, None)
            while time.monotonic() < deadline and procs.alive(pid, start):
                if child is not None and child.poll() is not None:
                    break
                time.sleep(0.05)
            if procs.alive(pid, start):
                procs.kill_tree(pid, grace=2.0)
            if child is not None:
                child.wait()

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        return find_exec_jobs(self.ctx.results, subs)

    def close(self) -> None:
        # The children go on without us (resume finds them); just stop tracking them.
        self.children.clear()
