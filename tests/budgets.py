"""Time limits for the tests whose fixtures build something slow.

pytest-timeout (``timeout = 600`` in pyproject.toml) times a test's set-up, call and
tear-down together, so the set-up of a module- or session-scoped fixture counts against
the first test that uses it: that test pays for a whole Debian base build, and a timeout
passed to the build's subprocess beyond the test's own limit never fires.

A fixture declared with :func:`slow_fixture` states what its set-up may take; the hook in
tests/conftest.py (:func:`add_budgets`) gives the first test that uses it, in the order
the tests run, that much more time (each test that uses it, if it is function-scoped).
The fixture passes a little less than its budget to the build's subprocess, so that a
build that hangs fails with its own message first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import pytest
from pytest_timeout import get_env_settings  # type: ignore[import-untyped]

F = TypeVar("F", bound=Callable[..., object])
Scope = Literal["function", "module", "session"]


@dataclass(frozen=True)
class Budget:
    seconds: float
    scope: Scope


BUDGETS: dict[str, Budget] = {}


def slow_fixture(seconds: float, *, scope: Scope) -> Callable[[F], F]:
    """``@pytest.fixture(scope=scope)`` whose set-up may take up to ``seconds``."""

    def declare(function: F) -> F:
        name = function.__name__
        if name in BUDGETS and BUDGETS[name] != Budget(seconds, scope):
            raise ValueError(f"slow fixture {name!r} declared twice with other budgets")
        BUDGETS[name] = Budget(seconds, scope)
        return pytest.fixture(scope=scope)(function)  # type: ignore[return-value]

    return declare


def own_timeout(item: pytest.Item) -> float:
    """The item's limit before budgets, as pytest-timeout finds it: its own ``timeout``
    mark, else --timeout, PYTEST_TIMEOUT or the ini value (0: no limit)."""
    mark = item.get_closest_marker("timeout")
    if mark is not None:
        value = mark.args[0] if mark.args else mark.kwargs.get("timeout")
        if value is not None:
            return float(value)
    return float(get_env_settings(item.config).timeout or 0)


def _instance(item: pytest.Item, scope: Scope) -> str:
    """Which instance of a fixture of that scope this test uses."""
    if scope == "function":
        return item.nodeid
    module = getattr(item, "module", None)
    return module.__name__ if scope == "module" and module is not None else ""


def add_budgets(items: list[pytest.Item]) -> None:
    """Raise the limit of each test that will be the first to set up a slow fixture."""
    paid: set[tuple[str, str]] = set()
    for item in items:
        extra = 0.0
        for name in getattr(item, "fixturenames", ()):
            budget = BUDGETS.get(name)
            if budget is None:
                continue
            key = (name, _instance(item, budget.scope))
            if key not in paid:
                paid.add(key)
                extra += budget.seconds
        if extra:
            base = own_timeout(item)
            if base > 0:  # 0: no limit at all (--timeout=0)
                item.add_marker(pytest.mark.timeout(base + extra), append=False)
