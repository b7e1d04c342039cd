"""File digests: SHA256 of a file, and SHA256 of what is copied while it is copied.

Both stream through :func:`hashlib.file_digest` (a reused 256 KiB buffer), so a file of any
size is hashed in constant memory, and a copy is hashed from the very bytes written: a
caller that compares the result with the digest it expected has verified the copy, not
the source as it was a moment before.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> tuple[str, int]:
    """(hex SHA256, size in bytes) of a file, read once, in chunks."""
    with path.open("rb") as src:
        digest = hashlib.file_digest(src, "sha256")
        return digest.hexdigest(), src.tell()


class Passing(io.RawIOBase):
    """A readable stream over ``src`` that hands every chunk read to ``sink`` on its way:
    given to :func:`hashlib.file_digest`, it hashes and copies in one pass."""

    def __init__(self, src: io.BufferedIOBase, sink: Callable[[memoryview], Any]) -> None:
        super().__init__()
        self.src = src
        self.sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer)
        n = self.src.readinto(view)
        if n:
            self.sink(view[:n])
        return n


def copy_sha256(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (created or truncated); the hex SHA256 of the bytes written."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        return hashlib.file_digest(Passing(fin, fout.write), "sha256").hexdigest()
