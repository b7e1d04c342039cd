"""Faults injected into vmwu's own process by tests: a host disk that fills up."""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Callable
from typing import Any

import pytest


def fill_disk_for(monkeypatch: pytest.MonkeyPatch, hit: Callable[[str], bool]) -> None:
    """Writes to files whose path ``hit`` accepts fail with ENOSPC, whether they are made
    with ``open`` or through vmwu's file-descriptor door (``os.open``/``os.write``)."""
    real_open, real_write = builtins.open, os.write

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and isinstance(file, str | os.PathLike):
            if hit(os.fspath(file)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    def full_write(fd: int, data: Any) -> int:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if hit(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("builtins.open", full_open)
    monkeypatch.setattr(os, "write", full_write)
