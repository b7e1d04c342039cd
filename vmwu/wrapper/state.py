"""The wrapper's own state, kept across restarts: which task, how much CPU time so far.

It lives in the slot directory as ``wrapper_checkpoint.json`` (BOINC's wrapper keeps a
``wrapper_checkpoint.txt`` there, beside the applications' own checkpoint files), and is
replaced atomically (temp file, fsync, rename), so a crash leaves the old state or the
new one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput
from vmwu.hostfs import write_json_atomic

STATE_FILE = "wrapper_checkpoint.json"
VERSION = 1


@dataclass
class WrapperState:
    job_sha256: str
    version: int = VERSION
    unzipped: bool = False  # the unzip tasks ran to the end
    task_index: int = 0  # the <task> to run (or resume) next
    cpu_time: float = 0.0  # seconds, every task and every earlier run included
    elapsed: float = 0.0  # seconds the job ran (not suspended), every run included
    task_elapsed: float = 0.0  # the same, for the current task (its time_limit)
    starts: int = 0  # how many times the wrapper started on this job
    last_checkpoint: float | None = None  # unix time
    instance_dir: str | None = None  # the running VM task's, removed if a kill left it
    finished: bool = False
    exit_code: int | None = None
    message: str = ""

    def save(self, path: Path) -> None:
        write_json_atomic(path, dataclasses.asdict(self), durable=True)

    @classmethod
    def load(cls, path: Path, job_sha256: str) -> WrapperState:
        """The state saved in ``path``, or a new one if there is none. A state written for
        another job file is refused: its task numbers would mean other tasks."""
        try:
            data: Any = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(job_sha256=job_sha256)
        except (OSError, ValueError) as exc:
            raise BadInput(
                f"wrapper state {path} is unreadable: {exc}",
                hint="remove it (and the .vmwu-wrap directory) to start the job over",
            ) from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise BadInput(f"wrapper state {path} is not a vmwu wrap state (version {VERSION})")
        state = cls(**{k: v for k, v in data.items() if k in names})
        if state.job_sha256 != job_sha256:
            raise BadInput(
                f"the job file changed since {path} was written",
                hint="restore the job file, or remove that file and the .vmwu-wrap "
                "directory to start the job over",
            )
        return state
