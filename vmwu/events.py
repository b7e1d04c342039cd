"""The agent's event stream (JSON lines on the guest's second serial port).

QEMU writes the port to a file; :class:`EventReader` reads what is new on each poll and
keeps the instance's :class:`Phase`. Lines that are not JSON (a tty adds ``\\r``; a guest
may print garbage) are ignored. Everything here comes from the guest: reads are bounded
per poll, an overlong line is dropped, messages are cut short, exit codes outside 0-255
and fractions outside [0, 1] are ignored; :func:`check_log_sizes` stops a guest that
floods its console or event port.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

MAX_READ = 1 << 20  # bytes of events read per poll
MAX_LINE = 64 * 1024  # an event line longer than this is dropped
MAX_MESSAGE = 500  # characters of a progress or error message kept
# console or event port: a guest writing more is stopped (a site may set its own limit)
MAX_LOG_BYTES = int(os.environ.get("VMWU_MAX_LOG_BYTES", 64 << 20))


def check_log_sizes(*paths: Path | None) -> str | None:
    """Why the guest must be stopped (it wrote too much to one of ``paths``), or None."""
    for path in paths:
        if path is None:
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size > MAX_LOG_BYTES:
            return f"the guest wrote more than {MAX_LOG_BYTES} bytes to {path.name}"
    return None


class Phase(StrEnum):
    PREPARING = "preparing"
    BOOTING = "booting"
    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"
    DONE = "done"


@dataclass
class InstanceState:
    """What the host knows about a running instance, updated from events."""

    phase: Phase = Phase.PREPARING
    qemu_started: float = 0.0  # monotonic times on the host
    booted_at: float | None = None
    started_at: float | None = None
    exit_at: float | None = None
    exit_code: int | None = None
    disk_full: bool = False
    fraction: float | None = None
    message: str = ""
    agent_error: str | None = None
    agent_version: int | None = None
    event_count: int = 0  # events applied so far

    def elapsed(self, now: float | None = None) -> float:
        if not self.qemu_started:
            return 0.0
        return (now or time.monotonic()) - self.qemu_started

    def apply(self, event: dict[str, Any], now: float) -> None:
        self.event_count += 1
        kind = event.get("event")
        if kind in ("booted", "resumed"):
            self.booted_at = now
            self.phase = Phase.BOOTING
            agent = event.get("agent")
            self.agent_version = agent if isinstance(agent, int) else None
        elif kind == "started":
            self.started_at = now
            self.phase = Phase.RUNNING
        elif kind == "progress":
            fraction = event.get("fraction")
            if isinstance(fraction, int | float) and 0 <= fraction <= 1:
                self.fraction = float(fraction)
            msg = event.get("message")
            self.message = msg[:MAX_MESSAGE] if isinstance(msg, str) else ""
        elif kind == "exit":
            code = event.get("code")
            if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255:
                self.exit_code = code
            self.disk_full = bool(event.get("disk_full"))
            self.exit_at = now
            self.phase = Phase.SHUTTING_DOWN
        elif kind == "error":
            msg = event.get("message")
            self.agent_error = msg[:MAX_MESSAGE] if isinstance(msg, str) else "unknown agent error"


class EventReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read(MAX_READ)
        except FileNotFoundError:
            return []
        self._pos += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:  # no event is this long: drop it
            self._partial = b""
        events = []
        for raw in lines:
            line = raw.strip(b"\r\n\0 ")
            if not line.startswith(b"{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
        return events
