"""The sweep's summary: ``results.csv`` and ``results.json`` (one row per job: parameters,
state, exit code, attempts, node, timings), rewritten atomically; and the text of
``vmwu sweep status``."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from vmwu.hostfs import write_atomic, write_json_atomic
from vmwu.sweep.journal import JobRow, Journal, State
from vmwu.sweep.model import format_value

COLUMNS = (
    "job",
    "state",
    "exit_code",
    "attempts",
    "node",
    "started",
    "finished",
    "seconds",
    "error",
)


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else None


def row_dict(row: JobRow, results: Path) -> dict[str, Any]:
    seconds = (
        round(row.finished_at - row.started_at, 3) if row.finished_at and row.started_at else None
    )
    result = results / "jobs" / row.id
    return {
        "job": row.id,
        "params": row.params,
        "state": str(row.state),
        "exit_code": row.exit_code,
        "attempts": row.attempts,
        "node": row.node,
        "submitted": _iso(row.submitted_at),
        "started": _iso(row.started_at),
        "finished": _iso(row.finished_at),
        "seconds": seconds,
        "error": row.error,
        "result": f"jobs/{row.id}" if result.is_dir() else None,
    }


def write_summary(journal: Journal, results: Path, parameters: list[str]) -> None:
    rows = [row_dict(r, results) for r in journal.jobs()]
    counts = {str(k): v for k, v in journal.counts().items()}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["job", *parameters, *COLUMNS[1:]])
    for r in rows:
        params = [format_value(r["params"][p]) if p in r["params"] else "" for p in parameters]
        writer.writerow([r["job"], *params, *(_cell(r[c]) for c in COLUMNS[1:])])
    # both raise HostDiskFull on a full disk, HostFailure on any other write error
    write_json_atomic(results / "results.json", {"counts": counts, "jobs": rows})
    write_atomic(results / "results.csv", buf.getvalue().encode("utf-8"))


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def status_text(journal: Journal, results: Path, *, verbose: bool = False) -> str:
    meta = journal.meta()
    counts = journal.counts()
    total = sum(counts.values())
    active = counts[State.SUBMITTING] + counts[State.SUBMITTED]
    lines = [
        f"sweep   {results}",
        f"plan    {meta.get('plan_source')}  (executor {meta.get('executor')})",
        f"jobs    {total}: {counts[State.DONE]} done, {counts[State.FAILED]} failed, "
        f"{counts[State.CANCELLED]} cancelled, {counts[State.RUNNING]} running, "
        f"{active} queued, {counts[State.PENDING]} pending",
    ]
    for row in journal.jobs():
        if verbose or row.state in (State.FAILED, State.CANCELLED, State.RUNNING):
            params = " ".join(f"{k}={format_value(v)}" for k, v in row.params.items())
            extra = f"exit {row.exit_code}" if row.exit_code is not None else ""
            if row.node:
                extra += f" on {row.node}"
            if row.error and row.state is not State.DONE:
                extra += f": {row.error}"
            lines.append(f"  {row.id}  {row.state:<9} {params}  {extra.strip()}".rstrip())
    return "\n".join(lines)
