"""Executors: where jobs run. One interface, one module per engine (local, slurm, sge, dask).

Every executor starts the same node-side command for a job,
``python -m vmwu sweep exec-job RESULTS JOB_ID --attempt N`` (:mod:`vmwu.sweep.runner`),
and reports what it sees; the job's outcome itself is read from the results directory by
the driver, never from the executor. A *handle* is the executor's name for one submitted
attempt, a string the journal keeps (``pid:START`` / ``SLURMID_TASK`` / ``SGEID.TASK`` / a
Dask key).
"""

from __future__ import annotations

import difflib
import importlib
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput
from vmwu.sweep.layout import Layout


class Phase(StrEnum):
    QUEUED = "queued"  # accepted, not started
    RUNNING = "running"
    ENDED = "ended"  # finished or vanished: the results directory says how it ended
    CANCELLED = "cancelled"  # the engine says it was cancelled (scancel, future cancelled)


@dataclass(frozen=True)
class Observed:
    phase: Phase
    node: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Submission:
    job_id: str
    attempt: int


@dataclass
class Context:
    results: Path
    experiment: str  # short experiment id, for job names
    slots: int | None = None  # parallel jobs (local, dask workers); None: the engine decides
    options: dict[str, Any] = field(default_factory=dict)  # executor-specific

    @property
    def layout(self) -> Layout:
        return Layout(self.results)


def exec_job_argv(results: Path, sub: Submission) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vmwu",
        "sweep",
        "exec-job",
        str(results),
        sub.job_id,
        "--attempt",
        str(sub.attempt),
    ]


class Patience:
    """How long a batch system may stay unreachable (its controller restarting or busy)
    before the driver gives up: the jobs go on meanwhile, and ``vmwu sweep resume``
    follows them again later."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._down_since: float | None = None

    def tolerates(self) -> bool:
        """The system is unreachable now: True while that has lasted less than ``seconds``."""
        now = time.monotonic()
        self._down_since = self._down_since or now
        return now - self._down_since < self.seconds

    def reset(self) -> None:
        """The system answered."""
        self._down_since = None


class Executor(ABC):
    name: str = ""
    poll_interval = 0.5  # seconds between polls of the driver's loop
    # Several jobs run one after the other under one handle: the driver then settles a
    # job when its result appears, not when the handle ends. Otherwise a handle is
    # followed until it ends (the local executor must see its child exit to reap it).
    jobs_share_tasks = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def check(self) -> None:  # noqa: B027 - optional hook
        """Fail early with one clear line if the engine cannot be used."""

    @property
    def slots(self) -> int | None:
        """How many jobs may be submitted-or-running at once (None: no limit)."""
        return self.ctx.slots

    @abstractmethod
    def submit(self, subs: Sequence[Submission], batch: str) -> dict[str, str]:
        """Start these attempts; return their handles by job id. ``batch`` is a name unique
        in the experiment, recorded in the journal before this is called, so that
        :meth:`find` can tell after a crash whether the submission happened."""

    @abstractmethod
    def poll(self, handles: Mapping[str, str]) -> dict[str, Observed]:
        """What the engine says about each handle (job id → handle)."""

    @abstractmethod
    def cancel(self, handles: Mapping[str, str]) -> None:
        """Stop these jobs (their results must not appear)."""

    def find(self, batch: str, subs: Sequence[Submission]) -> dict[str, str]:
        """After a crash between "submitting" and the handle being recorded: the handles of
        those of ``subs`` that the engine did accept under ``batch`` (others are resubmitted)."""
        return {}

    def wait(self, timeout: float) -> None:
        """Sleep until the next poll (an executor may wake up early when a job ends)."""
        time.sleep(timeout)

    def output_file(self, handle: str) -> Path | None:
        """Where the engine writes what a task printed (quoted when a job left no result);
        None: the runner's own log, ``logs/JOBID.aN.log``."""
        return None

    def attach(self, handles: Mapping[str, str]) -> None:  # noqa: B027 - optional hook
        """Follow jobs submitted by an earlier driver (on resume)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


EXECUTORS = {
    "local": "vmwu.sweep.executors.local:LocalExecutor",
    "slurm": "vmwu.sweep.executors.slurm:SlurmExecutor",
    "sge": "vmwu.sweep.executors.sge:GridEngineExecutor",
    "dask": "vmwu.sweep.executors.dask:DaskExecutor",
}


def check_name(name: str) -> str:
    if name not in EXECUTORS:
        close = difflib.get_close_matches(name, list(EXECUTORS), n=1)
        raise BadInput(
            f"unknown executor {name!r} (local, slurm, sge or dask)",
            hint=f"did you mean '{close[0]}'?" if close else "--executor local|slurm|sge|dask",
        )
    return name


def get_executor(name: str, ctx: Context) -> Executor:
    module_name, _, cls_name = EXECUTORS[check_name(name)].partition(":")
    cls: type[Executor] = getattr(importlib.import_module(module_name), cls_name)
    return cls(ctx)
