"""A writer for the "newc" cpio format the Linux kernel unpacks as an initramfs.

Hand-written (30 lines) rather than calling cpio(1) because an initramfs needs root-owned
entries and device nodes, which an ordinary user cannot stage on disk, and because we
want byte-identical archives (fixed times, inode numbers, order).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpioEntry:
    path: str  # without leading "/"
    mode: int  # full st_mode (type bits included)
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # device major/minor for device nodes


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _write(out: gzip.GzipFile, ino: int, entry: CpioEntry, mtime: int) -> None:
    name = entry.path.encode() + b"\0"
    fields = [
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,
        mtime,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,
    ]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + name + _pad(len(header) + len(name)))
    out.write(entry.data + _pad(len(entry.data)))


def write_initramfs(dest: Path, entries: list[CpioEntry], *, mtime: int = 0) -> None:
    """Write a gzip-compressed newc archive. Parent directories must come before their
    children; entries are written in the given order."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
    ):
        for ino, entry in enumerate(entries, start=1):
            _write(out, ino, entry, mtime)
        _write(out, len(entries) + 1, CpioEntry("TRAILER!!!", 0), 0)


def directory(path: str, mode: int = 0o755) -> CpioEntry:
    return CpioEntry(path, stat.S_IFDIR | mode)


def file(path: str, data: bytes, mode: int = 0o644) -> CpioEntry:
    return CpioEntry(path, stat.S_IFREG | mode, data)


def symlink(path: str, target: str) -> CpioEntry:
    return CpioEntry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, mode: int = 0o600) -> CpioEntry:
    return CpioEntry(path, stat.S_IFCHR | mode, rdev=(major, minor))
