"""Sparse copies and content digests of files that survive crashes (atomic writes are
:mod:`vmwu.hostfs`'s).

Warm-started instance disks are 256 GiB sparse files holding a few MiB of data, so disks
are copied and hashed extent by extent (``SEEK_DATA``/``SEEK_HOLE``), never byte by byte.
The digest must not depend on how a file system happens to lay out holes: it covers the
file size and every 64 KiB block (on a fixed grid) that is not all zeros, with its offset.
The same bytes therefore give the same digest whether a zero block is a hole or not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from vmwu.errors import HostFailure
from vmwu.hostfs import data_extents, os_failure

BLOCK = 64 * 1024
_ZERO = bytes(BLOCK)


def _blocks(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """Every non-zero block on the BLOCK grid, in order, each once."""
    done = 0  # blocks below this offset have been looked at
    for start, end in data_extents(fd, size):
        pos = max(start - start % BLOCK, done)
        while pos < end:
            n = min(BLOCK, size - pos)
            buf = os.pread(fd, n, pos)
            if len(buf) != n:
                raise HostFailure(f"short read at offset {pos}: the file changed while read")
            if buf != _ZERO[:n]:
                yield pos, buf
            pos += n
        done = pos


def _digest_update(h: hashlib._Hash, pos: int, buf: bytes) -> None:
    h.update(pos.to_bytes(8, "little"))
    h.update(buf)


def digest(path: Path) -> tuple[int, str]:
    """(size, digest) of a file, as :func:`sparse_copy` computes it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise os_failure(exc, str(path)) from exc
    try:
        size = os.fstat(fd).st_size
        h = hashlib.sha256(f"vmwu-sparse-v1 {size}\n".encode())
        for pos, buf in _blocks(fd, size):
            _digest_update(h, pos, buf)
        return size, h.hexdigest()
    finally:
        os.close(fd)


def sparse_copy(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to a new file ``dst`` keeping holes, fsync it, and return (size,
    digest) of what was read. Raises :class:`HostDiskFull` when the disk fills up (``dst``
    is then removed)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        os.close(fd)
        raise os_failure(exc, str(dst.parent)) from exc
    try:
        size = os.fstat(fd).st_size
        h = hashlib.sha256(f"vmwu-sparse-v1 {size}\n".encode())
        os.ftruncate(out, size)
        for pos, buf in _blocks(fd, size):
            _digest_update(h, pos, buf)
            view = memoryview(buf)
            while view:
                written = os.pwrite(out, view, pos)
                view, pos = view[written:], pos + written
        os.fsync(out)
    except OSError as exc:
        os.close(out)
        dst.unlink(missing_ok=True)
        raise os_failure(exc, str(dst.parent)) from exc
    except BaseException:
        os.close(out)
        dst.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    os.close(out)
    return size, h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
