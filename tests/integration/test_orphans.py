"""No orphans (issue 11): every QEMU and helper vmwu starts dies with the vmwu process
that started it, whatever kills that process. Each test kills a real vmwu with SIGKILL
while its guest (or its tree) runs, then finds no process left: none of those recorded
below it just before the kill, and none carrying the test's marker (tests/processes.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Vmwu
from tests.integration.sweeps import app_started, markers, sleeper_unit
from tests.processes import MARK, assert_all_gone, cmdline, comm, survivors, tree
from tests.waits import wait_for

# A host task that tries to get away: a background job, a new session, a process that
# ignores SIGTERM, an orphan.
ESCAPER = """#!/bin/sh
sleep 1001 &
setsid sh -c 'sleep 1002 & exec sleep 1003' &
sh -c 'trap "" TERM; sleep 1004 & wait' &
sh -c 'sleep 1005 &'
wait
"""


def start(
    vmwu: Vmwu, mark: str, *args: str | os.PathLike[str], **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmwu", *[os.fspath(a) for a in args]],
        env={**os.environ, **vmwu.env, MARK: mark, **env},
        cwd=vmwu.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def qemus_below(pid: int) -> list[int]:
    return [p for p in tree(pid) if comm(p).startswith("qemu-system")]


def running_guest(pid: int) -> int | None:
    """A QEMU below ``pid`` whose guest has started the application."""
    return next((q for q in qemus_below(pid) if app_started(q)), None)


def kill_9(proc: subprocess.Popen[str], mark: str, *, timeout: float = 30.0) -> dict[int, int]:
    """SIGKILL ``proc``; then nothing that was below it, or carries ``mark``, may be left."""
    snapshot = tree(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert_all_gone(mark, snapshot, timeout=timeout)
    return snapshot


def test_kill_9_of_vmwu_run_mid_guest(vmwu: Vmwu, process_mark: str) -> None:
    unit = vmwu.pack("echo started; sleep 600", name="long")
    proc = start(vmwu, process_mark, "run", unit, "--quiet", "--output-directory", "out")
    qemu = wait_for(lambda: running_guest(proc.pid), 180, "the guest's application")
    snapshot = kill_9(proc, process_mark)
    assert qemu in snapshot


def test_kill_9_of_vmwu_run_while_it_saves_the_warm_state(
    cold_vmwu: Vmwu, process_mark: str
) -> None:
    """With an empty node cache, vmwu run first boots a template VM to save (warm.py)."""
    unit = cold_vmwu.pack("true", name="first")
    proc = start(cold_vmwu, process_mark, "run", unit, "--quiet", "--output-directory", "out")

    def saver() -> int | None:
        for qemu in qemus_below(proc.pid):
            argv = Path(f"/proc/{qemu}/cmdline").read_bytes()
            if b"vmwu.warm=1" in argv and b"-incoming" not in argv:
                return qemu
        return None

    qemu = wait_for(saver, 180, "the warm-state saver's QEMU")
    assert qemu in kill_9(proc, process_mark)


def test_kill_9_of_vmwu_wrap_with_a_vm_task_and_a_host_task(vmwu: Vmwu, process_mark: str) -> None:
    project = vmwu.tmp / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "boinc" / "count.sh", project / "count.sh")
    escaper = project / "escaper.sh"
    escaper.write_text(ESCAPER)
    escaper.chmod(0o755)
    job = project / "job.xml"
    job.write_text(
        textwrap.dedent(
            f"""\
            <job_desc>
              <task>
                <application>{escaper}</application>
                <daemon>1</daemon>
              </task>
              <task>
                <virtualmachine>tiny</virtualmachine>
                <application>$PROJECT_DIR/count.sh</application>
                <copy_app_to_VM>1</copy_app_to_VM>
                <command_line>1000</command_line>
                <setenv>STEP_SECONDS=1</setenv>
              </task>
            </job_desc>
            """
        )
    )
    slot = vmwu.tmp / "slot"
    slot.mkdir()
    proc = start(vmwu, process_mark, "wrap", job, "--slot-dir", slot)
    qemu = wait_for(lambda: running_guest(proc.pid), 180, "the VM task's application")
    below = tree(proc.pid)
    assert len([p for p in below if comm(p) == "sleep"]) == 5  # the host task's tree
    assert qemu in kill_9(proc, process_mark)


def test_kill_9_of_a_sweep_runner_whose_step_runs_vmwu_run(vmwu: Vmwu, process_mark: str) -> None:
    """The local executor's runner (`sweep exec-job`, forked by the driver and meant to
    outlive it) runs the plan's step under the guard: sh -c, vmwu run, its QEMU."""
    vmwu.extra_env["VMWU_POOL"] = "off"  # the guest in the step's own process tree
    unit = sleeper_unit(vmwu)
    plan = vmwu.tmp / "one.plan"
    plan.write_text(
        f'parameter unit text default "{unit}";\n'
        "task main\n"
        "    copy ${unit} node:..\n"
        f"    node:execute vmwu run ../{unit.name} --quiet --output-directory out -- 600\n"
        "endtask\n"
    )
    res = vmwu.tmp / "res"
    driver = start(vmwu, process_mark, "sweep", plan, "--results", res, "-q")
    runner = wait_for(lambda: runner_of(res), 60, "the job's runner")
    wait_for(lambda: running_guest(runner), 180, "the job's guest")
    # the driver first: jobs outlive it by design (`sweep resume` finds them)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    below = tree(runner)
    assert running_guest(runner) in below
    snapshot = tree(runner)
    os.kill(runner, signal.SIGKILL)
    assert_all_gone(process_mark, snapshot)


def test_a_vmwu_run_dies_with_its_step_shell(vmwu: Vmwu, process_mark: str) -> None:
    """Killing the plan step's shell (not the runner) ends the `vmwu run` it started, and
    its guest; the job fails with the shell's code and the sweep goes on to the end."""
    vmwu.extra_env["VMWU_POOL"] = "off"  # the guest in the step's own process tree
    unit = sleeper_unit(vmwu)
    plan = vmwu.tmp / "shell.plan"
    plan.write_text(
        f'parameter unit text default "{unit}";\n'
        "task main\n"
        "    copy ${unit} node:..\n"
        f"    node:execute vmwu run ../{unit.name} --quiet --output-directory out -- 600; "
        "echo after\n"
        "endtask\n"
    )
    res = vmwu.tmp / "res"
    driver = start(vmwu, process_mark, "sweep", plan, "--results", res, "-q")
    runner = wait_for(lambda: runner_of(res), 60, "the job's runner")
    qemu = wait_for(lambda: running_guest(runner), 180, "the job's guest")
    shells = [p for p in tree(runner) if comm(p) == "sh"]
    assert len(shells) == 1
    run = [p for p in tree(shells[0]) if p != shells[0] and b"run" in cmdline(p)]
    snapshot = {p: t for p, t in tree(shells[0]).items() if p != shells[0]}
    assert qemu in snapshot and run
    os.kill(shells[0], signal.SIGKILL)
    wait_for(lambda: not survivors(snapshot), 60, "the step's vmwu run and its QEMU to end")
    assert driver.wait(timeout=300) != 0
    assert_all_gone(process_mark, tree(driver.pid))


def runner_of(results: Path) -> int | None:
    """The pid of the (one) running job's runner, from its run marker."""
    found = markers(results)
    return int(found[0]["pid"]) if found else None


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_kill_9_of_a_base_build_while_mmdebstrap_runs(vmwu: Vmwu, process_mark: str) -> None:
    """`vmwu base build debian` runs mmdebstrap (a tree: user namespaces, apt, dpkg) under
    the guard: all of it ends (mmdebstrap gets 30 s to clean up after SIGTERM)."""
    home = vmwu.tmp / "home"
    proc = start(
        vmwu,
        process_mark,
        "base",
        "build",
        "debian",
        "--name",
        "orphans",
        VMWU_HOME=str(home),
        TMPDIR=str(vmwu.tmp),
    )

    def bootstrapping() -> bool:
        below = tree(proc.pid)
        real = [p for p in below if b"--format=tar" in cmdline(p)]
        return len(real) >= 3 and len(below) >= 6  # the guard, mmdebstrap and its workers

    wait_for(bootstrapping, 120, "mmdebstrap's tree")
    kill_9(proc, process_mark, timeout=90)


def test_kill_9_of_a_base_builder_while_its_qemu_runs(
    vmwu: Vmwu, process_mark: str, tiny_home: Path
) -> None:
    """The arm64 Debian build's second stage (vmwu.bases.foreign.run) boots the new root
    disk under QEMU for minutes. Here the same call boots the tiny kernel over a blank
    disk, which panics and waits (panic=0): the builder is killed while QEMU runs."""
    tiny = tiny_home / "data" / "bases" / "tiny"
    kernel, initrd = tiny / "kernel", tiny / "initrd.img"
    assert kernel.is_file() and initrd.is_file(), sorted(tiny.iterdir())
    disk = vmwu.tmp / "root.raw"
    disk.write_bytes(b"\0" * 1024 * 1024)
    console = vmwu.tmp / "console.log"
    builder = textwrap.dedent(
        f"""
        from pathlib import Path
        from vmwu.bases import foreign
        foreign.run(
            Path({str(disk)!r}), arch="x86_64", kernel=Path({str(kernel)!r}),
            initrd=Path({str(initrd)!r}), cmdline="console=ttyS0 panic=0 rdinit=/none",
            work=Path({str(vmwu.tmp)!r}), console=Path({str(console)!r}),
        )
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", builder],
        env={**os.environ, MARK: process_mark},
        cwd=vmwu.tmp,
        stderr=subprocess.PIPE,
        text=True,
    )
    qemu = wait_for(lambda: qemus_below(proc.pid), 60, "the builder's QEMU")[0]
    wait_for(
        lambda: console.exists() and b"Kernel panic" in console.read_bytes(),
        180,
        "the kernel's panic on the console",
    )
    assert qemu in kill_9(proc, process_mark)
