"""Finding the processes a test started, by what they really carry, and waiting for them
to be gone.

Every process a test starts gets a unique marker in its environment (``MARK`` = the
test's own temporary directory), which every descendant inherits unless it clears its
environment; :func:`carrying` finds them by it (in the environment, the command line or
the working directory). :func:`tree` records the pids and start times of a process tree
before a kill, so that the check after it cannot be fooled by pid reuse.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.waits import wait_for

MARK = "VMWU_TEST_MARK"


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def running(pid: int, started: int | None = None) -> bool:
    """Is that process (that pid with that start time) still there, and not a zombie?"""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def tree(root: int) -> dict[int, int]:
    """pid -> start time of ``root`` and every process below it, now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        started = start_time(pid)
        if started is not None:
            found[pid] = started
        todo += children.get(pid, [])
    return found


def state(pid: int) -> str:
    """The process's state letter (R, S, T, Z...); "" once it is gone."""
    fields = _stat(pid)
    return fields[0] if fields else ""


def survivors(snapshot: dict[int, int]) -> list[int]:
    return [pid for pid, started in snapshot.items() if running(pid, started)]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> bytes:
    """The process's command line, NUL-separated (b"" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def carrying(mark: str) -> list[int]:
    """Live processes (not this one) with ``mark`` in their environment, command line or
    working directory."""
    needle = mark.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or not running(int(entry)):
            continue
        base = f"/proc/{entry}"
        try:
            hit = needle in Path(f"{base}/environ").read_bytes()
            hit = hit or needle in Path(f"{base}/cmdline").read_bytes()
            hit = hit or mark in os.readlink(f"{base}/cwd")
        except OSError:
            continue
        if hit:
            found.append(int(entry))
    return found


def describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            argv = "?"
        out.append(f"{pid} {argv[:160]}")
    return "; ".join(out)


def assert_all_gone(mark: str, snapshot: dict[int, int], timeout: float = 30.0) -> None:
    """Everything in ``snapshot`` and everything carrying ``mark`` ends within ``timeout``."""

    def gone() -> bool:
        return not survivors(snapshot) and not carrying(mark)

    try:
        wait_for(gone, timeout, "every process of the test to end")
    except AssertionError:
        left = sorted(set(survivors(snapshot)) | set(carrying(mark)))
        message = f"processes left running: {describe(left)}"
        for pid in left:  # do not leave them to the next test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(message) from None
