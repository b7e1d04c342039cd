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
from vmwu.run.poolclient import (
    MAX_REQUEST,
    BadRequest,
    Reply,
    clean_text,
    read_line,
    versioned_line,
)

log = logging.getLogger(__name__)

MAX_ARGS = 4096
DEFAULT_IDLE = 600.0


@dataclass(frozen=True)
class Request:
    """``run`` with ``cwd``; or, with ``status``, a question: how many VMs are ready."""

    run: tuple[str, ...] = ()
    cwd: Path = Path("/")
    status: bool = False


def parse_request(raw: bytes) -> Request:
    """One request line (bytes as received, newline included or not)."""
    doc = versioned_line(raw, MAX_REQUEST, "request")
    if set(doc) == {"v", "status"} and doc["status"] is True:
        return Request(status=True)
    if set(doc) != {"v", "run", "cwd"}:
        raise BadRequest("unexpected or missing fields")
    args = doc["run"]
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise BadRequest("run is not a list of arguments")
    run = tuple(clean_text(a, "an argument", MAX_REQUEST) for a in args)
    cwd = clean_text(doc["cwd"], "cwd", 4096)
    if not cwd.startswith("/"):
        raise BadRequest("cwd is not absolute")
    return Request(run, Path(cwd))


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
        from vmwu.images import templates

        templates.enable(self.vm_root / "templates")  # instance disks: copies, no qemu-img
        self.active = 0
        self.pool = NodePool(self.vm_root, size=size, cache=self.cache, busy=self._running)
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = False

    def _running(self) -> int:
        with self.lock:
            return self.active

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
            self.pool.nudge()

    def _serve_one(self, conn: socket.socket) -> Reply:
        if _peer_uid(conn) != os.getuid():
            return Reply(int(ExitCode.BAD_INPUT), "the pool serves its own user only")
        try:
            request = parse_request(read_line(conn, MAX_REQUEST, 10.0))
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
