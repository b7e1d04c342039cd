"""The node pool service's messages (vmwu.run.poolserve): whatever arrives on the socket
is a request or reply of the protocol, or refused with BadRequest; nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwu.run.poolserve import MAX_REQUEST, BadRequest, Reply, parse_reply, parse_request


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
