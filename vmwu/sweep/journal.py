"""The journal: one SQLite database (WAL) per experiment, ``RESULTS/journal.sqlite``.

Tables: ``experiment`` (key/value: plan path and hash, executor, options, created),
``jobs`` (one row per job: parameters, state, attempts, exit code, node, the executor's
handle, timestamps), ``events`` (every state change, for the timeline report) and
``root_files`` (which job wrote each of the plan's root-side outputs in RESULTS).

Only the driver writes (``vmwu sweep status``/``report`` read). Every state change is
committed before the driver acts on it, so a driver killed at any moment leaves a journal
that says what may be under way; :mod:`vmwu.sweep.driver` reconciles it with the results
directory and the executor on resume. States::

    pending → submitting → submitted → running → done | failed | cancelled
                 │    └──────────────────┴──→ pending (infrastructure failure: retry)
                 └──→ pending (the submission never reached the executor)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput, HostDiskFull, HostFailure
from vmwu.sweep.expand import Job


class State(StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"  # written before the executor is asked; handle = batch name
    SUBMITTED = "submitted"  # the executor has it (handle recorded); queued
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (State.SUBMITTING, State.SUBMITTED, State.RUNNING)
TERMINAL = (State.DONE, State.FAILED, State.CANCELLED)

# A result found in the results directory ends a job from any state; a resume may re-run
# failed or cancelled jobs on request.
_ANY_END = {State.DONE, State.FAILED, State.CANCELLED}
TRANSITIONS: dict[State, set[State]] = {
    State.PENDING: {State.SUBMITTING} | _ANY_END,
    State.SUBMITTING: {State.SUBMITTED, State.RUNNING, State.PENDING} | _ANY_END,
    State.SUBMITTED: {State.RUNNING, State.PENDING} | _ANY_END,
    State.RUNNING: {State.PENDING} | _ANY_END,
    State.DONE: set(),
    State.FAILED: {State.PENDING, State.DONE},
    State.CANCELLED: {State.PENDING, State.DONE, State.FAILED},
}


@dataclass(frozen=True)
class AttemptChange:
    """A job's attempt count moved relative to what the journal holds (in the same
    transaction as its state)."""

    delta: int


ONE_MORE_ATTEMPT = AttemptChange(+1)  # submitted once more
ONE_ATTEMPT_LESS = AttemptChange(-1)  # the submission did not happen after all


class IllegalTransition(RuntimeError):
    pass


_FIELDS = {
    "attempts",
    "exit_code",
    "node",
    "handle",
    "error",
    "submitted_at",
    "started_at",
    "finished_at",
}


SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    node TEXT,
    handle TEXT,
    error TEXT,
    submitted_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS root_files (path TEXT PRIMARY KEY, job TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    detail TEXT
);
"""


@dataclass(frozen=True)
class JobRow:
    id: str
    seq: int
    params: dict[str, Any]
    state: State
    attempts: int
    exit_code: int | None
    node: str | None
    handle: str | None
    error: str | None
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRow:
        return cls(
            row["id"],
            row["seq"],
            json.loads(row["params"]),
            State(row["state"]),
            row["attempts"],
            row["exit_code"],
            row["node"],
            row["handle"],
            row["error"],
            row["submitted_at"],
            row["started_at"],
            row["finished_at"],
        )


class Journal:
    FILE = "journal.sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, results: Path, *, create: bool = False, readonly: bool = False) -> Journal:
        path = results / cls.FILE
        if not create and not path.exists():
            raise BadInput(
                f"{results} is not a sweep results directory (no {cls.FILE})",
                hint="give the --results directory of a `vmwu sweep PLAN` run",
            )
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            else:
                conn = sqlite3.connect(path, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise _host_error(err, results) from None
        conn.row_factory = sqlite3.Row
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self.conn:
                yield self.conn
        except sqlite3.Error as err:
            raise _host_error(err, self.path.parent) from None

    # -- experiment ---------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        rows = self.conn.execute("SELECT key, value FROM experiment").fetchall()
        return {r["key"]: json.loads(r["value"]) for r in rows}

    def set_meta(self, values: Mapping[str, Any]) -> None:
        with self._write() as c:
            c.executemany(
                "INSERT OR REPLACE INTO experiment (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # -- jobs ---------------------------------------------------------------------------

    def add_jobs(self, jobs: Sequence[Job]) -> int:
        """Insert new jobs as pending; jobs already there (same id) are left alone."""
        now = time.time()
        with self._write() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO jobs (id, seq, params, state, updated_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(j.id, j.seq, json.dumps(j.params, sort_keys=True), now) for j in jobs],
            )
            added = c.total_changes - before
            c.executemany("UPDATE jobs SET seq = ? WHERE id = ?", [(j.seq, j.id) for j in jobs])
        return added

    def drop_jobs(self, keep: Iterable[str]) -> int:
        keep_set = set(keep)
        gone = [r.id for r in self.jobs() if r.id not in keep_set]
        with self._write() as c:
            c.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in gone])
        return len(gone)

    def jobs(self, states: Iterable[State] | None = None) -> list[JobRow]:
        if states is None:
            rows = self.conn.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        else:
            wanted = [str(s) for s in states]
            marks = ",".join("?" * len(wanted))
            rows = self.conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq", wanted
            ).fetchall()
        return [JobRow.from_row(r) for r in rows]

    def job(self, job_id: str) -> JobRow:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise BadInput(f"no job {job_id} in {self.path}")
        return JobRow.from_row(row)

    def counts(self) -> dict[State, int]:
        counts = dict.fromkeys(State, 0)
        for row in self.conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[State(row["state"])] = row["n"]
        return counts

    def transition(
        self, job_ids: Sequence[str], to: State, detail: str | None = None, **fields: Any
    ) -> None:
        """Move jobs to ``to`` (checked against :data:`TRANSITIONS`), setting ``fields``
        (attempts, exit_code, node, handle, error, *_at), in one transaction. ``attempts``
        may be a number, or :data:`ONE_MORE_ATTEMPT` / :data:`ONE_ATTEMPT_LESS`."""
        self.transition_each(to, {jid: fields for jid in job_ids}, detail)

    def transition_each(
        self, to: State, fields: Mapping[str, Mapping[str, Any]], detail: str | None = None
    ) -> None:
        """Like :meth:`transition` with fields of their own per job (one transaction)."""
        if not fields:
            return
        now = time.time()
        with self._write() as c:
            for jid, job_fields in fields.items():
                self._apply(c, jid, to, now, detail, dict(job_fields))

    @staticmethod
    def _apply(
        c: sqlite3.Connection,
        jid: str,
        to: State,
        now: float,
        detail: str | None,
        values: dict[str, Any],
    ) -> None:
        row = c.execute("SELECT state, attempts FROM jobs WHERE id = ?", (jid,)).fetchone()
        if row is None:
            raise IllegalTransition(f"no job {jid}")
        current = State(row["state"])
        if to != current and to not in TRANSITIONS[current]:
            raise IllegalTransition(f"job {jid}: {current} → {to} is not allowed")
        attempts = values.get("attempts")
        if isinstance(attempts, AttemptChange):
            values["attempts"] = max(0, row["attempts"] + attempts.delta)
        unknown = set(values) - _FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        sets = "".join(f", {k} = ?" for k in values)
        c.execute(
            f"UPDATE jobs SET state = ?, updated_at = ?{sets} WHERE id = ?",
            (str(to), now, *values.values(), jid),
        )
        c.execute(
            "INSERT INTO events (job, at, state, attempt, detail) VALUES (?, ?, ?, ?, ?)",
            (jid, now, str(to), values.get("attempts", row["attempts"]), detail),
        )

    # -- root-side outputs --------------------------------------------------------------

    def root_file_owner(self, path: str) -> str | None:
        row = self.conn.execute("SELECT job FROM root_files WHERE path = ?", (path,)).fetchone()
        return None if row is None else str(row["job"])

    def set_root_file(self, path: str, job_id: str) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO root_files (path, job) VALUES (?, ?)", (path, job_id))

    def events(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT job, at, state, attempt, detail FROM events ORDER BY n")
        return [dict(r) for r in rows]


def _host_error(err: sqlite3.Error, results: Path) -> HostFailure:
    message = str(err)
    if "disk is full" in message or "disk I/O error" in message:
        return HostDiskFull(str(results))
    return HostFailure(f"the sweep journal in {results} cannot be used: {message}")
