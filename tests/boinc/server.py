"""A small BOINC project server: Python's standard library only, on 127.0.0.1.

It speaks just enough of BOINC's project side for a real ``boinc`` client (Debian's
7.20.5) to attach, fetch a job, download its inputs, upload its outputs and report the
result (measured in ../shared/notes/boinc-client.md):

- ``GET /``: the master page, naming the scheduler;
- ``POST /cgi-bin/cgi``: the scheduler (``<scheduler_request>`` in, ``<scheduler_reply>``
  out): hands out queued jobs one per RPC, records reported results and acks them;
- ``GET /download/NAME``: an input file;
- ``POST /cgi-bin/file_upload_handler``: an output file (``<get_file_size>`` and
  ``<file_upload>`` with the raw bytes after ``<data>``).

Apps reach the client through the anonymous platform (``app_info.xml`` in the project
directory, see :mod:`tests.boinc.client`), so the replies carry no app versions and no
signatures. Everything is kept in memory; waits are on a condition, never on sleeps.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PLATFORM = "x86_64-pc-linux-gnu"
VERSION_NUM = 100
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Job:
    """A workunit and its one result. Input files are named ``WU_LOGICAL`` on the
    server and in the client's project directory; outputs ``RESULT_LOGICAL``."""

    name: str
    app: str
    inputs: dict[str, bytes] = field(default_factory=dict)  # logical name -> content
    outputs: tuple[str, ...] = ()  # logical names
    command_line: str = ""
    rsc_fpops_est: float = 1e9
    rsc_fpops_bound: float = 1e15
    rsc_memory_bound: float = 512e6
    rsc_disk_bound: float = 4e9
    max_output_bytes: int = 16 * 1024 * 1024
    copy_inputs: tuple[str, ...] = ()  # logical names with <copy_file/>

    @property
    def result(self) -> str:
        return f"{self.name}_0"

    def input_file(self, logical: str) -> str:
        return f"{self.name}_{logical}"

    def output_file(self, logical: str) -> str:
        return f"{self.result}_{logical}"


@dataclass
class Report:
    """A result as the client reported it."""

    name: str
    exit_status: int | None
    state: int | None
    final_cpu_time: float | None
    final_elapsed_time: float | None
    stderr_out: str
    raw: str


def _tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
    return m.group(1).strip() if m else None


def _number(text: str, name: str) -> float | None:
    value = _tag(text, name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_reports(request: str) -> list[Report]:
    """The ``<result>`` blocks of a scheduler request."""
    reports = []
    for block in re.findall(r"<result>(.*?)</result>", request, re.S):
        name = _tag(block, "name")
        if not name:
            continue
        stderr = _tag(block, "stderr_out") or ""
        cdata = re.search(r"<!\[CDATA\[(.*?)\]\]>", stderr, re.S)
        status = _number(block, "exit_status")
        state = _number(block, "state")
        reports.append(
            Report(
                name=name,
                exit_status=None if status is None else int(status),
                state=None if state is None else int(state),
                final_cpu_time=_number(block, "final_cpu_time"),
                final_elapsed_time=_number(block, "final_elapsed_time"),
                stderr_out=cdata.group(1) if cdata else html.unescape(stderr),
                raw=block,
            )
        )
    return reports


class ProjectServer:
    """``with ProjectServer() as server:`` serves on 127.0.0.1 at ``server.url``."""

    def __init__(self, name: str = "vmwu-test") -> None:
        self.name = name
        self._cond = threading.Condition()
        self.pending: list[Job] = []
        self.sent: dict[str, Job] = {}  # result name -> job
        self.reports: dict[str, Report] = {}
        self.uploads: dict[str, bytes] = {}  # physical name -> content
        self.rpcs = 0
        self.requests: list[str] = []
        self._unacked: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- the test's side --------------------------------------------------------------------

    def __enter__(self) -> ProjectServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def add_job(self, job: Job) -> Job:
        with self._cond:
            self.pending.append(job)
            self._cond.notify_all()
        return job

    def wait(self, what: Callable[[], Any], timeout: float, message: str) -> Any:
        """Wait until ``what()`` (called under the lock) is true; returns its value."""
        with self._cond:
            value = self._cond.wait_for(what, timeout=timeout)
        if not value:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        return value

    def wait_report(self, result: str, timeout: float = 300) -> Report:
        report: Report = self.wait(
            lambda: self.reports.get(result), timeout, f"the report of {result}"
        )
        return report

    def wait_sent(self, result: str, timeout: float = 300) -> Job:
        job: Job = self.wait(lambda: self.sent.get(result), timeout, f"{result} to be sent")
        return job

    def output(self, job: Job, logical: str) -> bytes:
        return self.uploads[job.output_file(logical)]

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, body: bytes, ctype: str = "text/xml", code: int = 200) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path in ("/", "/index.html"):
                    self._send(server.master_page().encode(), "text/html")
                    return
                if self.path.startswith("/download/"):
                    body = server.download(self.path[len("/download/") :])
                    if body is not None:
                        self._send(body, "application/octet-stream")
                        return
                self._send(b"not found", "text/plain", 404)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(b"too large", "text/plain", 413)
                    return
                body = self.rfile.read(length)
                if self.path.startswith("/cgi-bin/cgi"):
                    self._send(server.schedule(body.decode(errors="replace")).encode())
                elif self.path.startswith("/cgi-bin/file_upload_handler"):
                    self._send(server.upload(body).encode())
                else:
                    self._send(b"not found", "text/plain", 404)

        return Handler

    def master_page(self) -> str:
        return (
            f"<html><head><title>{self.name}</title>\n"
            f"<scheduler>{self.url}cgi-bin/cgi</scheduler>\n"
            f'<link rel="boinc_scheduler" href="{self.url}cgi-bin/cgi">\n'
            f"</head><body>{self.name}</body></html>\n"
        )

    def download(self, name: str) -> bytes | None:
        with self._cond:
            for job in [*self.pending, *self.sent.values()]:
                for logical, content in job.inputs.items():
                    if job.input_file(logical) == name:
                        return content
        return None

    def upload(self, body: bytes) -> str:
        ok = "<data_server_reply><status>0</status></data_server_reply>\n"
        head, sep, data = body.partition(b"<data>\n")
        text = head.decode(errors="replace")
        if "<get_file_size>" in text:
            asked = _tag(text, "get_file_size") or ""
            with self._cond:
                size = len(self.uploads.get(asked, b""))
            return (
                "<data_server_reply><status>0</status>"
                f"<file_size>{size}</file_size></data_server_reply>\n"
            )
        info = _tag(text, "file_info") or ""
        name = _tag(info, "name")
        offset = int(_number(text, "offset") or 0)
        if not sep or not name:
            return "<data_server_reply><status>-1</status></data_server_reply>\n"
        with self._cond:
            old = self.uploads.get(name, b"")
            self.uploads[name] = old[:offset] + data
            self._cond.notify_all()
        return ok

    def schedule(self, request: str) -> str:
        with self._cond:
            self.rpcs += 1
            self.requests.append(request)
            for report in parse_reports(request):
                if report.name in self.sent:
                    self.reports[report.name] = report
                self._unacked.append(report.name)
            out = [
                "<scheduler_reply>",
                "<scheduler_version>720</scheduler_version>",
                f"<master_url>{self.url}</master_url>",
                f"<project_name>{self.name}</project_name>",
                "<hostid>1</hostid>",
                "<user_name>test</user_name>",
            ]
            for name in self._unacked:
                out.append(f"<result_ack><name>{name}</name></result_ack>")
            self._unacked = []
            if self.pending:
                job = self.pending.pop(0)
                out.append(self._job_xml(job))
                self.sent[job.result] = job
            out.append("</scheduler_reply>")
            self._cond.notify_all()
        return "\n".join(out) + "\n"

    def _job_xml(self, job: Job) -> str:
        parts = []
        refs = []
        for logical, content in job.inputs.items():
            phys = job.input_file(logical)
            parts.append(
                "<file_info>\n"
                f"  <name>{phys}</name>\n"
                f"  <download_url>{self.url}download/{phys}</download_url>\n"
                f"  <nbytes>{len(content)}</nbytes>\n"
                f"  <md5_cksum>{hashlib.md5(content).hexdigest()}</md5_cksum>\n"
                "</file_info>"
            )
            copy = "<copy_file/>" if logical in job.copy_inputs else ""
            refs.append(
                f"  <file_ref><file_name>{phys}</file_name>"
                f"<open_name>{logical}</open_name>{copy}</file_ref>"
            )
        parts.append(
            "<workunit>\n"
            f"  <name>{job.name}</name>\n"
            f"  <app_name>{job.app}</app_name>\n"
            f"  <command_line>{html.escape(job.command_line, quote=False)}</command_line>\n"
            f"  <rsc_fpops_est>{job.rsc_fpops_est:e}</rsc_fpops_est>\n"
            f"  <rsc_fpops_bound>{job.rsc_fpops_bound:e}</rsc_fpops_bound>\n"
            f"  <rsc_memory_bound>{job.rsc_memory_bound:e}</rsc_memory_bound>\n"
            f"  <rsc_disk_bound>{job.rsc_disk_bound:e}</rsc_disk_bound>\n"
            + "\n".join(refs)
            + "\n</workunit>"
        )
        out_refs = []
        for logical in job.outputs:
            phys = job.output_file(logical)
            parts.append(
                "<file_info>\n"
                f"  <name>{phys}</name>\n"
                "  <generated_locally/>\n"
                "  <upload_when_present/>\n"
                f"  <max_nbytes>{job.max_output_bytes}</max_nbytes>\n"
                f"  <upload_url>{self.url}cgi-bin/file_upload_handler</upload_url>\n"
                "</file_info>"
            )
            out_refs.append(
                f"  <file_ref><file_name>{phys}</file_name><open_name>{logical}</open_name>"
                "</file_ref>"
            )
        parts.append(
            "<result>\n"
            f"  <name>{job.result}</name>\n"
            f"  <wu_name>{job.name}</wu_name>\n"
            f"  <platform>{PLATFORM}</platform>\n"
            f"  <version_num>{VERSION_NUM}</version_num>\n"
            f"  <report_deadline>{time.time() + 7 * 86400:.0f}</report_deadline>\n"
            "  <report_immediately/>\n" + "\n".join(out_refs) + "\n</result>"
        )
        return "\n".join(parts)
