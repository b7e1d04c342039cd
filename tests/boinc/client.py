"""A real BOINC client (Debian's ``boinc``) in a temporary data directory.

:class:`BoincClient` lays out the data directory before the client starts (so there is
no attach step and no RPC to wait for): the account file naming our project server, the
project directory with the app's files and an anonymous-platform ``app_info.xml``, a
``cc_config.xml`` and a ``global_prefs_override.xml`` that keep it quiet and quick (no
benchmarks, no GPUs, one CPU, results reported at once, no pause when the machine is
busy), and a GUI RPC password for ``boinccmd``. The client's log goes to
``DATA/client.log``; it dies with the test (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.boinc.server import PLATFORM, VERSION_NUM, ProjectServer
from tests.waits import wait_for
from vmwu.tools import parent_death_preexec

PASSWORD = "vmwu-test"
CC_CONFIG = """<cc_config>
  <log_flags>
    <task_debug>1</task_debug>
    <checkpoint_debug>1</checkpoint_debug>
    <sched_op_debug>1</sched_op_debug>
  </log_flags>
  <options>
    <skip_cpu_benchmarks>1</skip_cpu_benchmarks>
    <no_gpus>1</no_gpus>
    <ncpus>1</ncpus>
    <report_results_immediately>1</report_results_immediately>
    <no_info_fetch>1</no_info_fetch>
  </options>
</cc_config>
"""
# suspend_cpu_usage 0: the default (25 %) pauses tasks whenever the machine is busy.
# leave_apps_in_memory: without it, suspending a task that has checkpointed makes the
# client quit the app (and start it again on resume) instead of sending <suspend/>.
PREFS = """<global_preferences>
  <leave_apps_in_memory>{leave_in_memory}</leave_apps_in_memory>
  <disk_interval>{disk_interval}</disk_interval>
  <run_if_user_active>1</run_if_user_active>
  <suspend_cpu_usage>0</suspend_cpu_usage>
  <cpu_usage_limit>100</cpu_usage_limit>
  <max_ncpus_pct>100</max_ncpus_pct>
  <disk_max_used_gb>0</disk_max_used_gb>
  <disk_max_used_pct>100</disk_max_used_pct>
  <disk_min_free_gb>0</disk_min_free_gb>
  <ram_max_used_busy_pct>90</ram_max_used_busy_pct>
  <ram_max_used_idle_pct>90</ram_max_used_idle_pct>
  <work_buf_min_days>0</work_buf_min_days>
  <work_buf_additional_days>0</work_buf_additional_days>
  <cpu_scheduling_period_minutes>600</cpu_scheduling_period_minutes>
  <run_on_batteries>1</run_on_batteries>
</global_preferences>
"""


@dataclass
class App:
    """An app for the anonymous platform: ``files`` (name in the project directory ->
    source file), the first one being the main program."""

    name: str
    files: dict[str, Path]
    version_num: int = VERSION_NUM
    api_version: str = "7.20.5"
    app_info_text: str | None = None  # a package's own app_info.xml

    @classmethod
    def from_package(cls, name: str, package: Path) -> App:
        """The files and app_info.xml that `vmwu wrap package` wrote into ``package``."""
        skip = {"app_info.xml", "version.xml", "package.json"}
        files = {p.name: p for p in sorted(package.iterdir()) if p.name not in skip}
        return cls(name, files, app_info_text=(package / "app_info.xml").read_text())

    def app_info(self) -> str:
        if self.app_info_text is not None:
            return self.app_info_text
        infos = "".join(
            f"<file_info><name>{n}</name><executable/></file_info>\n" for n in self.files
        )
        names = list(self.files)
        refs = f"<file_ref><file_name>{names[0]}</file_name><main_program/></file_ref>\n"
        refs += "".join(
            f"<file_ref><file_name>{n}</file_name><open_name>{n}</open_name></file_ref>\n"
            for n in names[1:]
        )
        return (
            f"<app_info>\n<app><name>{self.name}</name></app>\n{infos}"
            f"<app_version>\n<app_name>{self.name}</app_name>\n"
            f"<version_num>{self.version_num}</version_num>\n"
            f"<platform>{PLATFORM}</platform>\n"
            f"<api_version>{self.api_version}</api_version>\n{refs}</app_version>\n</app_info>\n"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project_dir_name(url: str) -> str:
    """BOINC's escape_project_url: ``http://127.0.0.1:8000/`` -> ``127.0.0.1_8000``."""
    name = re.sub(r"^[a-z]+://", "", url).rstrip("/")
    return re.sub(r"[:/\\]", "_", name)


class BoincClient:
    def __init__(
        self,
        data: Path,
        server: ProjectServer,
        app: App,
        *,
        leave_in_memory: bool = True,
        checkpoint_period: float = 60,
    ) -> None:
        self.data = data
        self.checkpoint_period = checkpoint_period
        self.leave_in_memory = leave_in_memory
        self.server = server
        self.app = app
        self.port = free_port()
        self.project = data / "projects" / project_dir_name(server.url)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data / "client.log"
        self._prepare()

    def _prepare(self) -> None:
        self.project.mkdir(parents=True, exist_ok=True)
        (self.data / "cc_config.xml").write_text(CC_CONFIG)
        (self.data / "global_prefs_override.xml").write_text(
            PREFS.format(
                leave_in_memory=int(self.leave_in_memory), disk_interval=self.checkpoint_period
            )
        )
        (self.data / "gui_rpc_auth.cfg").write_text(PASSWORD + "\n")
        account = self.data / f"account_{project_dir_name(self.server.url)}.xml"
        account.write_text(
            f"<account>\n<master_url>{self.server.url}</master_url>\n"
            "<authenticator>vmwu-test-auth</authenticator>\n</account>\n"
        )
        for name, src in self.app.files.items():
            dest = self.project / name
            shutil.copy2(src, dest)
            if os.access(src, os.X_OK) or name == next(iter(self.app.files)):
                dest.chmod(0o755)
        (self.project / "app_info.xml").write_text(self.app.app_info())

    # -- the client process -------------------------------------------------------------------

    def start(self, *, exit_when_idle: bool = True) -> None:
        argv = [
            shutil.which("boinc") or "/usr/bin/boinc",
            "--dir",
            os.fspath(self.data),
            "--gui_rpc_port",
            str(self.port),
            "--allow_multiple_clients",
            "--skip_cpu_benchmarks",
            "--no_gpus",
        ]
        if exit_when_idle:
            argv.append("--exit_when_idle")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.data,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_preexec(),
            )
        finally:
            log.close()

    def wait_exit(self, timeout: float = 300) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def quit(self, timeout: float = 120) -> int:
        """``boinccmd --quit``: the client tells its apps to quit, then exits."""
        self.cmd("--quit")
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- boinccmd -------------------------------------------------------------------------------

    def cmd(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["boinccmd", "--host", f"127.0.0.1:{self.port}", "--passwd", PASSWORD, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"boinccmd {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def task(self, action: str, result: str) -> None:
        """``boinccmd --task URL RESULT suspend|resume|abort``."""
        self.cmd("--task", self.server.url, result, action)

    def tasks(self) -> list[dict[str, str]]:
        """``boinccmd --get_tasks``, one dict per task (``name``, ``fraction done``,
        ``current CPU time``, ``active_task_state``, …); [] while the client does not
        answer yet."""
        try:
            out = self.cmd("--get_tasks", check=False)
        except subprocess.TimeoutExpired:
            return []
        tasks: list[dict[str, str]] = []
        for line in out.splitlines():
            if re.match(r"\d+\) -+", line.strip()):
                tasks.append({})
                continue
            key, sep, value = line.strip().partition(": ")
            if tasks and sep:
                tasks[-1][key] = value
        return tasks

    def get_task(self, result: str) -> dict[str, str] | None:
        return next((t for t in self.tasks() if t.get("name") == result), None)

    # -- waiting --------------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, what: Callable[[], Any], message: str, timeout: float = 300) -> Any:
        """Poll ``what()`` until true; fail with the client's log tail, at the deadline or
        as soon as the client has exited."""

        def poll() -> Any:
            value = what()
            if not value and self.proc is not None and self.proc.poll() is not None:
                value = what()
                if not value:
                    raise AssertionError(
                        f"the client exited ({self.proc.returncode}) before {message}:\n"
                        + self.log()[-3000:]
                    )
            return value

        return wait_for(poll, timeout, message, interval=0.25, context=lambda: self.log()[-3000:])

    def wait_log(self, pattern: str, timeout: float = 300, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the client's log past offset ``after``."""
        rx = re.compile(pattern)
        match: re.Match[str] = self.wait_for(
            lambda: rx.search(self.log(), after), f"/{pattern}/ in the client log", timeout
        )
        return match

    def slot(self, n: int = 0) -> Path:
        return self.data / "slots" / str(n)
