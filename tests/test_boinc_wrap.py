"""``vmwu wrap`` in a BOINC slot (vmwu/wrapper/boinc/main.py, control.py) against the
fake client, and ``vmwu wrap package``'s parts that need no PyInstaller run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.boinc.fake import FakeClient
from tests.boinc.jobs import host_job_files, lines
from tests.waits import wait_for
from vmwu.errors import BadInput, ToolNotFound
from vmwu.wrapper.boinc import main as boinc_main_module
from vmwu.wrapper.boinc.api import BoincSession
from vmwu.wrapper.boinc.control import BoincControl
from vmwu.wrapper.boinc.package import Shipped, app_info_xml, job_files, version_xml
from vmwu.wrapper.boinc.shmem import Channel
from vmwu.wrapper.control import Action
from vmwu.wrapper.jobxml import load_job


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FakeClient]:
    fake = FakeClient(tmp_path / "data", checkpoint_period=7.0)
    yield fake
    fake.close()


def host_job(client: FakeClient, n: int = 5, step: float = 0.05) -> Path:
    """The host job's app files in the project dir, linked into the slot as the client
    links them, and its input and output."""
    files = host_job_files(client.project_dir / "src", step=step)
    for name, src in files.items():
        client.link(name, name, src.read_bytes())
    client.link("in.txt", "wu1_in.txt", lines(n))
    return client.link("out.txt", "wu1_0_out.txt")


def wrap(
    client: FakeClient, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmwu", "wrap", *args],
        cwd=client.slot,
        env={**os.environ, "VMWU_HOME": str(client.data / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_control_turns_client_messages_into_requests(client: FakeClient, tmp_path: Path) -> None:
    session = BoincSession(client.slot, stderr=lambda line: None)
    control = BoincControl(tmp_path / "ctl.sock", session)
    try:
        client.control("suspend")
        [request] = control.requests()
        assert (request.action, request.source) == (Action.SUSPEND, "BOINC client")
        client.control("quit")
        assert [r.action for r in control.requests()] == [Action.QUIT]
        client.control("resume")
        control.requests()
        control.status_changed({"run_cpu_time": 5.0, "fraction_done": 0.25})
        text = client.receive(Channel.APP_STATUS) or ""
        assert "<fraction_done>2.500000e-01</fraction_done>" in text
        assert _number(text, "current_cpu_time") == 5.0
        assert _number(text, "checkpoint_cpu_time") == 0.0, "no checkpoint in this run yet"
        status = {"run_cpu_time": 9.0, "checkpoint_run_cpu_time": 7.5, "fraction_done": 0.5}
        control.status_changed(status)
        text = client.receive(Channel.APP_STATUS) or ""
        assert _number(text, "current_cpu_time") == 9.0
        assert _number(text, "checkpoint_cpu_time") == 7.5, "the CPU time at the checkpoint"
    finally:
        control.close()
        session.close()


def _number(text: str, tag: str) -> float:
    return float(text.split(f"<{tag}>")[1].split("<")[0])


def test_cpu_times_go_on_from_the_clients_checkpoint(tmp_path: Path) -> None:
    """A restarted task: the CPU times start at the client's ``wu_cpu_time`` (the job's
    CPU time at the checkpoint this run goes on from), as the BOINC API counts them; no
    checkpoint is claimed before this run writes one."""
    fake = FakeClient(tmp_path / "data", wu_cpu_time=100.0)
    session = BoincSession(fake.slot, stderr=lambda line: None)
    control = BoincControl(tmp_path / "ctl.sock", session)
    try:
        control.status_changed({"run_cpu_time": 2.0, "checkpoint_run_cpu_time": None})
        text = fake.receive(Channel.APP_STATUS) or ""
        assert (_number(text, "current_cpu_time"), _number(text, "checkpoint_cpu_time")) == (
            102.0,
            100.0,
        )
        control.status_changed({"run_cpu_time": 4.0, "checkpoint_run_cpu_time": 3.25})
        text = fake.receive(Channel.APP_STATUS) or ""
        assert _number(text, "checkpoint_cpu_time") == 103.25
    finally:
        control.close()
        session.close()
        fake.close()


def test_host_job_in_a_slot(client: FakeClient) -> None:
    out = host_job(client)
    proc = wrap(client)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.read_bytes() == lines(5).upper(), "the output landed in the physical file"
    assert (client.slot / "boinc_finish_called").read_text() == "0\n"
    assert "vmwu wrap under BOINC client 7.20.5: result wu1_0, checkpoint every 7 s" in err
    assert "called boinc_finish(0)" in err
    status = client.receive(Channel.APP_STATUS) or ""
    assert "<fraction_done>1.000000e+00</fraction_done>" in status


def test_file_names_on_command_lines_are_resolved(client: FakeClient) -> None:
    """``boinc_resolve(NAME)`` on a host task's command line (and in the wrapper's extra
    arguments) becomes the file's path as BOINC's wrapper resolves it: the input's and
    the output's physical files in the project directory."""
    (client.project_dir / "job.xml").write_text(
        "<job_desc><task><application>sh</application>"
        '<command_line>-c \'echo "$@" > args.txt; tr a-z A-Z &lt; "$1" > "$2"\' '
        "sh boinc_resolve(in.txt)</command_line><append_cmdline_args/></task></job_desc>"
    )
    client.link("job.xml", "job.xml")
    client.link("in.txt", "wu1_in.txt", b"resolved\n")
    out = client.link("out.txt", "wu1_0_out.txt")
    proc = wrap(client, "--", "boinc_resolve(out.txt)")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    project = "../../projects/127.0.0.1_8000"
    args = (client.slot / "args.txt").read_text()
    assert args == f"{project}/wu1_in.txt {project}/wu1_0_out.txt\n"
    assert out.read_bytes() == b"RESOLVED\n", "written straight into the physical file"
    assert "did not write its output" not in err


def test_failed_job_is_finished_with_its_code(client: FakeClient) -> None:
    (client.project_dir / "job.xml").write_text(
        "<job_desc><task><application>sh</application>"
        "<command_line>-c 'exit 3'</command_line></task></job_desc>"
    )
    client.link("job.xml", "job.xml")
    proc = wrap(client)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    text = (client.slot / "boinc_finish_called").read_text()
    assert text == "3\nthe job failed with exit code 3\n\n"


def test_quit_and_abort_from_the_client(client: FakeClient) -> None:
    host_job(client, n=200, step=0.1)
    proc = wrap(client)

    def alive_until(done: Callable[[], bool]) -> Callable[[], bool]:
        """Poll ``done``, beating the client's heart as BOINC's does (every 0.1 s here)."""

        def poll() -> bool:
            client.heartbeat()
            assert proc.poll() is None, f"the wrapper exited early: {proc.communicate()[1]}"
            return done()

        return poll

    ck = client.slot / "ck"
    wait_for(alive_until(ck.exists), 120, "the host task's first line")
    client.control("quit")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped (the client quit)" in err
    assert "the BOINC client starts the task again when it next runs it" in err
    assert "vmwu wrap` again" not in err, "nobody runs it by hand under a client"
    assert not (client.slot / "boinc_finish_called").exists()
    done = int((client.slot / "ck").read_text())

    proc = wrap(client)  # the client starts the task again
    wait_for(alive_until(lambda: int(ck.read_text()) > done), 120, "a line after the restart")
    client.control("abort")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 194, err
    assert "aborted by the client" in err


def test_missing_tool_is_a_temporary_exit(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_job(client)

    def run(self: object) -> int:
        raise ToolNotFound("qemu-system-x86_64", "qemu-system-x86")

    monkeypatch.setattr("vmwu.wrapper.wrapper.Wrapper.run", run)
    monkeypatch.chdir(client.slot)
    monkeypatch.setenv("VMWU_HOME", str(client.data / "home"))
    assert boinc_main_module.boinc_main([]) == 0
    text = (client.slot / "boinc_temporary_exit").read_text()
    assert text == (
        "86400\n'qemu-system-x86_64' was not found on PATH "
        "(apt-get install qemu-system-x86)\nnotice\n"
    )
    assert not (client.slot / "boinc_finish_called").exists()


def test_job_files_and_app_info(tmp_path: Path) -> None:
    files = host_job_files(tmp_path)
    (tmp_path / "count.ova").write_bytes(b"unit")
    (tmp_path / "job.xml").write_text(
        files["job.xml"]
        .read_text()
        .replace(
            "</job_desc>",
            "<task><virtualmachine>$PROJECT_DIR/count.ova</virtualmachine></task></job_desc>",
        )
    )
    shipped = job_files(load_job(tmp_path / "job.xml"), tmp_path)
    assert [f.name for f in shipped] == ["work.sh", "count.ova"]
    info = app_info_xml(
        "vmwu", 101, "x86_64-pc-linux-gnu", [Shipped("wrap", tmp_path, True, True), *shipped]
    )
    assert "<file_ref><file_name>wrap</file_name><main_program/></file_ref>" in info
    assert "<file_ref><file_name>count.ova</file_name><open_name>count.ova</open_name>" in info
    assert "<api_version>7.20.0</api_version>" in info and "<version_num>101<" in info
    version = version_xml([Shipped("wrap", tmp_path, True, True), *shipped])
    assert "<physical_name>wrap</physical_name>\n    <main_program/>" in version
    assert "<physical_name>work.sh</physical_name>\n    <logical_name>work.sh<" in version
    assert "<api_version>7.20.0</api_version>" in version


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("<virtualmachine>tiny</virtualmachine><application>sh</application>", "catalog base"),
        ("<application>$PROJECT_DIR/missing.sh</application>", "missing.sh is not a file"),
        ("<application>$PROJECT_DIR/a%b</application>", "cannot be a BOINC file name"),
    ],
)
def test_job_files_refuses(tmp_path: Path, task: str, message: str) -> None:
    (tmp_path / "job.xml").write_text(f"<job_desc><task>{task}</task></job_desc>")
    with pytest.raises(BadInput, match=message):
        job_files(load_job(tmp_path / "job.xml"), tmp_path)


def test_frozen_wrapper_gives_children_the_hosts_library_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEI123:/opt/x")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/opt/x")
    boinc_main_module.restore_library_path()
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/x"
    assert "LD_LIBRARY_PATH_ORIG" not in os.environ
    # PyInstaller 6 keeps no LD_LIBRARY_PATH_ORIG for a sub-process: the bundle's
    # directory (sys._MEIPASS in a frozen vmwu) is taken off the path instead
    monkeypatch.setattr(sys, "_MEIPASS", "/tmp/_MEI123", raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEI123:/opt/y")
    boinc_main_module.restore_library_path()
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/y"
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEI123")
    boinc_main_module.restore_library_path()
    assert "LD_LIBRARY_PATH" not in os.environ
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/host-libs")
    boinc_main_module.restore_library_path()
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/host-libs"
