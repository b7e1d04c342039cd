"""Control of a running wrapper: signals, and a unix socket for ``vmwu wrap ctl``.

There is no BOINC client here, so the client's messages become signals and socket
commands:

=====================  =========================================================
SIGTSTP, SIGUSR1       suspend (QMP ``stop`` for a VM task, SIGSTOP for a host task)
SIGCONT                resume
SIGTERM, SIGINT, SIGHUP  quit: checkpoint, stop, exit with the temporary-exit code
``ctl suspend|resume|quit|abort|checkpoint|status``  the same over the socket
=====================  =========================================================

Signal handlers only queue a request; the wrapper's loop acts on it. The socket speaks
one line each way: the command, then a JSON reply.

A unix socket path holds at most 107 bytes. When the socket's real path is longer it is
reached through ``/proc/self/fd/N/NAME``, N being an open descriptor of its directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from vmwu.errors import BadInput
from vmwu.vmm.qemu import SUN_PATH_MAX


class Action(StrEnum):
    SUSPEND = "suspend"
    RESUME = "resume"
    QUIT = "quit"
    ABORT = "abort"
    CHECKPOINT = "checkpoint"
    STATUS = "status"


SIGNALS = {
    signal.SIGTSTP: Action.SUSPEND,
    signal.SIGUSR1: Action.SUSPEND,
    signal.SIGCONT: Action.RESUME,
    signal.SIGTERM: Action.QUIT,
    signal.SIGINT: Action.QUIT,
    signal.SIGHUP: Action.QUIT,
}


@dataclass
class Request:
    action: Action
    source: str  # "SIGTERM", "socket"
    conn: socket.socket | None = None

    def reply(self, data: dict[str, Any]) -> None:
        if self.conn is None:
            return
        try:
            self.conn.sendall(json.dumps(data).encode() + b"\n")
        except OSError:
            pass  # the client went away
        finally:
            self.conn.close()
            self.conn = None


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path for ``bind``/``connect`` that fits in sun_path."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class Control:
    """Queues requests from signals and from the socket at ``socket_path``."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._pending: list[Request] = []
        self._old: dict[int, Any] = {}
        self._rpipe, self._wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup: int | None = None
        socket_path.unlink(missing_ok=True)  # left by a wrapper that was killed
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with _short_path(socket_path) as short:
            self._server.bind(short)
        self._server.listen(8)
        self._server.setblocking(False)

    def install_signals(self) -> None:
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_signal)
        # A signal wakes the loop's select() at once.
        self._old_wakeup = signal.set_wakeup_fd(self._wpipe, warn_on_full_buffer=False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self._pending.append(Request(SIGNALS[sig], sig.name))

    def wait(self, timeout: float) -> None:
        """Sleep until a request may have come, or ``timeout`` passes."""
        try:
            fds = [self._server.fileno(), self._rpipe]
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self._rpipe in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._rpipe, 512)

    def requests(self) -> list[Request]:
        """Every request queued since the last call, oldest first."""
        while True:
            try:
                conn, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                break
            request = self._read_request(conn)
            if request is not None:
                self._pending.append(request)
        pending, self._pending = self._pending, []
        return pending

    def _read_request(self, conn: socket.socket) -> Request | None:
        conn.setblocking(True)
        conn.settimeout(2.0)
        try:
            line = conn.makefile("rb").readline(256).decode(errors="replace").strip()
        except OSError:
            conn.close()
            return None
        try:
            action = Action(line)
        except ValueError:
            known = "|".join(a.value for a in Action)
            Request(Action.STATUS, "socket", conn).reply(
                {"ok": False, "error": f"unknown command {line!r}; expected {known}"}
            )
            return None
        return Request(action, "socket", conn)

    def resume_hint(self, slot: Path, source: str) -> str:
        """What happens to a job stopped with a checkpoint by a quit from ``source``: it
        goes on when someone runs the wrapper again."""
        return f"run `vmwu wrap` again in {slot} to resume"

    def status_changed(self, data: dict[str, Any]) -> None:
        """The wrapper wrote its status (``data``): nothing to do here, the status file is
        the report. A control source that reports elsewhere (BOINC) overrides this."""

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        self._server.close()
        self.socket_path.unlink(missing_ok=True)
        os.close(self._rpipe)
        os.close(self._wpipe)


def send(socket_path: Path, action: Action, *, timeout: float = 60.0) -> dict[str, Any]:
    """Send ``action`` to the wrapper listening on ``socket_path``; its JSON reply."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        with _short_path(socket_path) as short:
            client.connect(short)
        client.sendall(action.value.encode() + b"\n")
        line = client.makefile("rb").readline(1024 * 1024)
    except FileNotFoundError:
        raise BadInput(f"no vmwu wrap is listening on {socket_path} (not running?)") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR):
            raise BadInput(f"no vmwu wrap is listening on {socket_path} (not running?)") from None
        if isinstance(exc, TimeoutError):
            raise BadInput(
                f"the wrapper on {socket_path} did not answer in {timeout:g} s"
            ) from None
        raise BadInput(f"cannot talk to the wrapper on {socket_path}: {exc.strerror}") from None
    finally:
        client.close()
    try:
        reply = json.loads(line)
    except ValueError:
        raise BadInput(f"the wrapper on {socket_path} sent no reply") from None
    if not isinstance(reply, dict):
        raise BadInput(f"the wrapper on {socket_path} sent a malformed reply")
    return reply
