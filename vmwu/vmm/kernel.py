"""Faster direct boot: the decompressed kernel, booted through PVH.

An x86 bzImage spends ~0.5 s of TCG time decompressing itself. Debian kernels are built
with ``CONFIG_PVH=y``, so QEMU can start the decompressed ELF ``vmlinux`` directly. We
find the compressed payload inside the bzImage (LZ4 for Debian's cloud kernel; gzip, xz
and zstd too), decompress it once per kernel into the node cache, and check that it is an
ELF carrying the PVH entry note. Anything unexpected: boot the bzImage as it is.
"""

from __future__ import annotations

import logging
import lzma
import struct
import zlib
from pathlib import Path

from vmwu import tools
from vmwu.cache import NodeCache
from vmwu.errors import VmwuError

log = logging.getLogger(__name__)

_MAGICS = (
    (b"\x02\x21\x4c\x18", "lz4"),  # LZ4 legacy frame, as the kernel's build writes it
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd\x37\x7a\x58\x5a\x00", "xz"),
    (b"\x1f\x8b\x08\x00", "gzip"),
)
_XEN_ELFNOTE_PHYS32_ENTRY = 18
# A kernel comes from a unit, which may be hostile: its payload is decompressed to at most
# this much (Debian's vmlinux is ~60 MiB), so a decompression bomb costs no more.
MAX_VMLINUX = 512 * 1024**2


def has_pvh_note(elf: bytes) -> bool:
    """True if ``elf`` is a 64-bit little-endian ELF with a Xen PHYS32_ENTRY note (False
    for anything else, a truncated or inconsistent ELF included)."""
    try:
        return _has_pvh_note(elf)
    except struct.error:  # offsets that point past the end
        return False


def _has_pvh_note(elf: bytes) -> bool:
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _decompress(data: bytes, kind: str, work: Path) -> bytes:
    """The decompressed payload; at most MAX_VMLINUX bytes (more is refused: OSError)."""
    if kind == "gzip":  # stops at the stream end
        out = zlib.decompressobj(wbits=31).decompress(data, MAX_VMLINUX)
    elif kind == "xz":
        out = lzma.LZMADecompressor().decompress(data, max_length=MAX_VMLINUX)
    else:  # lz4 legacy frames and zstd: the command-line tools (packages lz4, zstd)
        src = work.with_suffix(".payload")
        dst = work.with_suffix(".vmlinux")
        src.write_bytes(data)
        try:
            tool = "lz4" if kind == "lz4" else "zstd"
            # The payload is followed by the bzImage's trailer; the tools decode the frame
            # and may complain about what follows, so don't insist on exit code 0. The
            # output goes to a file the tool may not grow past the limit (SIGXFSZ).
            limits = tools.Limits(file_size=MAX_VMLINUX, cpu_seconds=120)
            with open(dst, "wb") as fh:
                tools.run([tool, "-dc", src], check=False, stdout=fh.fileno(), limits=limits)
            with open(dst, "rb") as fh:
                out = fh.read(MAX_VMLINUX)
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)
    if len(out) >= MAX_VMLINUX:
        raise OSError(f"the kernel's payload decompresses to more than {MAX_VMLINUX} bytes")
    return out


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Write the PVH-bootable vmlinux inside ``bzimage`` to ``dest``; False if none."""
    data = bzimage.read_bytes()
    for magic, kind in _MAGICS:
        start = data.find(magic)
        if start < 0:
            continue
        try:
            elf = _decompress(data[start:], kind, dest)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, VmwuError) as exc:
            log.debug("%s payload of %s did not decompress: %s", kind, bzimage, exc)
            continue
        if has_pvh_note(elf):
            dest.write_bytes(elf)
            return True
    return False


def boot_kernel(bzimage: Path, sha256: str, cache: NodeCache) -> Path:
    """The fastest file to pass as ``-kernel`` for this x86 kernel: its cached PVH
    vmlinux when there is one, the bzImage otherwise."""
    marker = cache.root / "derived" / f"{sha256}.no-pvh"
    if marker.exists():
        return bzimage

    def fill(tmp: Path) -> None:
        if not extract_vmlinux(bzimage, tmp):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise _NoPvh

    try:
        return cache.ensure_derived(f"{sha256}.vmlinux", fill)
    except _NoPvh:
        return bzimage


class _NoPvh(Exception):
    pass
