"""Control socket and signals, status arithmetic, the wrapper state file (no QEMU)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.waits import wait_for
from vmwu.errors import BadInput
from vmwu.wrapper.control import Action, Control, Request, send
from vmwu.wrapper.state import WrapperState
from vmwu.wrapper.status import StatusFile, fraction_done


def test_fraction_done_weights_tasks() -> None:
    assert fraction_done([1, 8, 1], 0, None) == 0.0
    assert fraction_done([1, 8, 1], 1, 0.5) == 0.5
    assert fraction_done([1, 8, 1], 2, None) == 0.9
    assert fraction_done([1, 8, 1], 3, None) == 1.0
    assert fraction_done([0, 0], 1, 0.5) == 0.75  # all-zero weights: tasks count the same
    assert fraction_done([1], 0, 7.0) == 1.0
    assert fraction_done([], 0, None) == 0.0


def test_status_file_is_replaced_whole(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "s.json")
    status.write({"state": "running"})
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["state"] == "running" and data["format"] == 1 and "updated" in data


def test_wrapper_state_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "wrapper_checkpoint.json"
    assert WrapperState.load(path, "abc").task_index == 0
    state = WrapperState(job_sha256="abc", task_index=2, cpu_time=12.5)
    state.save(path)
    again = WrapperState.load(path, "abc")
    assert (again.task_index, again.cpu_time) == (2, 12.5)
    with pytest.raises(BadInput, match="the job file changed"):
        WrapperState.load(path, "other")
    path.write_text("{not json")
    with pytest.raises(BadInput, match="is unreadable"):
        WrapperState.load(path, "abc")


def test_socket_requests_and_replies(tmp_path: Path) -> None:
    # a slot path too long for a unix socket's 107 bytes
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "ctl.sock"
    control = Control(sock)
    replies: dict[str, object] = {}

    def client(action: Action) -> None:
        replies[action.value] = send(sock, action, timeout=10)

    try:
        thread = threading.Thread(target=client, args=(Action.SUSPEND,))
        thread.start()
        requests: list[Request] = []

        def received() -> list[Request]:
            control.wait(0.1)  # wakes up as a request comes in
            requests.extend(control.requests())
            return requests

        wait_for(received, 10, "the request on the socket", interval=0)
        assert [r.action for r in requests] == [Action.SUSPEND]
        assert requests[0].source == "socket"
        requests[0].reply({"ok": True, "state": "suspended"})
        thread.join(10)
        assert replies["suspend"] == {"ok": True, "state": "suspended"}
    finally:
        control.close()
    assert not sock.exists()
    with pytest.raises(BadInput, match="no vmwu wrap is listening"):
        send(sock, Action.STATUS, timeout=2)


def test_signals_become_requests(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    control = Control(tmp_path / "ctl.sock")
    control.install_signals()
    try:
        for sig in (signal.SIGUSR1, signal.SIGTSTP, signal.SIGCONT, signal.SIGTERM):
            os.kill(os.getpid(), sig)
        control.wait(0.5)
        got = [(r.action, r.source) for r in control.requests()]
    finally:
        control.close()
    assert got == [
        (Action.SUSPEND, "SIGUSR1"),
        (Action.SUSPEND, "SIGTSTP"),
        (Action.RESUME, "SIGCONT"),
        (Action.QUIT, "SIGTERM"),
    ]
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back


def test_docs_wrapper_md_describes_every_option_and_control() -> None:
    from tests.conftest import ROOT
    from vmwu.wrapper.cli import wrap_parser

    text = (ROOT / "docs" / "wrapper.md").read_text()
    for action in wrap_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in text, flag
    for action in Action:
        assert action.value in text
    for name in ("SIGTSTP", "SIGUSR1", "SIGCONT", "SIGTERM", "SIGKILL", "248"):
        assert name in text
