"""What ``vmwu cache`` prints: the node cache's size, limit and entries (last use, in use),
and what ``trim`` or ``clean`` removed."""

from __future__ import annotations

import os
import time
from typing import Any

from vmwu import paths
from vmwu.cache import INSTANCES, LIMIT_ENV, NodeCache, Removal
from vmwu.sizes import format_size


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def info(cache: NodeCache) -> dict[str, Any]:
    """The cache's state as plain data (``vmwu cache info --json``)."""
    entries = cache.entries()
    listed = [
        {
            "entry": e.group,
            "kind": e.kind,
            "bytes": e.size,
            "last_use": round(e.last_use, 3),
            "in_use": cache.is_in_use(e),
            "paths": [os.fspath(p) for p in e.paths],
        }
        for e in reversed(entries)  # most recently used first
    ]
    instances = [e for e in cache.entries(instances=True) if e.group.startswith(INSTANCES + "/")]
    return {
        "root": os.fspath(cache.root),
        "bytes": sum(e.size for e in entries),
        "limit": cache.limit,
        "limit_env": LIMIT_ENV,
        "entries": listed,
        "instances": [
            {"entry": e.group, "bytes": e.size, "running": cache.is_in_use(e)} for e in instances
        ],
        "tmp_bytes": paths.dir_size(cache.root / "tmp"),
    }


def format_info(report: dict[str, Any]) -> str:
    limit = report["limit"]
    shown = "no limit" if limit is None else f"limit {format_size(limit)}"
    lines = [f"{report['root']}  {format_size(report['bytes'])}  ({shown})"]
    running = sum(1 for i in report["instances"] if i["running"])
    others = sum(i["bytes"] for i in report["instances"]) + report["tmp_bytes"]
    lines.append(
        f"instances: {running} running, {len(report['instances']) - running} stopped; "
        f"{format_size(others)} in instance and temp files (not counted against the limit)"
    )
    if report["entries"]:
        lines.append(f"{'last use':<19}  {'in use':<6}  {'size':>10}  {'kind':<11}  entry")
    for e in report["entries"]:
        name = e["entry"] if len(e["entry"]) <= 40 else e["entry"][:39] + "…"
        lines.append(
            f"{_when(e['last_use']):<19}  {'yes' if e['in_use'] else 'no':<6}  "
            f"{format_size(e['bytes']):>10}  {e['kind']:<11}  {name}"
        )
    return "\n".join(lines)


def removal(action: str, cache: NodeCache, done: Removal) -> str:
    freed = done.size_before - done.size_after
    lines = [
        f"{cache.root}: {action} removed {len(done.removed)} entries ({format_size(freed)}), "
        f"now {format_size(done.size_after)}"
        + ("" if cache.limit is None else f" (limit {format_size(cache.limit)})")
    ]
    if done.in_use:
        names = ", ".join(e.group[:24] for e in done.in_use[:5])
        more = f" and {len(done.in_use) - 5} more" if len(done.in_use) > 5 else ""
        lines.append(f"kept {len(done.in_use)} entries in use: {names}{more}")
    if done.tmp_removed:
        lines.append(f"removed {done.tmp_removed} temp files of fillers that crashed")
    return "\n".join(lines)
