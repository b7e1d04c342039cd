"""tools.spawn and vmwu's process guard with real processes (no QEMU): nothing a vmwu
process starts outlives it, whatever kills it.

A holder process (a Python that uses vmwu.tools as vmwu does) starts a tree, the test
kills the holder with SIGKILL and then finds no process left: neither those recorded
below the holder before the kill nor any carrying the test's marker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.processes import MARK, assert_all_gone, carrying, comm, state, tree
from tests.waits import wait_for
from vmwu import guard, tools
from vmwu.errors import HostFailure, ToolNotFound

# A tree that tries to get away: a background job, a new session, a process that ignores
# SIGTERM, and an orphan (its parent exits at once, so it is re-parented).
TREE = """
sleep 1001 &
setsid sh -c 'sleep 1002 & exec sleep 1003' &
sh -c 'trap "" TERM; sleep 1004 & wait' &
sh -c 'sleep 1005 &'
wait
"""
SLEEPERS = 5

HOLDER = """
import json, os, signal, sys, threading, time
from vmwu import tools

mode, command = sys.argv[1], json.loads(sys.argv[2])
if mode == "tree":
    tools.spawn(command, tree=True).wait()
elif mode == "tree-stopped":  # suspended as the wrapper suspends a host task, and more
    proc = tools.spawn(command, tree=True)
    while not os.path.exists(sys.argv[3]):  # the test says when the tree is complete
        time.sleep(0.05)
    proc.signal(signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGSTOP)  # the guard too, as a batch system's suspend does
    with open(sys.argv[3] + ".stopped", "w") as fh:
        fh.write(f"{proc.pid} {proc.leader}")
    proc.wait()
elif mode == "run-tree":
    tools.run(command, tree=True)
elif mode == "direct":
    tools.spawn(command).wait()
elif mode == "run":
    tools.run(command)
elif mode == "thread":  # started from a thread that ends long before the tree
    started = []
    worker = threading.Thread(target=lambda: started.append(tools.spawn(command, tree=True)))
    worker.start()
    worker.join()
    started[0].wait()
"""


def holder(tmp_path: Path, mode: str, command: list[str], *extra: str) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, mode, json.dumps(command), *extra],
        env={**os.environ, MARK: str(tmp_path), "PYTHONPATH": str(root)},
        cwd=tmp_path,
    )


def sleepers(mark: str) -> list[int]:
    return [p for p in carrying(mark) if comm(p) == "sleep"]


def kill_and_check(proc: subprocess.Popen[bytes], mark: str) -> None:
    snapshot = tree(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert_all_gone(mark, snapshot)


@pytest.mark.parametrize("mode", ["tree", "run-tree", "thread"])
def test_a_tree_dies_with_the_process_that_started_it(
    tmp_path: Path, process_mark: str, mode: str
) -> None:
    proc = holder(tmp_path, mode, ["sh", "-c", TREE])
    mark = process_mark
    wait_for(lambda: len(sleepers(mark)) == SLEEPERS, 60, "the whole tree")
    kill_and_check(proc, mark)


def test_a_stopped_tree_and_its_stopped_guard_die_too(tmp_path: Path, process_mark: str) -> None:
    go = tmp_path / "go"
    proc = holder(tmp_path, "tree-stopped", ["sh", "-c", TREE], str(go))
    mark = process_mark
    wait_for(lambda: len(sleepers(mark)) == SLEEPERS, 60, "the whole tree")
    go.touch()
    stopped = tmp_path / "go.stopped"
    wait_for(lambda: stopped.exists() and stopped.read_text(), 60, "the tree stopped")
    guard_pid, leader = map(int, stopped.read_text().split())
    group = [p for p in tree(proc.pid) if os.getpgid(p) == leader]
    assert len(group) >= 3  # sh, and the sleepers that did not leave its process group
    wait_for(lambda: all(state(p) == "T" for p in [guard_pid, *group]), 60, "stopped")
    kill_and_check(proc, mark)


@pytest.mark.parametrize("mode", ["direct", "run"])
def test_a_direct_child_dies_with_the_process_that_started_it(
    tmp_path: Path, process_mark: str, mode: str
) -> None:
    proc = holder(tmp_path, mode, ["sleep", "1006"])
    mark = process_mark
    wait_for(lambda: len(sleepers(mark)) == 1, 60, "sleep")
    kill_and_check(proc, mark)


def test_what_a_command_leaves_running_ends_with_it(tmp_path: Path, process_mark: str) -> None:
    mark = process_mark
    ready = tmp_path / "ready"
    script = f"sleep 1001 & setsid sleep 1002 & sh -c 'sleep 1003 &'; touch {ready}; exit 4"
    proc = tools.spawn(["sh", "-c", script], env={MARK: mark}, tree=True)
    assert proc.wait() == 4
    assert ready.exists()
    assert not carrying(mark)  # the guard ended them before it exited


@pytest.mark.parametrize("tree_", [False, True])
def test_exit_codes_and_signals_come_through(tree_: bool) -> None:
    assert tools.spawn(["sh", "-c", "exit 7"], tree=tree_).wait() == 7
    assert tools.spawn(["sh", "-c", "kill -TERM $$"], tree=tree_).wait() == -signal.SIGTERM
    assert tools.spawn(["sh", "-c", "kill -KILL $$"], tree=tree_).wait() == -signal.SIGKILL
    result = tools.run(["sh", "-c", "cat; echo err >&2; exit 3"], input=b"in", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"in", b"err\n")
    result = tools.run(["sh", "-c", "cat"], input=b"x" * 300_000, tree=tree_)
    assert result.stdout == b"x" * 300_000


def test_the_guard_outlasts_signals_meant_for_the_command(
    tmp_path: Path, process_mark: str
) -> None:
    """SIGTERM to the guard does not end it (it stays to end the tree); ``signal`` reaches
    the command's process group, never the guard; the exit code is the command's."""
    ready = tmp_path / "ready"
    script = f"trap 'exit 3' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc = tools.spawn(["sh", "-c", script], env={MARK: process_mark}, tree=True)
    wait_for(ready.exists, 60, "the script to start")
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=0.5) is None
    proc.terminate()
    assert proc.wait(timeout=60) == 3
    assert proc.rusage is not None


def test_a_dropped_or_ended_tree_is_ended_by_its_guard(tmp_path: Path, process_mark: str) -> None:
    mark = process_mark
    proc = tools.spawn(["sh", "-c", TREE], env={MARK: mark}, tree=True)
    wait_for(lambda: len(sleepers(mark)) == SLEEPERS, 60, "the whole tree")
    snapshot = tree(proc.pid)
    assert proc.end() == 1  # the guard's code when vmwu let go
    assert_all_gone(mark, snapshot)
    with tools.spawn(["sh", "-c", TREE], env={MARK: mark}, tree=True) as proc:
        wait_for(lambda: len(sleepers(mark)) == SLEEPERS, 60, "the whole tree")
        snapshot = tree(proc.pid)
    assert_all_gone(mark, snapshot)


def test_a_timeout_ends_the_whole_tree(tmp_path: Path, process_mark: str) -> None:
    mark = process_mark
    with pytest.raises(subprocess.TimeoutExpired):
        tools.run(["sh", "-c", TREE], env={MARK: mark}, tree=True, timeout=1)
    assert not carrying(mark)


@pytest.mark.parametrize("tree_", [False, True])
def test_programs_that_cannot_run(tmp_path: Path, tree_: bool) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    with pytest.raises(ToolNotFound) as err:
        tools.spawn([garbage], tree=tree_)
    assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(ToolNotFound, match="qemu-system-nothing"):
        tools.spawn(["qemu-system-nothing"], tree=tree_)
    with pytest.raises(HostFailure, match="cannot start"):
        tools.spawn(["true"], cwd=tmp_path / "missing", tree=tree_)


def test_a_tree_started_from_a_thread_keeps_running_after_it(process_mark: str) -> None:
    """The guard's lifeline is a pipe of the process, not of the thread that started it;
    a direct child (PR_SET_PDEATHSIG) dies with the thread: documented, and shown here."""
    mark = process_mark
    got: list[tools.Process] = []

    def start() -> None:
        got.append(tools.spawn(["sleep", "1007"], env={MARK: mark}, tree=True))
        got.append(tools.spawn(["sleep", "1008"], env={MARK: mark}))

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    guarded, direct = got
    assert direct.wait(timeout=30) == -signal.SIGKILL
    assert guarded.wait(timeout=0.5) is None  # still running
    guarded.terminate()
    assert guarded.wait(timeout=30) == -signal.SIGTERM


def test_the_frozen_entry_starts_the_guard(
    tmp_path: Path, process_mark: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen vmwu (PyInstaller) starts ``sys.executable --vmwu-process-guard ...``: here
    a stand-in binary whose entry is vmwu's ``__main__`` (or ``vmwu.cli.main``)."""
    root = Path(__file__).resolve().parent.parent
    entries = {
        "main-module": f'exec {sys.executable} -m vmwu "$@"',
        "cli-main": f"exec {sys.executable} -c 'import sys; from vmwu.cli import main; "
        'sys.exit(main())\' "$@"',
    }
    for name, line in entries.items():
        binary = tmp_path / name
        binary.write_text(f"#!/bin/sh\nexport PYTHONPATH={root}\n{line}\n")
        binary.chmod(0o755)
        monkeypatch.setattr(sys, "frozen", True, raising=False)
        monkeypatch.setattr(sys, "executable", str(binary))
        assert tools.guard_command() == [str(binary), guard.FLAG]
        mark = f"{tmp_path}/{name}"
        proc = tools.spawn(["sh", "-c", TREE + "exit 5\n"], env={MARK: mark}, tree=True)
        wait_for(lambda m=mark: len(sleepers(m)) == SLEEPERS, 60, "the whole tree")  # type: ignore[misc]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert guard.FLAG.encode() in cmdline
        for pid in sleepers(mark):
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == 5
        assert not carrying(mark)


def test_the_guard_refuses_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-S", guard.__file__, "3", "--"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "bad arguments" in result.stderr


def test_nothing_goes_around_the_door() -> None:
    """Only vmwu/tools.py (and the guard) start processes; the local sweep executor forks
    its job runners, which are meant to outlive the driver (docs/security-processes.md)."""
    package = Path(guard.__file__).parent
    allowed = {package / "tools.py", package / "guard.py"}
    starts = re.compile(
        r"\bsubprocess\.(run|Popen|call|check_call|check_output|getoutput|getstatusoutput)\b"
        r"|\bos\.(fork|forkpty|exec\w*|spawn\w*|posix_spawn\w*|system|popen)\b"
        r"|create_subprocess_\w+|\bpty\.spawn|\bmultiprocessing\b"
    )
    found = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed:
            continue
        for line in path.read_text().splitlines():
            if starts.search(line.split("#")[0]):
                found.append(f"{path.relative_to(package)}: {line.strip()}")
    assert found == ["sweep/executors/local.py: pid = os.fork()"]


def test_a_frozen_vmwu_hands_the_host_library_path_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmwu.guard import host_library_path

    monkeypatch.setattr(sys, "_MEIPASS", "/slot/_MEI123", raising=False)
    kept = {"LD_LIBRARY_PATH": "/slot/_MEI123:/opt/a", "LD_LIBRARY_PATH_ORIG": "/opt/a"}
    host_library_path(kept)
    assert kept == {"LD_LIBRARY_PATH": "/opt/a"}
    # a guard started by an unpacked vmwu may see the bundle without the original kept
    stripped = {"LD_LIBRARY_PATH": "/slot/_MEI123/:/opt/host-libs"}
    host_library_path(stripped)
    assert stripped == {"LD_LIBRARY_PATH": "/opt/host-libs"}
    only = {"LD_LIBRARY_PATH": "/slot/_MEI123"}
    host_library_path(only)
    assert only == {}
    # the user's own path is never dropped
    users = {"LD_LIBRARY_PATH": "/opt/host-libs"}
    host_library_path(users)
    assert users == {"LD_LIBRARY_PATH": "/opt/host-libs"}
