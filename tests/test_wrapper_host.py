"""`vmwu wrap` with host tasks only: the real CLI in a subprocess, no QEMU.

Nothing here asserts on timing: waits poll the status file with generous deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_vmwu
from tests.processes import cmdline, state, tree
from tests.waits import wait_for

PY = sys.executable


def wrap(slot: Path, *args: str | os.PathLike[str], timeout: float = 120) -> Any:
    return run_vmwu("wrap", "--slot-dir", slot, *args, cwd=slot, timeout=timeout)


def start(slot: Path, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    argv = [PY, "-m", "vmwu", "wrap", "--slot-dir", os.fspath(slot), *map(os.fspath, args)]
    return subprocess.Popen(
        argv, cwd=slot, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def status(slot: Path) -> dict[str, Any]:
    try:
        return json.loads((slot / "wrapper_status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def task_of(wrapper: int, script: Path) -> int | None:
    """The pid of the task ``python SCRIPT ...`` below the wrapper, once it runs (not the
    process guard above it, whose command line holds the task's too)."""
    want = [os.fsencode(script)]
    return next((p for p in tree(wrapper) if cmdline(p).split(b"\0")[1:2] == want), None)


def ctl(slot: Path, action: str) -> dict[str, Any]:
    result = run_vmwu("wrap", "ctl", action, "--slot-dir", slot, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    project, slot = tmp_path / "project", tmp_path / "slot"
    project.mkdir()
    slot.mkdir()
    return project, slot


def job(project: Path, body: str) -> Path:
    path = project / "job.xml"
    path.write_text(f"<job_desc>\n{textwrap.dedent(body)}\n</job_desc>\n")
    return path


def test_a_host_job_runs_unzip_daemon_and_tasks_in_order(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    with zipfile.ZipFile(project / "in.zip", "w") as z:
        z.writestr("data/input.txt", "42\n")
    (slot / "sub").mkdir()
    (slot / "question.txt").write_text("what is the answer\n")
    path = job(
        project,
        f"""
        <unzip_task>
          <application>{PY}</application>
          <command_line>-m zipfile -e $PROJECT_DIR/in.zip .</command_line>
        </unzip_task>
        <task>
          <application>sh</application>
          <command_line>-c 'while :; do echo $$ > daemon.pid; sleep 0.1; done'</command_line>
          <daemon>1</daemon>
        </task>
        <task>
          <application>sh</application>
          <command_line>
            -c 'read q; echo "$q: $(cat ../data/input.txt) $A $NT $0"' $NTHREADS
          </command_line>
          <setenv>A=from setenv</setenv>
          <setenv>NT=$NTHREADS</setenv>
          <exec_dir>sub</exec_dir>
          <stdin_filename>question.txt</stdin_filename>
          <stdout_filename>answer.txt</stdout_filename>
          <weight>2</weight>
        </task>
        <task>
          <application>sh</application>
          <command_line>-c 'echo "$@" > args.txt; echo oops >&amp;2' sh first</command_line>
          <append_cmdline_args>1</append_cmdline_args>
          <stderr_filename>err.txt</stderr_filename>
        </task>
        """,
    )
    result = wrap(slot, path, "--nthreads", "3", "--", "extra one", "two")
    assert result.returncode == 0, result.stderr
    assert (slot / "answer.txt").read_text() == "what is the answer: 42 from setenv 3 3\n"
    assert (slot / "args.txt").read_text() == "first extra one two\n"
    assert (slot / "err.txt").read_text() == "oops\n"
    daemon = int((slot / "daemon.pid").read_text())
    assert not Path(f"/proc/{daemon}").exists() or "Z" in Path(f"/proc/{daemon}/stat").read_text()
    st = status(slot)
    assert st["state"] == "done" and st["exit_code"] == 0 and st["fraction_done"] == 1.0
    assert st["tasks"] == 2 and st["task_index"] == 2
    state = json.loads((slot / "wrapper_checkpoint.json").read_text())
    assert state["finished"] and state["unzipped"]
    again = wrap(slot, path)
    assert again.returncode == 0
    assert "already ended" in again.stderr


def test_a_failing_task_ends_the_job_with_its_exit_code(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    path = job(
        project,
        """
        <task><application>sh</application><command_line>-c 'echo one >> runs'</command_line>
        </task>
        <task><application>sh</application><command_line>-c 'exit 7'</command_line></task>
        <task><application>sh</application><command_line>-c 'touch never'</command_line></task>
        """,
    )
    result = wrap(slot, path)
    assert result.returncode == 7
    assert "failed (exit 7)" in result.stderr
    assert not (slot / "never").exists()
    st = status(slot)
    assert st["state"] == "failed" and st["exit_code"] == 7
    assert "exited with 7" in st["message"]
    assert wrap(slot, path).returncode == 7  # it stays failed ...
    assert wrap(slot, path, "--fresh").returncode == 7  # ... until run afresh
    assert (slot / "runs").read_text() == "one\none\n"


def test_time_limit(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    path = job(
        project,
        "<task><application>sleep</application><command_line>60</command_line>"
        "<time_limit>1</time_limit></task>",
    )
    result = wrap(slot, path)
    assert result.returncode == 244
    assert "ran longer than its time_limit of 1 s" in status(slot)["message"]


COUNTER = """
import os, sys, time
n = int(open("ck").read()) if os.path.exists("ck") else 0
while n < int(sys.argv[1]):
    t = time.process_time() + 0.03
    while time.process_time() < t:  # burn CPU: the wrapper must count it
        pass
    n += 1
    open("ticks", "a").write(f"{n}\\n")
    open("fd.tmp", "w").write(str(n / int(sys.argv[1])))
    os.replace("fd.tmp", "fd")
    open("ck.tmp", "w").write(str(n))
    os.replace("ck.tmp", "ck")
"""


def test_suspend_resume_quit_and_restart_a_host_task(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    (project / "counter.py").write_text(COUNTER)
    path = job(
        project,
        f"""
        <task>
          <application>{PY}</application>
          <command_line>$PROJECT_DIR/counter.py 150</command_line>
          <checkpoint_filename>ck</checkpoint_filename>
          <fraction_done_filename>fd</fraction_done_filename>
        </task>
        <task><application>true</application><weight>3</weight></task>
        """,
    )
    proc = start(slot, path)
    try:
        wait_for(lambda: (status(slot).get("task") or {}).get("fraction"), 60, "a fraction done")
        counter = wait_for(lambda: task_of(proc.pid, project / "counter.py"), 60, "the task")
        assert ctl(slot, "suspend")["state"] == "suspended"
        wait_for(lambda: state(counter) == "T", 60, f"the task ({counter}) to be stopped")
        ticks = (slot / "ticks").read_text()
        st = ctl(slot, "status")
        assert st["state"] == "suspended" and 0 < st["fraction_done"] < 0.25
        assert (slot / "ticks").read_text() == ticks  # stopped: not one more tick
        assert ctl(slot, "resume")["state"] == "running"
        wait_for(lambda: (slot / "ticks").read_text() != ticks, 60, "a tick after resume")
        refused = run_vmwu("wrap", "ctl", "checkpoint", "--slot-dir", slot, timeout=60)
        assert refused.returncode == 241 and "checkpoints itself" in refused.stderr
        wait_for(lambda: status(slot).get("last_checkpoint"), 60, "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 248, err
    st = status(slot)
    assert st["state"] == "temporary-exit"
    cpu_at_quit = st["cpu_time"]
    assert cpu_at_quit > 0
    done_before = int((slot / "ck").read_text())
    result = wrap(slot, path, timeout=300)
    assert result.returncode == 0, result.stderr
    ticks = [int(t) for t in (slot / "ticks").read_text().split()]
    assert ticks == list(range(1, 151))  # resumed from its own checkpoint, none twice
    assert done_before > 0
    final = status(slot)
    assert final["cpu_time"] > cpu_at_quit and final["starts"] == 2


def test_bad_inputs_get_one_line_errors(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    cases = [
        (wrap(slot, project / "missing.xml"), "does not exist"),
        (wrap(slot), "job.xml does not exist"),
        (wrap(slot, "--checkpoint-interval", "0"), "--checkpoint-interval must be positive"),
        (wrap(slot, "--bogus"), "unrecognized arguments: --bogus"),
        (run_vmwu("wrap", "--slot-dir", project / "nowhere"), "slot directory"),
        (run_vmwu("wrap", "ctl", "status", "--slot-dir", slot), "no vmwu wrap is listening"),
        (run_vmwu("wrap", "ctl", "dance", "--slot-dir", slot), "invalid choice: 'dance'"),
    ]
    bad = job(project, "<task><application>no-such-program-x</application></task>")
    cases.append((wrap(slot, bad), "neither in"))
    unknown = job(project, "<task>\n<application>sh</application><wieght>1</wieght></task>")
    cases.append((wrap(slot, unknown), "job.xml:3: unknown tag <wieght> in <task>"))
    for result, expected in cases:
        assert result.returncode == 241, (expected, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vmwu: error:"), result.stderr
        assert expected in lines[0]
        assert "Traceback" not in result.stderr


def test_one_wrapper_per_slot_and_the_job_must_not_change(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    path = job(
        project, "<task><application>sleep</application><command_line>30</command_line></task>"
    )
    proc = start(slot, path)
    try:
        wait_for(lambda: status(slot).get("state") == "running", 60, "the wrapper running")
        second = wrap(slot, path)
        assert second.returncode == 241
        assert f"another vmwu wrap (pid {proc.pid}) is running in {slot}" in second.stderr
        assert ctl(slot, "quit")["state"] == "temporary-exit"
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 248
    job(project, "<task><application>sleep</application><command_line>1</command_line></task>")
    changed = wrap(slot, path)
    assert changed.returncode == 241 and "the job file changed" in changed.stderr
    assert wrap(slot, path, "--fresh").returncode == 0


def test_abort_drops_the_job(dirs: tuple[Path, Path]) -> None:
    project, slot = dirs
    path = job(
        project, "<task><application>sleep</application><command_line>30</command_line></task>"
    )
    proc = start(slot, path)
    try:
        wait_for(lambda: status(slot).get("state") == "running", 60, "the wrapper running")
        assert ctl(slot, "abort")["state"] == "aborted"
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 248
    assert status(slot)["state"] == "aborted"
    assert "aborted" in wrap(slot, path).stderr
