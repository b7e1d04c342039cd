"""A lock file that says which process holds it: one sweep driver per results directory,
one wrapper per slot. An ``flock`` (released by the kernel even after ``kill -9``) on a
file holding the holder's pid, so that the refusal can name it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vmwu.errors import BadInput


@contextlib.contextmanager
def held_by_this_process(path: Path, what: str, where: str, *, hint: str) -> Iterator[None]:
    """Hold ``path`` exclusively for the ``with`` block, or refuse at once with
    "another {what} (pid N) is running {where}" when another process holds it."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            raise BadInput(f"another {what} (pid {pid}) is running {where}", hint=hint) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def holder(path: Path) -> int | None:
    """The pid of the process holding ``path``, or None if nobody does."""
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None
