"""Tests of the tests' own helpers: a wait that reaches its deadline fails the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
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


INNER_CONFTEST = """
import pytest
from tests.budgets import add_budgets

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    add_budgets(items)
"""

INNER_TESTS = """
import time
import pytest
from tests.budgets import own_timeout, slow_fixture

@slow_fixture(5, scope="module")
def built():
    time.sleep(2)  # longer than --timeout 1, within its budget

def test_a(request):
    print("LIMIT", request.node.name, own_timeout(request.node))

def test_b(built, request):
    print("LIMIT", request.node.name, own_timeout(request.node))

def test_c(built, request):
    print("LIMIT", request.node.name, own_timeout(request.node))

@pytest.mark.timeout(3)
def test_d(request):
    print("LIMIT", request.node.name, own_timeout(request.node))
"""


def inner_pytest(
    tmp_path: Path, *args: str, conftest: str = INNER_CONFTEST
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    argv = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "--timeout", "1"]
    return subprocess.run(
        [*argv, "--rootdir", str(tmp_path), *args, str(tmp_path / "test_inner.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def limits(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    found = re.findall(r"LIMIT (\S+) (\S+)$", result.stdout, re.MULTILINE)
    return {name: float(value) for name, value in found}


def test_the_first_test_to_set_up_a_slow_fixture_gets_its_budget(tmp_path: Path) -> None:
    result = inner_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert limits(result) == {"test_a": 1, "test_b": 6, "test_c": 1, "test_d": 3}
    # with the first user deselected, the next one pays (and the fixture still fits)
    result = inner_pytest(tmp_path, "-k", "not test_b")
    assert result.returncode == 0, result.stdout + result.stderr
    assert limits(result) == {"test_a": 1, "test_c": 6, "test_d": 3}


def test_without_its_budget_the_fixture_times_out(tmp_path: Path) -> None:
    """The check above can fail: pytest-timeout does count a fixture's set-up."""
    result = inner_pytest(tmp_path, conftest="")
    assert "Timeout" in result.stdout and result.returncode == 1, result.stdout
