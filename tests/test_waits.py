"""Tests of the tests' own helpers: a wait that reaches its deadline fails the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.waits import WaitTimeout, wait_for


def test_a_wait_returns_the_first_true_value() -> None:
    values: Iterator[object] = iter([None, 0, {}, "ready", "later"])
    assert wait_for(lambda: next(values), 10, "the value", interval=0) == "ready"


def test_a_wait_fails_at_its_deadline_saying_what_it_waited_for_and_saw() -> None:
    calls: list[float] = []

    def status() -> dict[str, str]:
        calls.append(0)
        return {}

    with pytest.raises(AssertionError) as err:
        wait_for(status, 0.2, "the guest's status")
    assert isinstance(err.value, WaitTimeout)
    assert str(err.value) == "timed out after 0.2 s waiting for the guest's status (last seen: {})"
    assert len(calls) >= 2  # polled, and once more at the deadline


class Falsy:
    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "x" * 1000


def test_a_long_last_value_is_shortened() -> None:
    with pytest.raises(WaitTimeout, match=r"\(last seen: x{300}\.\.\.\)$"):
        wait_for(Falsy, 0, "nothing")


def test_a_failed_wait_adds_its_context() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for boot \(last seen: ''\)\nlog: no init$"):
        wait_for(str, 0, "boot", context=lambda: "log: no init")
