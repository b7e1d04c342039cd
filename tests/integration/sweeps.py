"""Helpers for the sweep integration tests: a tiny unit whose app sleeps and exits as told,
plans that run it, and ways to watch and disturb a running sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Vmwu
from vmwu import procstat as procs

SLEEPER = """#!/bin/sh
# args: SECONDS CODE LABEL
echo "job ${3:-} slept ${1:-0}" > result.txt
sleep "${1:-0}"
exit "${2:-0}"
"""


def sleeper_unit(vmwu: Vmwu) -> Path:
    return vmwu.pack('/app/sleep.sh "$@"', name="sleeper", files={"sleep.sh": SLEEPER})


def sleeper_plan(
    directory: Path, unit: Path, jobs: int, seconds: str = "0", code: str = "0"
) -> Path:
    """A plan of ``jobs`` jobs, each ``vmwu run`` of the sleeper unit. ``seconds`` is shell
    text (may use $VMWU_JOB_ATTEMPT)."""
    plan = directory / "sleep.plan"
    plan.write_text(
        f'parameter unit text default "{unit}";\n'
        f"parameter n integer range from 1 to {jobs} step 1;\n"
        "task main\n"
        "    copy ${unit} node:..\n"
        f"    node:execute vmwu run ../{unit.name} --quiet --output-directory out -- "
        f'"{seconds}" {code} ${{n}}\n'
        "endtask\n"
    )
    return plan


def start_sweep(
    vmwu: Vmwu, *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmwu", "sweep", *map(str, args), "-q"],
        cwd=vmwu.tmp,
        env={**os.environ, **vmwu.env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def markers(results: Path) -> list[dict[str, Any]]:
    """The run markers of jobs that are running now (pid, host, attempt)."""
    out = []
    for path in (results / "run").glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return out


def jobs_running(results: Path, n: int) -> list[dict[str, Any]] | None:
    """The run markers once exactly ``n`` jobs are running."""
    found = markers(results)
    return found if len(found) == n else None


def running_app(marker: dict[str, Any]) -> int | None:
    """The pid of the job's QEMU once its guest runs the application (vmwu run may start
    more than one QEMU: to save the node's booted guest, or to boot cold)."""
    qemu = qemu_of(marker)
    return qemu if qemu is not None and app_started(qemu) else None


def qemu_of(marker: dict[str, Any]) -> int | None:
    """The pid of the QEMU under a running job's exec-job, once it is there."""
    for pid in procs.descendants(int(marker["pid"])):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system"):
            return pid
    return None


def app_started(qemu: int) -> bool:
    """Has the guest of this QEMU started the application (the agent's "started" event)?
    Before that, vmwu run may recover from a dead QEMU by itself (cold boot)."""
    events = guest_events(qemu)
    try:
        return events is not None and '"started"' in events.read_text()
    except OSError:
        return False


def guest_events(qemu: int) -> Path | None:
    """The file where this QEMU writes what its guest's agent says (events.jsonl)."""
    try:
        argv = Path(f"/proc/{qemu}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    for arg in argv:
        if "events.jsonl" in arg:
            return Path(arg.split("path=", 1)[-1].split(",")[0])
    return None


def summary(results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / "results.json").read_text())
    return data


def assert_whole_results(results: Path, jobs: int) -> None:
    """Every job ended exactly once and its result is complete; nothing half-written."""
    names = sorted(os.listdir(results / "jobs"))
    assert len(names) == jobs, names
    assert all(n.startswith("j-") for n in names), names  # no .tmp leftovers
    for name in names:
        info = json.loads((results / "jobs" / name / "job.json").read_text())
        assert info["job"] == name and info["final"]
        assert (results / "jobs" / name / "status.json").is_file()
        assert (results / "jobs" / name / "console.log").is_file()
