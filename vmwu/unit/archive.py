"""Writing a ``.ova``: ``NAME.ovf``, ``NAME.mf``, then the embedded files, as a POSIX tar.

Writing is deterministic: every tar header is fixed (mode, owner, one mtime), so the same
descriptor and sources give a byte-identical ``.ova`` (docs/ova-layout.md). Each source is
hashed while it is copied and must match the descriptor's sha256; the file appears
atomically, or not at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Final

from vmwu.errors import HostDiskFull, HostFailure
from vmwu.hostfs import is_disk_full
from vmwu.unit.descriptor import descriptor_member, manifest_member
from vmwu.unit.manifest import render_manifest
from vmwu.unit.model import UnitDescriptor, UnitFile
from vmwu.unit.ovf_render import render_ovf

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as bytes are copied or hashed."""

CHUNK: Final = 1024 * 1024


class _SourceShrank(Exception):
    pass


class _HashingSource:
    """Reads a source file for tarfile, hashing and reporting progress on the way.
    tarfile asks for exactly the declared size, so a short read means the file shrank."""

    def __init__(self, src: IO[bytes], step: Callable[[int], None]) -> None:
        self.src = src
        self.step = step
        self.digest = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.src.read(size)
        if size > 0 and len(chunk) < size:
            raise _SourceShrank
        self.digest.update(chunk)
        self.step(len(chunk))
        return chunk


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_ova(
    path: Path,
    desc: UnitDescriptor,
    members: Mapping[str, Path],
    *,
    mtime: int = 0,
    progress: Progress | None = None,
) -> None:
    """Write the unit to ``path``: ``NAME.ovf``, ``NAME.mf``, then the embedded files.

    ``members`` maps each embedded file's href to its source. Sizes and digests in
    ``desc`` must match the sources (ValueError otherwise: a bug, not user input). Same
    inputs give the same bytes. The file appears atomically; on ENOSPC nothing is left
    behind and HostDiskFull is raised.
    """
    embedded = desc.embedded_files()
    _check_sources(embedded, members)
    ovf = render_ovf(desc)
    ovf_name, mf_name = descriptor_member(desc), manifest_member(desc)
    manifest = render_manifest(
        [(ovf_name, hashlib.sha256(ovf).hexdigest())] + [(f.href, f.sha256) for f in embedded]
    )
    heads = [(ovf_name, ovf), (mf_name, manifest)]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as out:
            _write_tar(out, heads, embedded, members, mtime, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and is_disk_full(err):
            raise HostDiskFull(str(path)) from err
        if isinstance(err, _SourceShrank):
            raise ValueError(f"write_ova: a source of {path} shrank while copying") from None
        if isinstance(err, OSError):
            detail = f"{err.strerror}: {err.filename}" if err.filename else str(err)
            raise HostFailure(f"could not write {path}: {detail}") from err
        raise


def _check_sources(embedded: list[UnitFile], members: Mapping[str, Path]) -> None:
    """Every embedded file has a source of its declared size, and nothing else is given."""
    wanted = {f.href for f in embedded}
    if set(members) != wanted:
        missing = sorted(wanted - set(members))
        extra = sorted(set(members) - wanted)
        raise ValueError(f"write_ova: sources missing for {missing}, unexpected {extra}")
    for f in embedded:
        actual = members[f.href].stat().st_size
        if actual != f.size:
            raise ValueError(f"write_ova: {members[f.href]} is {actual} bytes, not {f.size}")


def _write_tar(
    out: IO[bytes],
    heads: list[tuple[str, bytes]],
    embedded: list[UnitFile],
    members: Mapping[str, Path],
    mtime: int,
    progress: Progress | None,
) -> None:
    """The tar itself: the small ``heads`` (descriptor, manifest), then each embedded file,
    hashed on the way and compared with the descriptor."""
    total = sum(len(blob) for _, blob in heads) + sum(f.size for f in embedded)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, total)

    pax = tarfile.PAX_FORMAT
    with tarfile.TarFile(fileobj=out, mode="w", format=pax, copybufsize=CHUNK) as tar:
        if progress is not None:
            progress(0, total)
        for name, blob in heads:
            tar.addfile(_tarinfo(name, len(blob), mtime), io.BytesIO(blob))
            step(len(blob))
        for f in embedded:
            with members[f.href].open("rb") as raw:
                src = _HashingSource(raw, step)
                tar.addfile(_tarinfo(f.href, f.size, mtime), src)
                if raw.read(1) or src.digest.hexdigest() != f.sha256:
                    raise ValueError(
                        f"write_ova: {members[f.href]} changed or does not match the "
                        f"descriptor's sha256 for {f.href}"
                    )
