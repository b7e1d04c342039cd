"""Apps under the real BOINC client (Debian's ``boinc``), driven by our own project
server on 127.0.0.1 (tests/boinc/). No QEMU here: these prove the harness and
vmwu's side of the client protocol (vmwu/wrapper/boinc/)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.boinc.client import App, BoincClient
from tests.boinc.server import Job, ProjectServer

HERE = Path(__file__).parent.parent / "boinc"

UPPER = r"""#!/bin/sh
# A trivial BOINC app: its input upper-cased into its output, both through soft links.
resolve() { r=$(sed -n 's:.*<soft_link>\(.*\)</soft_link>.*:\1:p' "$1"); echo "${r:-$1}"; }
echo "upper: args $*" >&2
tr a-z A-Z < "$(resolve in.txt)" > "$(resolve out.txt)"
echo 0 > boinc_finish_called
"""


@pytest.fixture
def server() -> Iterator[ProjectServer]:
    with ProjectServer() as srv:
        yield srv


ClientFactory = Callable[[App], BoincClient]


@pytest.fixture
def boinc_client(tmp_path: Path, server: ProjectServer) -> Iterator[ClientFactory]:
    clients: list[BoincClient] = []

    def make(app: App) -> BoincClient:
        client = BoincClient(tmp_path / f"data{len(clients)}", server, app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.kill()


def demo_app(tmp_path: Path) -> App:
    script = tmp_path / "demo_app.py"
    script.write_text(f"#!{sys.executable}\n" + (HERE / "demo_app.py").read_text())
    script.chmod(0o755)
    return App("demo", {"demo_app.py": script})


def stderr_txt(client: BoincClient) -> str:
    try:
        return (client.slot() / "stderr.txt").read_text()
    except FileNotFoundError:
        return ""


def state(client: BoincClient) -> dict[str, int]:
    try:
        text = (client.slot() / "demo_state").read_text()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def test_trivial_app_end_to_end(
    tmp_path: Path, server: ProjectServer, boinc_client: ClientFactory
) -> None:
    """The harness: input downloaded, app run in a slot, output uploaded, result reported."""
    script = tmp_path / "upper.sh"
    script.write_text(UPPER)
    job = server.add_job(
        Job("upper1", "upper", inputs={"in.txt": b"hello boinc\n"}, outputs=("out.txt",),
            command_line="--flag 'two words'")
    )  # fmt: skip
    client = boinc_client(App("upper", {"upper.sh": script}))
    client.start()
    report = server.wait_report(job.result, timeout=300)
    assert report.exit_status == 0, report.raw
    assert server.output(job, "out.txt") == b"HELLO BOINC\n"
    assert "upper: args --flag two words" in report.stderr_out
    assert client.wait_exit(120) == 0, "--exit_when_idle: it ends once the result is acked"
    log = client.log()
    assert "Finished upload of upper1_0_out.txt" in log
    assert "got ack for task upper1_0" in log


def test_python_app_protocol_under_the_real_client(
    tmp_path: Path, server: ProjectServer, boinc_client: ClientFactory
) -> None:
    """BoincSession under the client: fraction done and CPU time in boinccmd, suspend and
    resume, quit then a new client run that resumes from the app's checkpoint."""
    job = server.add_job(
        Job("demo1", "demo", outputs=("out.txt",),
            command_line="--steps 60 --step-cpu 0.25 --checkpoint-every 2")
    )  # fmt: skip
    client = boinc_client(demo_app(tmp_path))
    client.start(exit_when_idle=False)

    def reported() -> dict[str, str] | None:
        task = client.get_task(job.result)
        if task and float(task.get("fraction done", 0)) > 0.05:
            return task
        return None

    task = client.wait_for(reported, "a fraction done in boinccmd --get_tasks")
    assert float(task["current CPU time"]) > 0
    first_fraction = float(task["fraction done"])
    later = client.wait_for(
        lambda: (
            (t := client.get_task(job.result))
            and float(t.get("fraction done", 0)) > first_fraction + 0.05
            and t
        ),
        "the fraction done to grow",
    )
    assert float(later["current CPU time"]) > float(task["current CPU time"])
    client.wait_log(r"\[checkpoint\] result demo1_0 checkpointed")

    client.task("suspend", job.result)
    client.wait_for(lambda: "demo app got suspend" in stderr_txt(client), "the app to suspend")
    held = client.wait_for(lambda: (s := state(client)).get("suspended") and s, "suspended")
    client.wait_for(
        lambda: state(client).get("heartbeats", 0) >= held["heartbeats"] + 3,
        "three heartbeats while suspended",
    )
    assert state(client)["step"] == held["step"], "no step while suspended"
    client.task("resume", job.result)
    client.wait_for(lambda: "demo app got resume" in stderr_txt(client), "the app to resume")
    client.wait_for(lambda: state(client).get("step", 0) > held["step"], "a step after resume")

    assert client.quit() == 0
    assert "demo app got quit" in stderr_txt(client)
    saved = int((client.slot() / "counter").read_text())
    assert 0 < saved < 60
    assert job.result not in server.reports

    client.start()  # the same data directory: the client restarts the task
    report = server.wait_report(job.result, timeout=300)
    assert report.exit_status == 0, report.raw
    out = server.output(job, "out.txt").decode()
    first = int(re.search(r"first=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert out.startswith("steps=60 ") and first == saved, out
    assert f"demo app starting at step {saved} of 60" in report.stderr_out
    assert "called boinc_finish(0)" in report.stderr_out
    assert report.final_cpu_time is not None and report.final_cpu_time > 5
    assert client.wait_exit(120) == 0


def test_abort_under_the_real_client(
    tmp_path: Path, server: ProjectServer, boinc_client: ClientFactory
) -> None:
    job = server.add_job(Job("demo2", "demo", outputs=("out.txt",), command_line="--steps 1000"))
    client = boinc_client(demo_app(tmp_path))
    client.start()
    client.wait_for(lambda: state(client).get("step", 0) > 2, "the app to run")
    client.task("abort", job.result)
    report = server.wait_report(job.result, timeout=300)
    assert report.exit_status == 203, report.raw  # EXIT_ABORTED_VIA_GUI
    assert "demo app got abort" in report.stderr_out
    assert job.output_file("out.txt") not in server.uploads
    assert client.wait_exit(120) == 0
