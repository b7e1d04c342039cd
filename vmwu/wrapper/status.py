"""The status file: what the wrapper is doing, for scripts to read at any moment.

JSON, replaced atomically (a reader never sees half of it) about once a second and on
every change of state. docs/wrapper.md lists the fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmwu.errors import VmwuError
from vmwu.hostfs import write_json_atomic

STATUS_FILE = "wrapper_status.json"
FORMAT = 1


class RunState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUSPENDED = "suspended"
    CHECKPOINTING = "checkpointing"
    DONE = "done"  # every task succeeded
    FAILED = "failed"  # a task failed; exit_code says how
    TEMPORARY_EXIT = "temporary-exit"  # quit: run the wrapper again to resume
    ABORTED = "aborted"


@dataclass
class TaskStatus:
    index: int  # among the <task>s; -1 for the unzip tasks
    kind: str  # "vm", "host" or "unzip"
    label: str
    fraction: float | None = None
    message: str = ""
    elapsed: float = 0.0


def fraction_done(weights: list[float], index: int, current: float | None) -> float:
    """Weighted fraction of the job done: tasks before ``index`` count whole, the current
    one by its own fraction. All-zero weights count every task the same."""
    if not weights:
        return 0.0
    w = weights if sum(weights) > 0 else [1.0] * len(weights)
    done = sum(w[:index])
    if 0 <= index < len(w) and current is not None:
        done += w[index] * min(max(current, 0.0), 1.0)
    return round(min(done / sum(w), 1.0), 6)


class StatusFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def write(self, data: dict[str, Any]) -> None:
        data = {"format": FORMAT, "updated": round(time.time(), 3), **data}
        self.data = data
        try:
            # Not fsynced: it is rewritten every second, and only the live value matters.
            write_json_atomic(self.path, data)
        except VmwuError:
            pass  # a full disk must not stop the job; the next write will try again
