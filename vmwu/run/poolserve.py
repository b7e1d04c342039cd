"""The node pool service: ``vmwu pool serve`` keeps ready VMs and runs ``vmwu run`` for
the user's other vmwu processes (issue 15; docs/pool.md).

Owner and lifetime: one service per user and node, started explicitly (``vmwu pool
serve``) or by a sweep's local executor for the sweep's duration. It is the *owner* of
its ready VMs (:class:`vmwu.run.pool.NodePool`): they are its children, started through
the spawn door, and die with it whatever kills it. It ends after ``--idle`` seconds
without a request, on SIGTERM/SIGINT, or with the process that started it.

Protocol: one request per connection on a unix socket in a directory only the user can
enter (mode 0700; the service also checks the peer's uid). The client sends one line of
JSON, at most :data:`MAX_REQUEST` bytes: ``{"v": 1, "run": [ARG, ...], "cwd": DIR}``,
the arguments of ``vmwu run`` as typed and the directory they were typed in. The service
parses them exactly as ``vmwu run`` does (:func:`vmwu.run.options.parse_run_args`), runs
the instance with the same code (:func:`vmwu.run.launch.run_unit`: the same
preparation, limits and collection of outputs, in a ready VM when one fits) and answers
one line: ``{"v": 1, "exit": CODE, "error": LINE|null, "summary": LINE|null}`` (with
``"local": true`` instead when the client is to run it itself: ``--print-cmdline``).
``{"v": 1, "status": true}`` asks how many VMs are ready (summary ``ready N made M
warmed W``: made so far, of which the agent warmed up). A client
that goes away (killed, Ctrl-C) closes the connection: the service stops its instance
(outputs salvaged as for an interrupted ``vmwu run``). ``vmwu run`` uses the service
named by ``$VMWU_POOL`` (a socket path) and runs the instance itself when there is none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput, ExitCode, VmwuError

log = logging.getLogger(__name__)

VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_REPLY = 64 * 1024
MAX_ARGS = 4096
ENV = "VMWU_POOL"
DEFAULT_IDLE = 600.0


class BadRequest(ValueError):
    """A request that is not one this protocol knows."""


@dataclass(frozen=True)
class Request:
    """``run`` with ``cwd``; or, with ``status``, a question: how many VMs are ready."""

    run: tuple[str, ...] = ()
    cwd: Path = Path("/")
    status: bool = False


@dataclass(frozen=True)
class Reply:
    """``local``: the service does not run such instances (--print-cmdline): the client
    runs it itself."""

    exit: int
    error: str | None = None
    summary: str | None = None
    local: bool = False

    def encode(self) -> bytes:
        doc = {"v": VERSION, "exit": self.exit, "error": self.error, "summary": self.summary}
        if self.local:
            doc["local"] = True
        return json.dumps(doc).encode() + b"\n"


def _clean_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} is not a string")
    if len(value) > limit or "\x00" in value:
        raise BadRequest(f"{what} is too long or holds a NUL")
    return value


def _versioned(doc: object) -> bool:
    return isinstance(doc, dict) and type(doc.get("v")) is int and doc["v"] == VERSION


def _versioned_line(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    """One JSON line of the protocol, at most ``limit`` bytes, of this version."""
    if len(raw) > limit:
        raise BadRequest(f"{what} too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not _versioned(doc):
        raise BadRequest(f"not a version 1 {what}")
    assert isinstance(doc, dict)
    return doc


def parse_request(raw: bytes) -> Request:
    """One request line (bytes as received, newline included or not)."""
    doc = _versioned_line(raw, MAX_REQUEST, "request")
    if set(doc) == {"v", "status"} and doc["status"] is True:
        return Request(status=True)
    if set(doc) != {"v", "run", "cwd"}:
        raise BadRequest("unexpected or missing fields")
    args = doc["run"]
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise BadRequest("run is not a list of arguments")
    run = tuple(_clean_text(a, "an argument", MAX_REQUEST) for a in args)
    cwd = _clean_text(doc["cwd"], "cwd", 4096)
    if not cwd.startswith("/"):
        raise BadRequest("cwd is not absolute")
    return Request(run, Path(cwd))


def parse_reply(raw: bytes) -> Reply:
    """The service's answer (the client trusts it no more than it must)."""
    doc = _versioned_line(raw, MAX_REPLY, "reply")
    code = doc.get("exit")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise BadRequest("bad exit code")
    texts: list[str | None] = []
    for name in ("error", "summary"):
        value = doc.get(name)
        texts.append(None if value is None else _clean_text(value, name, 8192))
    local = doc.get("local", False)
    if not isinstance(local, bool):
        raise BadRequest("bad local flag")
    return Reply(code, texts[0], texts[1], local)


# -- the service ---------------------------------------------------------------------------


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/vmwu/pool.sock``, else ``/tmp/vmwu-pool-UID/pool.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "vmwu" if runtime else Path(f"/tmp/vmwu-pool-{os.getuid()}")
    return base / "pool.sock"


def private_dir(path: Path) -> None:
    """Make ``path`` a directory only this user can enter (refusing one that is not ours)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise BadInput(f"{path} is not a directory of this user", hint="choose another --socket")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _read_line(conn: socket.socket, limit: int, timeout: float) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise BadRequest("too large")
    return data


def _close_thread_loop() -> None:
    """Close the event loop QMP clients made for this (ending) thread, if any."""
    import asyncio

    policy = asyncio.get_event_loop_policy()
    with contextlib.suppress(RuntimeError):
        loop = policy.get_event_loop()
        if not loop.is_running():
            loop.close()
        policy.set_event_loop(None)


class _ClientGone(KeyboardInterrupt):
    """Raised in the instance's thread when its client has closed the connection."""


class Service:
    def __init__(self, sock_path: Path, *, size: int, idle: float) -> None:
        from vmwu.cache import NodeCache
        from vmwu.run.pool import NodePool

        self.sock_path = sock_path
        self.idle = idle
        private_dir(sock_path.parent)
        self.cache = NodeCache()
        self.vm_root = Path(tempfile.mkdtemp(prefix="pool-", dir=sock_path.parent))
        self.pool = NodePool(self.vm_root, size=size, cache=self.cache)
        self.active = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = False

    def serve(self) -> None:
        sock_path = self.sock_path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(sock_path.lstat().st_mode):
                sock_path.unlink()  # a dead service's (a live one's path is in use: bind fails)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(os.fspath(sock_path))
            os.chmod(sock_path, 0o600)
            server.listen(64)
            print(f"vmwu pool: serving on {sock_path}", file=sys.stderr, flush=True)
            while not self.stopping:
                ready, _, _ = select.select([server], [], [], 1.0)
                if ready:
                    conn, _ = server.accept()
                    threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
                    continue
                with self.lock:
                    idle = self.active == 0 and time.monotonic() - self.last > self.idle
                if idle:
                    log.info("pool: idle for %g s, ending", self.idle)
                    break
        finally:
            server.close()
            with contextlib.suppress(OSError):
                sock_path.unlink()
            self._wait_for_jobs()
            self.pool.close()
            import shutil

            shutil.rmtree(self.vm_root, ignore_errors=True)

    def _wait_for_jobs(self) -> None:
        # the ready VMs die with the pool's thread: let running instances finish first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.05)

    def _handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.active += 1
        try:
            with conn:
                reply = self._serve_one(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(reply.encode())
        finally:
            _close_thread_loop()
            with self.lock:
                self.active -= 1
                self.last = time.monotonic()

    def _serve_one(self, conn: socket.socket) -> Reply:
        if _peer_uid(conn) != os.getuid():
            return Reply(int(ExitCode.BAD_INPUT), "the pool serves its own user only")
        try:
            request = parse_request(_read_line(conn, MAX_REQUEST, 10.0))
        except (BadRequest, OSError) as exc:
            return Reply(int(ExitCode.BAD_INPUT), f"bad request to the node pool: {exc}")
        if request.status:
            pool = self.pool
            return Reply(
                0, None, f"ready {pool.ready_count()} made {pool.made} warmed {pool.warmed}"
            )
        conn.settimeout(None)
        return run_request(request, self.pool, conn)


def run_request(request: Request, pool: Any, conn: socket.socket | None) -> Reply:
    """Run ``vmwu run`` with ``request``'s arguments, as the command would (minus its live
    line), in a ready VM of ``pool`` when one fits."""
    from vmwu.run.launch import run_unit
    from vmwu.run.options import parse_run_args

    def watch(_state: object) -> None:
        if conn is None:
            return
        ready, _, _ = select.select([conn], [], [], 0)
        if ready and not conn.recv(1, socket.MSG_PEEK):
            raise _ClientGone()

    try:
        opts, quiet = parse_run_args(list(request.run), cwd=request.cwd)
        if opts.print_cmdline:
            return Reply(0, local=True)
        result = run_unit(opts, on_update=watch, pool=pool)
    except VmwuError as exc:
        return Reply(int(exc.exit_code), str(exc))
    except KeyboardInterrupt:
        return Reply(int(ExitCode.INTERRUPTED), "interrupted")
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the service goes on
        log.exception("pool: internal error")
        return Reply(int(ExitCode.INTERNAL), f"internal error in the node pool: {exc!r}")
    return reply_for(result, opts, quiet)


def reply_for(result: Any, opts: Any, quiet: bool) -> Reply:
    status = result.status
    if result.error is not None:
        message = str(result.error)
        if str(result.output_dir) not in message:
            message += f"; outputs, console.log and status.json are in {result.output_dir}"
        return Reply(int(result.exit_code), message)
    summary = None
    if not quiet and status is not None and status.timings is not None:
        t = status.timings
        summary = (
            f"vmwu: {status.unit}: exit {result.exit_code} "
            f"(boot {t.boot}s, app {t.app}s, total {t.qemu}s); outputs in {result.output_dir}"
        )
    return Reply(int(result.exit_code), None, summary)


# -- the client (vmwu run) -----------------------------------------------------------------


def pool_socket() -> Path | None:
    """The service ``$VMWU_POOL`` names (a socket path; unset, empty, ``off``, or ``auto``
    that no local sweep has replaced by its own service's socket: none)."""
    value = os.environ.get(ENV)
    return Path(value) if value and value not in ("off", "auto") else None


def ask(sock_path: Path, request: dict[str, Any], timeout: float | None = None) -> Reply:
    """Send one request and read the reply (OSError when there is no service)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(os.fspath(sock_path))
        client.sendall(json.dumps(request).encode() + b"\n")
        raw = _read_line(client, MAX_REPLY, timeout if timeout is not None else 1e9)
    if not raw:
        return Reply(int(ExitCode.HOST_FAILURE), "the node pool service ended during the run")
    try:
        return parse_reply(raw)
    except BadRequest as exc:
        return Reply(int(ExitCode.HOST_FAILURE), f"the node pool answered badly: {exc}")


def run_via_pool(sock_path: Path, argv: list[str], cwd: Path | None = None) -> Reply | None:
    """Ask the service at ``sock_path`` to run ``vmwu run argv`` (typed in ``cwd``, by
    default this process's); None (and why in the debug log) when there is no service
    to ask: the caller runs the instance itself."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            client.connect(os.fspath(sock_path))
        except OSError as exc:
            log.debug("no node pool at %s (%s): running the instance here", sock_path, exc)
            return None
        request = {"v": VERSION, "run": argv, "cwd": os.fspath(cwd or Path.cwd())}
        client.sendall(json.dumps(request).encode() + b"\n")
        raw = _read_line(client, MAX_REPLY, 24 * 3600.0 * 365)
        if not raw:
            return Reply(int(ExitCode.HOST_FAILURE), "the node pool service ended during the run")
        try:
            return parse_reply(raw)
        except BadRequest as exc:
            return Reply(int(ExitCode.HOST_FAILURE), f"the node pool answered badly: {exc}")
    finally:
        client.close()


# -- vmwu pool ... --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vmwu pool", description="the node pool service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="keep ready VMs and run `vmwu run` for this user")
    serve.add_argument("--socket", help=f"socket path (default {default_socket()})")
    serve.add_argument("--size", type=int, default=2, help="ready VMs per machine (2)")
    serve.add_argument(
        "--idle", type=float, default=DEFAULT_IDLE, help="end after this many idle seconds"
    )
    args = parser.parse_args(argv)
    if args.size < 0 or args.idle <= 0:
        raise BadInput("--size must be >= 0 and --idle > 0")
    sock = Path(args.socket).absolute() if args.socket else default_socket()
    if len(os.fsencode(sock)) > 107:
        raise BadInput(f"socket path {sock} is too long for a unix socket")
    service = Service(sock, size=args.size, idle=args.idle)

    def stop(signum: int, frame: object) -> None:
        service.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    service.serve()
    return 0
