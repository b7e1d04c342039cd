"""``vmwu wrap`` as the BOINC client's app (vmwu/wrapper/boinc/main.py), under the real
client and our project server: a job of host tasks, so no QEMU here."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boinc.client import App, BoincClient
from tests.boinc.jobs import host_job_files, lines
from tests.boinc.server import Job, ProjectServer
from tests.conftest import run_vmwu
from tests.integration.conftest import Vmwu
from tests.waits import wait_for


@pytest.fixture
def server() -> Iterator[ProjectServer]:
    with ProjectServer() as srv:
        yield srv


@pytest.fixture
def boinc_client(tmp_path: Path, server: ProjectServer) -> Iterator[Callable[[App], BoincClient]]:
    clients: list[BoincClient] = []

    def make(app: App) -> BoincClient:
        clients.append(BoincClient(tmp_path / f"data{len(clients)}", server, app))
        return clients[-1]

    yield make
    for client in clients:
        client.kill()


def venv_wrapper(tmp_path: Path) -> Path:
    """The main program: `vmwu wrap` from this virtualenv."""
    script = tmp_path / "vmwu-wrap.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmwu wrap "$@"\n')
    script.chmod(0o755)
    return script


def test_vmwu_wrap_host_job_under_the_client(
    tmp_path: Path, server: ProjectServer, boinc_client: Callable[[App], BoincClient]
) -> None:
    files = {"vmwu-wrap.sh": venv_wrapper(tmp_path), **host_job_files(tmp_path / "app")}
    job = server.add_job(Job("wrap1", "vmwu", inputs={"in.txt": lines(30)}, outputs=("out.txt",)))
    client = boinc_client(App("vmwu", files))
    client.start()
    task = client.wait_for(
        lambda: (t := client.get_task(job.result)) and float(t.get("fraction done", 0)) > 0 and t,
        "a fraction done from vmwu wrap",
    )
    assert float(task["fraction done"]) < 1
    client.wait_log(r"\[checkpoint\] result wrap1_0 checkpointed")
    report = server.wait_report(job.result, timeout=300)
    assert report.exit_status == 0, report.stderr_out
    assert server.output(job, "out.txt") == lines(30).upper()
    assert "vmwu wrap under BOINC client 7.20.5: result wrap1_0" in report.stderr_out
    assert "called boinc_finish(0)" in report.stderr_out
    # boinc_resolve(in.txt) on the command line: the input's physical file
    project = client.project.name
    assert f"work.sh ../../projects/{project}/wrap1_in.txt 0.2" in report.stderr_out
    assert client.wait_exit(120) == 0


def test_missing_tool_postpones_the_task(
    tmp_path: Path,
    server: ProjectServer,
    boinc_client: Callable[[App], BoincClient],
    vmwu: Vmwu,
) -> None:
    """A volunteer's host without QEMU's tools: the task is postponed (a temporary exit
    with the reason as a notice), not failed. The wrapper runs with a PATH holding none of
    them; the unit and the tiny base's files are shipped as `vmwu wrap package` ships them."""
    vmwu.pack("true", name="noop")
    job_xml = vmwu.tmp / "job.xml"
    job_xml.write_text(
        "<job_desc><task><virtualmachine>noop.ova</virtualmachine></task></job_desc>\n"
    )
    script = tmp_path / "wrap-without-tools.sh"
    script.write_text(f'#!/bin/sh\nPATH=/nonexistent exec {sys.executable} -m vmwu wrap "$@"\n')
    script.chmod(0o755)
    pkg = tmp_path / "pkg"
    result = run_vmwu("wrap", "package", job_xml, "-o", pkg, "--executable", script, env=vmwu.env)
    assert result.returncode == 0, result.stderr
    job = server.add_job(Job("notools1", "vmwu"))
    client = boinc_client(App.from_package("vmwu", pkg))
    client.start()
    match = client.wait_log(r"Task notools1_0 postponed for (\d+) seconds: (.*)")
    assert match.group(1) == "86400"
    assert re.match(r"'\S+' was not found on PATH \(apt-get install \S+\)$", match.group(2))
    assert job.result not in server.reports, "no computation error is reported"
    task = client.get_task(job.result)
    assert task is not None and task.get("state") != "compute error"


def test_not_enough_memory_postpones_the_task(
    tmp_path: Path,
    server: ProjectServer,
    boinc_client: Callable[[App], BoincClient],
    vmwu: Vmwu,
) -> None:
    """A unit whose guest needs more memory than the host has available now (16 TiB):
    the client postpones the task for an hour with the reason, keeps it (state
    downloaded, to run again) and reports no error."""
    vmwu.pack("true", name="big", extra={"vmm-memory": str(16 * 1024 * 1024)})
    job_xml = vmwu.tmp / "job.xml"
    job_xml.write_text(
        "<job_desc><task><virtualmachine>big.ova</virtualmachine></task></job_desc>\n"
    )
    pkg = tmp_path / "pkg"
    script = venv_wrapper(tmp_path)
    result = run_vmwu("wrap", "package", job_xml, "-o", pkg, "--executable", script, env=vmwu.env)
    assert result.returncode == 0, result.stderr
    job = server.add_job(Job("bigmem1", "vmwu"))
    client = boinc_client(App.from_package("vmwu", pkg))
    client.start(exit_when_idle=False)
    match = client.wait_log(r"Task bigmem1_0 postponed for (\d+) seconds: (.*)")
    assert match.group(1) == "3600"
    assert re.search(
        r"not enough memory for the VM now: it needs 16777316 MiB \(16777216 MiB for the "
        r"guest, 100 for QEMU\) and \d+ MiB are available \(MemAvailable\) "
        r"\(close programs or run it later\)$",
        match.group(2),
    ), match.group(2)
    task = client.wait_for(
        lambda: (t := client.get_task(job.result)) and t.get("active_task_state") and t,
        "the task in boinccmd --get_tasks",
    )
    assert task["state"] == "downloaded", task  # to run again, not "compute error"
    assert job.result not in server.reports, "no computation error is reported"


def test_wrapper_ends_when_the_client_dies(
    tmp_path: Path, server: ProjectServer, boinc_client: Callable[[App], BoincClient]
) -> None:
    """kill -9 of the client: the wrapper notices (the client's pid is gone), stops its
    task and exits; nothing it started is left."""
    files = {"vmwu-wrap.sh": venv_wrapper(tmp_path), **host_job_files(tmp_path / "app", 0.5)}
    job = server.add_job(
        Job("orphan1", "vmwu", inputs={"in.txt": lines(200)}, outputs=("out.txt",))
    )
    client = boinc_client(App("vmwu", files))
    client.start()
    slot = client.slot()

    def progressing() -> dict[str, Any] | None:
        s = _status(slot)
        return s if s.get("state") == "running" and (s.get("task") or {}).get("fraction") else None

    status = client.wait_for(progressing, "the host task to make progress")
    wrapper = int(status["pid"])
    client.kill()
    wait_for(lambda: not _alive(wrapper), 120, "the wrapper to exit")
    log = (slot / "stderr.txt").read_text()
    assert "BOINC client no longer exists - exiting" in log
    assert "stopped (the client is gone)" in log
    assert not [p for p in _processes() if "work.sh" in p], "the host task is gone too"
    assert job.result not in server.reports


def _status(slot: Path) -> dict[str, Any]:
    try:
        return json.loads((slot / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
    return out
