"""Processes by pid, from ``/proc/PID/stat`` (the one reader of it; the process guard has
its own, since it runs without vmwu on its path): start times, liveness, descendants, CPU
time. A pid is only "the same process" if its start time matches what was recorded,
since pids are reused."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return data[data.rfind(")") + 2 :].split()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a live process (its threads included; with
    ``children``, also the children it has waited for). 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 15:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def alive(pid: int, started: int | None) -> bool:
    """Is the process that had this pid and start time still running (not a zombie)?"""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first-level first), also those that started
    sessions of their own (QEMU does)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int, *, include_self: bool = True, grace: float = 3.0) -> None:
    """SIGTERM ``pid`` and all its descendants, then SIGKILL what is left after ``grace``."""
    targets = descendants(pid) + ([pid] if include_self else [])
    stamps = {p: start_time(p) for p in targets}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in targets:
            if alive(p, stamps[p]):
                with contextlib.suppress(OSError):
                    os.kill(p, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p, stamps[p]) for p in targets):
            time.sleep(0.05)
