"""The node pool's protocol and its client: what ``vmwu run`` needs to have the node pool
service (:mod:`vmwu.run.poolserve`, docs/pool.md) run an instance.

This module is what a pooled ``vmwu run`` imports instead of the whole command line
(``vmwu/__main__.py``): it uses the standard library only, and few modules of it, because
a tiny job's ``vmwu run`` is mostly Python starting up (~0.12 s through vmwu.cli, ~0.05 s
through this). For the same reason :class:`Reply` is a plain class, not a dataclass
(``dataclasses`` alone costs ~20 ms to import).

Protocol: one request per connection, one JSON line each way, at most
:data:`MAX_REQUEST` / :data:`MAX_REPLY` bytes: ``{"v": 1, "run": [ARG, ...], "cwd": DIR}``
(or ``{"v": 1, "status": true}``) and ``{"v": 1, "exit": CODE, "error": LINE|null,
"summary": LINE|null}`` (``"local": true``: the client runs it itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_REPLY = 64 * 1024
ENV = "VMWU_POOL"
# vmwu.errors.ExitCode.HOST_FAILURE and INTERRUPTED (that module is not imported here;
# tests/test_pool_protocol.py checks that they agree)
HOST_FAILURE = 247
INTERRUPTED = 248


class BadRequest(ValueError):
    """A request (or reply) that is not one this protocol knows."""


class Reply:
    """The service's answer. ``local``: the service does not run such instances
    (--print-cmdline): the client runs it itself."""

    __slots__ = ("exit", "error", "summary", "local")

    def __init__(
        self, exit: int, error: str | None = None, summary: str | None = None, local: bool = False
    ) -> None:
        self.exit = exit
        self.error = error
        self.summary = summary
        self.local = local

    def _fields(self) -> tuple[int, str | None, str | None, bool]:
        return (self.exit, self.error, self.summary, self.local)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Reply(exit={!r}, error={!r}, summary={!r}, local={!r})".format(*self._fields())

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "v": VERSION,
            "exit": self.exit,
            "error": self.error,
            "summary": self.summary,
        }
        if self.local:
            doc["local"] = True
        return json.dumps(doc).encode() + b"\n"


def clean_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} is not a string")
    if len(value) > limit or "\x00" in value:
        raise BadRequest(f"{what} is too long or holds a NUL")
    return value


def versioned_line(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    """One JSON line of the protocol, at most ``limit`` bytes, of this version."""
    if len(raw) > limit:
        raise BadRequest(f"{what} too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not (isinstance(doc, dict) and type(doc.get("v")) is int and doc["v"] == VERSION):
        raise BadRequest(f"not a version 1 {what}")
    return doc


def parse_reply(raw: bytes) -> Reply:
    """The service's answer (the client trusts it no more than it must)."""
    doc = versioned_line(raw, MAX_REPLY, "reply")
    code = doc.get("exit")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise BadRequest("bad exit code")
    texts: list[str | None] = []
    for name in ("error", "summary"):
        value = doc.get(name)
        texts.append(None if value is None else clean_text(value, name, 8192))
    local = doc.get("local", False)
    if not isinstance(local, bool):
        raise BadRequest("bad local flag")
    return Reply(code, texts[0], texts[1], local)


def read_line(conn: socket.socket, limit: int, timeout: float) -> bytes:
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


def pool_socket() -> Path | None:
    """The service ``$VMWU_POOL`` names (a socket path; unset, empty, ``off``, or ``auto``
    that no local sweep has replaced by its own service's socket: none)."""
    value = os.environ.get(ENV)
    return Path(value) if value and value not in ("off", "auto") else None


def _reply_from(raw: bytes) -> Reply:
    if not raw:
        return Reply(HOST_FAILURE, "the node pool service ended during the run")
    try:
        return parse_reply(raw)
    except BadRequest as exc:
        return Reply(HOST_FAILURE, f"the node pool answered badly: {exc}")


def ask(sock_path: Path, request: dict[str, Any], timeout: float | None = None) -> Reply:
    """Send one request and read the reply (OSError when there is no service)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(os.fspath(sock_path))
        client.sendall(json.dumps(request).encode() + b"\n")
        raw = read_line(client, MAX_REPLY, timeout if timeout is not None else 1e9)
    return _reply_from(raw)


def run_via_pool(sock_path: Path, argv: list[str], cwd: Path | None = None) -> Reply | None:
    """Ask the service at ``sock_path`` to run ``vmwu run argv`` (typed in ``cwd``, by
    default this process's); None when there is no service to ask: the caller runs the
    instance itself."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(os.fspath(sock_path))
        except OSError as exc:
            import logging

            logging.getLogger(__name__).debug(
                "no node pool at %s (%s): running the instance here", sock_path, exc
            )
            return None
        request = {"v": VERSION, "run": argv, "cwd": os.fspath(cwd or Path.cwd())}
        try:
            client.sendall(json.dumps(request).encode() + b"\n")
            raw = read_line(client, MAX_REPLY, 24 * 3600.0 * 365)
        except OSError:  # reset or broken pipe: the service ended with our request in it
            raw = b""
        return _reply_from(raw)


def report(reply: Reply) -> int:
    """Print what ``vmwu run`` prints for ``reply``; its exit code."""
    if reply.error is not None:
        print(f"vmwu: error: {reply.error}", file=sys.stderr)
    elif reply.summary is not None:
        print(reply.summary, file=sys.stderr)
    return reply.exit


def main_run(argv: list[str]) -> int | None:
    """``vmwu run ARGV`` through the service named by ``$VMWU_POOL``: its exit code, or
    None when the command line must run it itself (no service, or one that says so)."""
    sock = pool_socket()
    if sock is None:
        return None
    # SIGTERM (a batch system's stop) and SIGHUP as Ctrl-C: this process ends, the
    # connection closes, and the service stops the instance, keeping what it left
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        reply = run_via_pool(sock, argv)
    except KeyboardInterrupt:
        print("vmwu: interrupted", file=sys.stderr)
        return INTERRUPTED
    if reply is None or reply.local:
        return None
    return report(reply)
