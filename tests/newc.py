"""A reader of the initramfs archives vmwu writes (gzip'd cpio "newc"), written apart from
vmwu.images.cpio so that the tests check its writer against the format, not against
itself."""

from __future__ import annotations

import gzip
from pathlib import Path

from vmwu.images import cpio


def read_newc(data: bytes) -> list[cpio.CpioEntry]:
    """The entries of an uncompressed newc archive, up to its trailer."""
    entries: list[cpio.CpioEntry] = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"no newc header at byte {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries.append(cpio.CpioEntry(name, mode, body, rdev))


def read_initramfs(path: Path) -> list[cpio.CpioEntry]:
    """The entries of a gzip'd newc archive (the format ``vmwu.images.cpio`` writes)."""
    return read_newc(gzip.decompress(path.read_bytes()))
