"""The agent's event stream (JSON lines on the guest's second serial port).

QEMU writes the port to a file; :class:`EventReader` reads what is new on each poll and
keeps the instance's :class:`Phase`. Lines that are not JSON (a tty adds ``\\r``; a guest
may print garbage) are ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


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
    events: list[dict[str, Any]] = field(default_factory=list)

    def elapsed(self, now: float | None = None) -> float:
        if not self.qemu_started:
            return 0.0
        return (now or time.monotonic()) - self.qemu_started

    def apply(self, event: dict[str, Any], now: float) -> None:
        self.events.append(event)
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
            self.message = msg if isinstance(msg, str) else ""
        elif kind == "exit":
            code = event.get("code")
            if isinstance(code, int):
                self.exit_code = code
            self.disk_full = bool(event.get("disk_full"))
            self.exit_at = now
            self.phase = Phase.SHUTTING_DOWN
        elif kind == "error":
            msg = event.get("message")
            self.agent_error = msg if isinstance(msg, str) else "unknown agent error"


class EventReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._pos += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
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
