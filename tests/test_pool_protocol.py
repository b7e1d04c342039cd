"""The node pool service's messages (vmwu.run.poolclient, vmwu.run.poolserve): whatever
arrives on the socket is a request or reply of the protocol, or refused with BadRequest;
nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwu.run.poolclient import MAX_REQUEST, BadRequest, Reply, parse_reply
from vmwu.run.poolserve import parse_request


def test_a_run_request() -> None:
    raw = json.dumps({"v": 1, "run": ["u.ova", "--", "a b"], "cwd": "/w"}).encode() + b"\n"
    request = parse_request(raw)
    assert request.run == ("u.ova", "--", "a b") and request.cwd == Path("/w")
    assert not request.status
    assert parse_request(b'{"v": 1, "status": true}').status


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        b"[]",
        b'{"v": 2, "run": [], "cwd": "/"}',
        b'{"v": 1, "run": [], "cwd": "relative"}',
        b'{"v": 1, "run": [1], "cwd": "/"}',
        b'{"v": 1, "run": ["a\\u0000b"], "cwd": "/"}',
        b'{"v": 1, "run": [], "cwd": "/", "env": {}}',
        b'{"v": 1, "status": 1}',
        b'{"v": true, "run": [], "cwd": "/"}',
        b" " * (MAX_REQUEST + 1),
    ],
)
def test_requests_that_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(raw)


def test_a_reply_round_trips() -> None:
    for reply in (Reply(3, None, "vmwu: u: exit 3"), Reply(0, local=True), Reply(245, "x")):
        assert parse_reply(reply.encode()) == reply
    for bad in (b'{"v":1,"exit":256}', b'{"v":1,"exit":true}', b'{"v":1,"exit":0,"error":5}'):
        with pytest.raises(BadRequest):
            parse_reply(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
documents = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 2, True, "1"])},
    optional={
        "run": st.one_of(st.lists(st.text(), max_size=5), json_values),
        "cwd": st.one_of(st.text(), st.just("/w")),
        "status": json_values,
        "exit": st.one_of(st.integers(-5, 300), json_values),
        "error": json_values,
        "summary": json_values,
        "local": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), documents.map(lambda d: json.dumps(d).encode())))
def test_any_bytes_are_a_message_or_refused(raw: bytes) -> None:
    try:
        request = parse_request(raw)
    except BadRequest:
        pass
    else:
        assert request.status or request.cwd.is_absolute()
        assert all(isinstance(a, str) and "\x00" not in a for a in request.run)
    try:
        reply = parse_reply(raw)
    except BadRequest:
        pass
    else:
        assert 0 <= reply.exit <= 255
        assert reply.error is None or isinstance(reply.error, str)


def test_the_lean_client_speaks_the_exit_codes_of_vmwu_errors() -> None:
    from vmwu.errors import ExitCode
    from vmwu.run import poolclient

    assert poolclient.HOST_FAILURE == ExitCode.HOST_FAILURE
    assert poolclient.INTERRUPTED == ExitCode.INTERRUPTED


def test_a_pooled_vmwu_run_imports_no_more_than_its_client(tmp_path: Path) -> None:
    """`vmwu run` with $VMWU_POOL set hands the run over before vmwu.cli is imported (a
    tiny job's run is mostly Python starting up); the service's answer is its outcome."""
    import os
    import socket
    import subprocess
    import sys
    import threading

    sock_path = tmp_path / "pool.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    seen: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(4096)
            seen.append(data)
            conn.sendall(Reply(7, None, "summary line").encode())

    thread = threading.Thread(target=answer)
    thread.start()
    probe = (
        "import sys, runpy; sys.argv = ['vmwu', 'run', 'u.ova', '--', 'a b'];\n"
        "try:\n    runpy.run_module('vmwu', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print(int(e.code), 'vmwu.cli' in sys.modules, 'dataclasses' in sys.modules)\n"
    )
    env = {**os.environ, "VMWU_POOL": str(sock_path)}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    thread.join(timeout=30)
    server.close()
    assert result.stdout.split() == ["7", "False", "False"], result.stderr
    assert "summary line" in result.stderr
    request = parse_request(seen[0])
    assert request.run == ("u.ova", "--", "a b") and request.cwd == tmp_path


def test_a_service_that_resets_the_connection_is_a_host_failure(tmp_path: Path) -> None:
    """The service dying with the request in it (connection reset, not a clean close)
    is vmwu's failure (247, which a sweep retries), not an exception out of the client."""
    import socket
    import struct
    import threading

    from vmwu.run.poolclient import HOST_FAILURE, run_via_pool

    sock_path = tmp_path / "pool.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)

    def reset() -> None:
        conn, _ = server.accept()
        conn.recv(10)  # part of the request read, the rest left unread: close resets
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=reset)
    thread.start()
    reply = run_via_pool(sock_path, ["u.ova", "x" * 200_000], cwd=tmp_path)
    thread.join(timeout=30)
    server.close()
    assert reply == Reply(HOST_FAILURE, "the node pool service ended during the run")
