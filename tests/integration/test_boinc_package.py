"""The packaged wrapper (`vmwu wrap package`: one PyInstaller executable, the job, the
unit, the base files it references, app_info.xml) under the real BOINC client, with a VM
task: the guest counts (examples/boinc/count.sh) while the client checkpoints it at its
checkpoint_period, suspends and resumes it, quits, restarts it from the checkpoint, and
aborts a second job. The wrapper runs as a volunteer's would: no virtualenv, no catalog
(VMWU_HOME is the client's project directory), the base seeded from the shipped files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boinc.client import App, BoincClient
from tests.boinc.server import Job, ProjectServer
from tests.budgets import slow_fixture
from tests.conftest import ROOT, run_vmwu
from tests.integration.conftest import Vmwu

COUNT = (ROOT / "examples" / "boinc" / "count.sh").read_text()
STEPS = 40


PACKAGE = 1200  # seconds for `vmwu wrap package` (PyInstaller)


@slow_fixture(PACKAGE + 60, scope="function")
def package(vmwu: Vmwu) -> Path:
    """A unit counting to its first parameter, a job running it, and the package."""
    vmwu.pack('/app/count.sh "$@"', name="counter", files={"count.sh": COUNT})
    job = vmwu.tmp / "job.xml"
    job.write_text(
        "<job_desc><task><virtualmachine>counter.ova</virtualmachine>"
        f"<command_line>{STEPS}</command_line>"
        "<copy_file_from_VM>steps.log</copy_file_from_VM></task></job_desc>\n"
    )
    out = vmwu.tmp / "package"
    result = run_vmwu("wrap", "package", job, "-o", out, env=vmwu.env, timeout=PACKAGE)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def server() -> Iterator[ProjectServer]:
    with ProjectServer() as srv:
        yield srv


def wrapper_status(client: BoincClient) -> dict[str, Any]:
    try:
        return json.loads((client.slot() / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def step(status: dict[str, Any]) -> int:
    m = re.match(r"step (\d+)", (status.get("task") or {}).get("message") or "")
    return int(m.group(1)) if m else 0


def stderr_txt(client: BoincClient) -> str:
    try:
        return (client.slot() / "stderr.txt").read_text()
    except FileNotFoundError:
        return ""


def qemu_processes(under: Path) -> list[str]:
    """Command lines of live processes that mention ``under`` (QEMU's do: its disks)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmdline and str(under) in cmdline:
            found.append(cmdline)
    return found


def test_packaged_wrapper_runs_a_vm_task_under_the_client(
    tmp_path: Path, package: Path, server: ProjectServer
) -> None:
    manifest = json.loads((package / "package.json").read_text())
    names = [f["name"] for f in manifest["files"]]
    assert names[:3] == ["vmwu-wrap_100_x86_64-pc-linux-gnu", "job.xml", "counter.ova"]
    assert any(n.startswith("vmwu-base-") for n in names), "the tiny base's files"

    # Outside a client the executable is `vmwu wrap`; what it starts sees the host's
    # LD_LIBRARY_PATH, not the directory PyInstaller unpacked its libraries into.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "job.xml").write_text(
        "<job_desc><task><application>sh</application>"
        "<command_line>-c 'env > env.txt'</command_line></task></job_desc>"
    )
    exe = package / names[0]
    env = {**os.environ, "LD_LIBRARY_PATH": "/opt/host-libs"}
    done = subprocess.run([exe, "job.xml", "-q"], cwd=alone, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    child_env = (alone / "env.txt").read_text()
    assert "LD_LIBRARY_PATH=/opt/host-libs\n" in child_env
    assert "LD_LIBRARY_PATH_ORIG" not in child_env

    job = server.add_job(Job("vm1", "vmwu", outputs=("steps.log",)))
    client = BoincClient(
        tmp_path / "data", server, App.from_package("vmwu", package), checkpoint_period=3
    )
    try:
        client.start(exit_when_idle=False)

        def progress() -> dict[str, str] | None:
            t = client.get_task(job.result)
            return t if t and float(t.get("fraction done", 0)) > 0.1 else None

        task = client.wait_for(progress, "the guest's progress in boinccmd --get_tasks")
        assert float(task["current CPU time"]) > 0, "QEMU's CPU time"
        client.wait_log(r"\[checkpoint\] result vm1_0 checkpointed")
        task = client.get_task(job.result)
        assert task is not None
        # the CPU time when the checkpoint was written, QEMU's included
        assert 0 < float(task["CPU time at last checkpoint"]) <= float(task["current CPU time"]), (
            task
        )
        log = stderr_txt(client)
        assert "vmwu wrap under BOINC client 7.20.5: result vm1_0, checkpoint every 3 s" in log
        assert "copied into the node cache" in log

        client.task("suspend", job.result)
        client.wait_for(lambda: "suspended (BOINC client)" in stderr_txt(client), "suspend")

        def rewrites(n: int) -> dict[str, Any]:
            first = wrapper_status(client).get("updated", 0)
            return client.wait_for(  # type: ignore[no-any-return]
                lambda: (s := wrapper_status(client)).get("updated", 0) >= first + n and s,
                f"{n} more status rewrites",
            )

        held = step(rewrites(2))  # what the guest said before the pause has been read
        assert step(rewrites(3)) == held, "no guest step while suspended (1 step a second)"
        client.task("resume", job.result)
        client.wait_for(lambda: "resumed (BOINC client)" in stderr_txt(client), "resume")
        client.wait_for(lambda: step(wrapper_status(client)) > held, "a step after resume")

        at_quit = step(wrapper_status(client))
        assert client.quit() == 0
        assert "stopped (the client quit)" in stderr_txt(client)
        assert "the BOINC client starts the task again when it next runs it" in stderr_txt(client)
        assert not qemu_processes(client.data), "no QEMU outlives the wrapper"

        abort_job = server.add_job(Job("vm2", "vmwu", outputs=("steps.log",)))
        client.start()
        client.wait_for(
            lambda: "restored VM task 1 from checkpoint" in stderr_txt(client), "the restore"
        )
        report = server.wait_report(job.result, timeout=600)
        assert report.exit_status == 0, report.stderr_out
        counted = server.output(job, "steps.log").decode().split("\n")
        assert counted[:-1] == [f"step {i}" for i in range(1, STEPS + 1)], "each step once"
        restored = re.search(r"guest at [\d.]+%: step (\d+) of", report.stderr_out)
        assert restored and int(restored.group(1)) >= at_quit - 3, report.stderr_out
        assert report.final_cpu_time is not None and report.final_cpu_time > 1
        again = re.search(
            r"restarted at the client's last checkpoint: ([\d.]+) s CPU", report.stderr_out
        )
        assert again and 0 < float(again.group(1)) < report.final_cpu_time, report.stderr_out

        client.wait_for(
            lambda: step(wrapper_status(client)) >= 2 and "vm2_0" in stderr_txt(client),
            "the second job's guest to count",
        )
        client.task("abort", abort_job.result)
        aborted = server.wait_report(abort_job.result, timeout=300)
        assert aborted.exit_status == 203, aborted.raw  # EXIT_ABORTED_VIA_GUI
        assert "aborting (BOINC client)" in aborted.stderr_out
        assert client.wait_exit(120) == 0
        assert not qemu_processes(client.data), "no QEMU left after the abort"
    finally:
        client.kill()
