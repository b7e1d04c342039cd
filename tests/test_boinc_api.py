"""The app side of BOINC's client protocol (vmwu/wrapper/boinc/), against a fake client
that speaks the client's side of the same mmap layout and files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.boinc.fake import HEARTBEAT, FakeClient
from vmwu.errors import BadInput
from vmwu.wrapper.boinc.api import (
    EXIT_ABORTED_BY_CLIENT,
    HEARTBEAT_GIVEUP,
    BoincSession,
    ClientMessage,
    SlotBusy,
    parse_control,
    running_under_client,
)
from vmwu.wrapper.boinc.shmem import SIZE, Channel, SharedMemory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FakeClient]:
    fake = FakeClient(tmp_path / "data")
    yield fake
    fake.close()


def session(client: FakeClient, clock: Clock | None = None, alive: bool = True) -> BoincSession:
    lines: list[str] = []
    s = BoincSession(
        client.slot,
        clock=clock or Clock(),
        pid_alive=lambda pid: alive,
        stderr=lines.append,
    )
    s.lines = lines  # type: ignore[attr-defined]
    return s


# -- the channels ----------------------------------------------------------------------------


def test_channel_flag_semantics(client: FakeClient) -> None:
    shm = SharedMemory(client.slot / "boinc_mmap_file")
    assert shm.receive(Channel.HEARTBEAT) is None
    assert client.heartbeat()
    assert not client.heartbeat(), "a full channel takes no second message"
    assert shm.receive(Channel.HEARTBEAT) == HEARTBEAT
    assert shm.receive(Channel.HEARTBEAT) is None, "reading clears the flag"
    assert shm.send(Channel.APP_STATUS, "one")
    assert not shm.send(Channel.APP_STATUS, "two"), "the client has not read 'one' yet"
    assert client.receive(Channel.APP_STATUS) == "one"
    assert shm.send(Channel.APP_STATUS, "x" * 5000)
    assert client.receive(Channel.APP_STATUS) == "x" * 1022, "cut to the channel, NUL kept"
    # The channels are independent 1024-byte slices of the 8192-byte file.
    assert shm.send(Channel.TRICKLE_UP, "up")
    assert client.map[6 * 1024] == 1 and client.map[6 * 1024 + 1 : 6 * 1024 + 3] == b"up"
    assert not client.pending(Channel.APP_STATUS)
    shm.close()


def test_short_mmap_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "boinc_mmap_file"
    path.write_bytes(b"\0" * (SIZE - 1))
    with pytest.raises(BadInput, match="holds 8191 bytes"):
        SharedMemory(path)


def test_running_under_client(client: FakeClient, tmp_path: Path) -> None:
    assert running_under_client(client.slot)
    assert not running_under_client(tmp_path)


# -- process control and the heartbeat ---------------------------------------------------------


def test_process_control_messages_are_typed(client: FakeClient) -> None:
    s = session(client)
    assert s.poll() == []
    client.control("suspend")
    assert s.poll() == [ClientMessage.SUSPEND]
    assert s.state.suspended
    client.control("resume")
    assert s.poll() == [ClientMessage.RESUME]
    assert not s.state.suspended
    client.control("quit")
    assert s.poll() == [ClientMessage.QUIT]
    assert s.state.quit_requested
    client.control("abort")
    assert s.poll() == [ClientMessage.ABORT]
    assert s.state.abort_requested
    assert not client.pending(Channel.PROCESS_CONTROL_REQUEST), "each request was read"
    s.close()


def test_parse_control_keeps_boinc_order() -> None:
    assert parse_control("<abort/><suspend/>") == [ClientMessage.SUSPEND, ClientMessage.ABORT]
    assert parse_control("<reread_app_info/>") == []


def test_client_gone_after_30_s_without_heartbeat(client: FakeClient) -> None:
    clock = Clock()
    s = session(client, clock)
    for _ in range(3):
        clock.now += 10
        assert client.heartbeat()
        assert s.poll() == []
    assert s.state.heartbeats == 3
    assert s.state.working_set_size == 1000.0 and s.state.max_working_set_size == 2000.0
    clock.now += HEARTBEAT_GIVEUP  # not more than 30 s yet
    assert s.poll() == []
    clock.now += 0.5
    assert s.poll() == [ClientMessage.CLIENT_GONE]
    assert s.poll() == [], "said once"
    assert "No heartbeat from client for 30 sec" in s.lines[-1]  # type: ignore[attr-defined]
    s.close()


def test_client_gone_when_its_process_died(tmp_path: Path) -> None:
    fake = FakeClient(tmp_path / "data", client_pid=12345)
    s = session(fake, alive=False)
    assert s.poll() == [ClientMessage.CLIENT_GONE]
    assert s.state.client_gone
    s.close()
    fake.close()


def test_client_gone_with_real_pid_check(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    fake = FakeClient(tmp_path / "data", client_pid=child.pid)
    s = BoincSession(fake.slot, stderr=lambda line: None)
    assert s.poll() == [ClientMessage.CLIENT_GONE]
    s.close()
    fake.close()


# -- app status ------------------------------------------------------------------------------------


def test_report_maps_fraction_and_skips_when_channel_full(tmp_path: Path) -> None:
    fake = FakeClient(tmp_path / "data", fraction_done_start=0.5, fraction_done_end=0.75)
    s = session(fake)
    assert s.report(12.5, 0.5, checkpoint_cpu_time=10.0)
    assert not s.report(13.0, 0.6), "the client has not read the first one"
    text = fake.receive(Channel.APP_STATUS)
    assert text is not None
    assert "<current_cpu_time>1.250000e+01</current_cpu_time>" in text
    assert "<checkpoint_cpu_time>1.000000e+01</checkpoint_cpu_time>" in text
    assert "<fraction_done>6.250000e-01</fraction_done>" in text
    assert s.report(14.0, None)
    text = fake.receive(Channel.APP_STATUS)
    assert text is not None and "fraction_done" not in text
    assert "<checkpoint_cpu_time>1.000000e+01</checkpoint_cpu_time>" in text
    s.close()
    fake.close()


def test_no_report_while_suspended(client: FakeClient) -> None:
    s = session(client)
    client.control("suspend")
    s.poll()
    assert not s.report(1.0, 0.1)
    assert not client.pending(Channel.APP_STATUS)
    assert s.report(1.0, 0.1, force=True)
    s.close()


def test_checkpoint_cpu_time_starts_at_earlier_runs(tmp_path: Path) -> None:
    fake = FakeClient(tmp_path / "data", wu_cpu_time=42.0)
    s = session(fake)
    s.report(50.0, 0.1)
    assert "<checkpoint_cpu_time>4.200000e+01" in (fake.receive(Channel.APP_STATUS) or "")
    s.checkpoint_completed(49.0)
    s.report(50.0, 0.1)
    assert "<checkpoint_cpu_time>4.900000e+01" in (fake.receive(Channel.APP_STATUS) or "")
    s.close()
    fake.close()


# -- finish and temporary exit ----------------------------------------------------------------


def test_finish_writes_the_file_and_a_last_status(client: FakeClient) -> None:
    s = session(client)
    assert s.finish(0, cpu_time=3.0, wait=0) == 0
    assert (client.slot / "boinc_finish_called").read_text() == "0\n"
    assert "<fraction_done>1.000000e+00" in (client.receive(Channel.APP_STATUS) or "")
    assert s.finish(3, cpu_time=3.0, message="VM task\nfailed", notice=True, wait=0) == 3
    assert (client.slot / "boinc_finish_called").read_text() == "3\nVM task failed\nnotice\n"
    assert "called boinc_finish(3)" in s.lines[-1]  # type: ignore[attr-defined]
    s.close()


def test_temporary_exit(client: FakeClient) -> None:
    s = session(client)
    assert s.temporary_exit(1e9, "QEMU is not installed:\napt-get install qemu") == 0
    text = (client.slot / "boinc_temporary_exit").read_text()
    assert text == "86400\nQEMU is not installed: apt-get install qemu\n"
    s.temporary_exit(60, "", notice=True)
    assert (client.slot / "boinc_temporary_exit").read_text() == "60\ntemporary exit\nnotice\n"
    s.close()


def test_abort_exit_status_is_boincs() -> None:
    assert EXIT_ABORTED_BY_CLIENT == 194


def test_one_app_per_slot(client: FakeClient) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(client.slot / "boinc_lockfile"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(SlotBusy, match="another app holds"):
            session(client)
    finally:
        holder.communicate("")
    session(client).close()  # free again


def test_bad_init_data_is_one_line(client: FakeClient) -> None:
    (client.slot / "init_data.xml").write_text("<app_init_data><slot>x</slot></app_init_data>")
    with pytest.raises(BadInput, match=r"init_data.xml: <slot>: expected an integer, got 'x'"):
        session(client)


@given(heartbeat=st.binary(max_size=1100), control=st.binary(max_size=1100))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_in_the_channels(client: FakeClient, heartbeat: bytes, control: bytes) -> None:
    """Whatever the client's channels hold, polling reads it as text and types it."""
    s = session(client)
    try:
        for channel, raw in (
            (Channel.HEARTBEAT, heartbeat),
            (Channel.PROCESS_CONTROL_REQUEST, control),
        ):
            base = int(channel) * 1024
            data = raw[:1023]
            client.map[base + 1 : base + 1 + len(data)] = data
            client.map[base] = 1
        messages = s.poll()
        text = control[:1023].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        assert messages == parse_control(text)
        assert not client.pending(Channel.HEARTBEAT)
        assert not client.pending(Channel.PROCESS_CONTROL_REQUEST)
    finally:
        s.close()
