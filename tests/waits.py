"""Waiting in tests: the one polling helper.

A test never sleeps for a fixed time hoping something has happened by then: it waits for
the thing itself (a status file, an event, a process state) with a generous deadline, and
a wait that reaches its deadline fails the test saying what it waited for and what it saw
last. The deadlines are generous because guests boot under TCG on a shared machine:
nothing is asserted about how long anything takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A wait reached its deadline (an AssertionError: the test fails, it does not err)."""


def wait_for(
    what: Callable[[], T | None],
    timeout: float,
    message: str,
    *,
    interval: float = 0.1,
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``what`` until it returns something true and return that; at ``timeout``
    seconds fail with "timed out after N s waiting for MESSAGE (last seen: VALUE)",
    followed by what ``context`` returns then (a log's tail, say). ``what`` is called once
    more at the deadline, so a slow poll still gets its chance; it may raise
    AssertionError itself to give up early (the process it waits on has died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = repr(value)
            if len(seen) > 300:
                seen = seen[:300] + "..."
            text = f"timed out after {timeout:g} s waiting for {message} (last seen: {seen})"
            if context is not None:
                text += "\n" + context()
            raise WaitTimeout(text)
        time.sleep(interval)
