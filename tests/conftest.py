"""Shared fixtures. Every test runs with its own VMWU_HOME so nothing touches the user's
catalog or cache."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: budgets go to tests that run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from tests.budgets import add_budgets

    add_budgets(items)


@pytest.fixture
def vmwu_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "vmwu-home"
    monkeypatch.setenv("VMWU_HOME", str(home))
    monkeypatch.delenv("VMWU_CATALOG", raising=False)
    monkeypatch.delenv("VMWU_CACHE_DIR", raising=False)
    return home


def run_vmwu(
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as users do."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "vmwu", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli() -> Iterator[object]:
    yield run_vmwu


@pytest.fixture
def process_mark(tmp_path: Path) -> Iterator[str]:
    """A marker for the processes a test starts (tests/processes.py: put it in their
    environment as MARK). Whatever still carries it when the test ends is killed, so a
    failing test leaves nothing running."""
    from tests.processes import carrying

    mark = str(tmp_path)
    yield mark
    for pid in carrying(mark):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
