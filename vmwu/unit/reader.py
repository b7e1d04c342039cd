"""Reading a ``.ova`` of unknown origin: every tar header, the descriptor and the manifest
are checked against each other before a byte of a disk is used (docs/ova-layout.md).

The reader never extracts by name, accepts regular files with flat names only, walks at
most as many headers as the descriptor declares, and trusts no size or digest it has not
checked against the descriptor and the manifest.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from vmwu.errors import HostDiskFull, HostFailure, UnitError
from vmwu.hostfs import is_disk_full
from vmwu.unit.archive import Progress
from vmwu.unit.descriptor import MAX_DESCRIPTOR_BYTES, member_name_problem
from vmwu.unit.manifest import MAX_MANIFEST_BYTES, parse_manifest
from vmwu.unit.model import UnitDescriptor, UnitFile
from vmwu.unit.ovf_parse import parse_ovf

_TYPE_NAMES: Final[Mapping[bytes, str]] = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}

_COMPRESSION_MAGIC: Final = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


class OvaReader:
    """A ``.ova`` opened for reading, every header checked (see docs/ova-layout.md).

    Opening validates the structure and the descriptor against the tar headers and the
    manifest without reading the disks; :meth:`verify` hashes them; :meth:`extract`
    copies one member, verifying it on the way. Use as a context manager.
    """

    descriptor: UnitDescriptor
    manifest: dict[str, str]  # member -> sha256, as listed in the .mf
    members: dict[str, int]  # member -> size, in tar order
    ovf_member: str
    manifest_member: str

    def __init__(self, path: Path, *, max_member_size: int | None = None) -> None:
        self.path = Path(path)
        self.max_member_size = max_member_size
        self.compression: str | None = None  # "gz", "bz2", "xz" or None
        self.members = {}
        self._infos: dict[str, tarfile.TarInfo] = {}
        try:
            self._raw = self.path.open("rb")
        except OSError as err:
            raise UnitError(f"cannot open {self.path}: {err.strerror}") from None
        self._tar: tarfile.TarFile | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- context manager

    def __enter__(self) -> OvaReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._raw.close()

    # -- opening

    def _fail(self, message: str, *, hint: str | None = None) -> UnitError:
        return UnitError(f"{self.path}: {message}", hint=hint)

    def _truncated(self, detail: object) -> UnitError:
        return UnitError(
            f"{self.path} is truncated or damaged: {detail}",
            hint="re-copy the unit; compare its size with the original",
        )

    def _open(self) -> None:
        self._open_tar()
        ovf_bytes = self._read_descriptor()
        self._read_manifest()
        self._walk_members()
        self._check_end()
        self._check_agreement(ovf_bytes)

    def _open_tar(self) -> None:
        magic = self._raw.read(6)
        self._raw.seek(0)
        for prefix, kind in _COMPRESSION_MAGIC:
            if magic.startswith(prefix):
                self.compression = kind
        try:
            self._tar = tarfile.open(fileobj=self._raw, mode="r:*")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            if self.compression is not None and not isinstance(err, tarfile.ReadError):
                raise self._truncated(err) from None
            raise UnitError(f"{self.path} is not a .ova (tar) file") from None

    def _read_descriptor(self) -> bytes:
        """Read and parse the first member, the ``.ovf``; its bytes (for the manifest)."""
        ovf_info = self._next()
        if ovf_info is None:
            raise UnitError(f"{self.path} is not a .ova (tar) file: the archive is empty")
        if not ovf_info.name.endswith(".ovf"):
            raise self._fail(
                f"the first member is {ovf_info.name!r}; a .ova starts with its .ovf descriptor"
            )
        self.ovf_member = ovf_info.name
        if ovf_info.size > MAX_DESCRIPTOR_BYTES:
            raise self._fail(f"descriptor {ovf_info.name} is {ovf_info.size} bytes, too large")
        ovf_bytes = self._read_small(ovf_info)
        self.descriptor = parse_ovf(ovf_bytes, f"{ovf_info.name} in {self.path}")
        return ovf_bytes

    def _read_manifest(self) -> None:
        """Read and parse the second member, which must be the ``.mf`` of the same name."""
        stem = self.ovf_member[: -len(".ovf")]
        mf_info = self._next()
        if mf_info is None or mf_info.name != f"{stem}.mf":
            found = "nothing" if mf_info is None else repr(mf_info.name)
            raise self._fail(f"the second member is {found}; expected the manifest {stem}.mf")
        self.manifest_member = mf_info.name
        if mf_info.size > MAX_MANIFEST_BYTES:
            raise self._fail(f"manifest {mf_info.name} is {mf_info.size} bytes, too large")
        self.manifest = parse_manifest(self._read_small(mf_info), f"{mf_info.name} in {self.path}")

    def _walk_members(self) -> None:
        """Every further header: a declared embedded file of exactly its declared size.

        Names are unique, so this loop runs at most once per declared file before an
        error: a hostile tar cannot make us walk millions of headers."""
        declared = {f.href: f for f in self.descriptor.embedded_files()}
        referenced = {f.href for f in self.descriptor.referenced_files()}
        while (info := self._next()) is not None:
            f = declared.get(info.name)
            if f is None:
                if info.name in referenced:
                    raise self._fail(
                        f"member {info.name!r} is declared as referenced by sha256, "
                        "not embedded; the unit is inconsistent"
                    )
                raise self._fail(f"member {info.name!r} is not declared in the descriptor")
            if info.size > f.size:
                raise self._fail(
                    f"member {info.name!r} is larger than declared "
                    f"({info.size} bytes, the descriptor says {f.size})"
                )
            if info.size < f.size:
                raise self._truncated(
                    f"member {info.name!r} is {info.size} bytes, the descriptor says {f.size}"
                )

    def _check_agreement(self, ovf_bytes: bytes) -> None:
        """The members, the manifest and the descriptor all name the same files and
        digests, and the manifest's digest of the descriptor is right."""
        declared = {f.href: f for f in self.descriptor.embedded_files()}
        for href in declared:
            if href not in self.members:
                raise self._fail(f"member {href!r} declared in the descriptor is missing")
        listed = set(self.manifest)
        expected = set(self.members) - {self.manifest_member}
        if listed != expected:
            if expected - listed:
                what = f"does not list {sorted(expected - listed)[0]!r}"
            else:
                what = f"lists {sorted(listed - expected)[0]!r}, which is not a member"
            raise self._fail(f"manifest {self.manifest_member} {what}")
        if self.manifest[self.ovf_member] != hashlib.sha256(ovf_bytes).hexdigest():
            raise self._mismatch(self.ovf_member)
        for href, f in declared.items():
            if self.manifest[href] != f.sha256:
                raise self._fail(
                    f"the manifest and the descriptor disagree on the sha256 of {href!r}",
                    hint="the unit is corrupt; re-copy it",
                )

    def _next(self) -> tarfile.TarInfo | None:
        assert self._tar is not None
        try:
            info = self._tar.next()
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as err:
            raise self._truncated(err) from None
        if info is None:
            return None
        name = info.name
        problem = member_name_problem(name)
        if problem:
            raise self._fail(f"member {name!r} {problem}; refusing to read the unit")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
            kind = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
            if info.sparse is not None:
                kind = "a sparse file"
            raise self._fail(
                f"member {name!r} is {kind}; a .ova holds regular files only",
                hint="refusing to read a possibly malicious unit",
            )
        if name in self.members:
            raise self._fail(f"member {name!r} appears twice")
        if self.max_member_size is not None and info.size > self.max_member_size:
            raise self._fail(
                f"member {name!r} is {info.size} bytes, over the limit of {self.max_member_size}"
            )
        self.members[name] = info.size
        self._infos[name] = info
        return info

    def _check_end(self) -> None:
        """The walk ended: it must have been at an end-of-archive (zero) block, not at a
        short read or an unreadable header, which tarfile silently treats as the end."""
        assert self._tar is not None and self._tar.fileobj is not None
        fileobj = self._tar.fileobj
        try:
            fileobj.seek(self._tar.offset)
            block = fileobj.read(tarfile.BLOCKSIZE)
        except (EOFError, zlib.error, OSError) as err:
            raise self._truncated(err) from None
        if len(block) < tarfile.BLOCKSIZE:
            raise self._truncated(f"no end-of-archive marker at byte {self._tar.offset}")
        if block.count(0) != tarfile.BLOCKSIZE:
            raise self._truncated(f"unreadable tar header at byte {self._tar.offset}")

    def _read_small(self, info: tarfile.TarInfo) -> bytes:
        stream = self._stream(info)
        try:
            data = stream.read(info.size)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise self._truncated(err) from None
        if len(data) != info.size:
            raise self._truncated(f"member {info.name!r} is cut short")
        return data

    def _stream(self, info: tarfile.TarInfo) -> IO[bytes]:
        assert self._tar is not None
        stream = self._tar.extractfile(info)
        assert stream is not None  # regular files only
        return stream

    def _mismatch(self, member: str) -> UnitError:
        return UnitError(
            f"manifest mismatch for {member} in {self.path}: the unit is corrupt; re-copy it"
        )

    # -- using

    def _copy(
        self,
        f: UnitFile,
        write: Callable[[bytes], object] | None,
        progress: Progress | None,
        done: int,
        total: int,
    ) -> None:
        """Stream member ``f`` (exactly its declared size) through sha256 and ``write``;
        UnitError when it is short or its digest differs from the manifest."""
        if self._tar is None:
            raise ValueError(f"{self.path} is closed")
        src = self._stream(self._infos[f.href])
        stream = _MemberStream(self, f, src, write, progress, done, total)
        if hashlib.file_digest(stream, "sha256").hexdigest() != self.manifest[f.href]:
            raise self._mismatch(f.href)

    def identity(self) -> str:
        """A name for the exact file being read (device, inode, size, mtime and ctime of
        the open file): the node cache remembers a verified unit under it, and any change
        to the file (a copy over it, an edit, even a ``touch``) gives another name."""
        st = os.fstat(self._raw.fileno())
        ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]

    def verify_member(self, href: str) -> None:
        """Hash embedded member ``href`` against the manifest (UnitError if it differs)."""
        f = next((f for f in self.descriptor.embedded_files() if f.href == href), None)
        if f is None:
            raise ValueError(f"{href!r} is not an embedded member of {self.path}")
        self._copy(f, None, None, 0, f.size)

    def verify(self, progress: Progress | None = None) -> None:
        """Hash every embedded member against the manifest (and so the descriptor)."""
        files = self.descriptor.embedded_files()
        total = sum(f.size for f in files)
        done = 0
        if progress is not None:
            progress(0, total)
        for f in files:
            self._copy(f, None, progress, done, total)
            done += f.size

    def extract(self, href: str, dest: Path, *, progress: Progress | None = None) -> None:
        """Copy embedded member ``href`` to ``dest`` (a temporary path chosen by the
        caller), verifying its size and sha256 on the way. On any failure ``dest`` is
        removed: UnitError if the member is corrupt, HostDiskFull on ENOSPC."""
        f = next((f for f in self.descriptor.embedded_files() if f.href == href), None)
        if f is None:
            raise ValueError(f"{href!r} is not an embedded member of {self.path}")
        try:
            with dest.open("wb") as out:
                if progress is not None:
                    progress(0, f.size)
                self._copy(f, out.write, progress, 0, f.size)
        except BaseException as err:
            dest.unlink(missing_ok=True)
            if isinstance(err, OSError) and is_disk_full(err):
                raise HostDiskFull(str(dest.parent)) from err
            if isinstance(err, OSError):
                raise HostFailure(f"could not write {dest}: {err.strerror}") from err
            raise


class _MemberStream(io.RawIOBase):
    """Exactly the declared bytes of one member, for :func:`hashlib.file_digest`: each
    chunk is passed to ``write`` and counted for ``progress`` on its way; a read error or
    a short member is the unit's fault (UnitError), never a silent end of file."""

    def __init__(
        self,
        reader: OvaReader,
        f: UnitFile,
        src: IO[bytes],
        write: Callable[[bytes], object] | None,
        progress: Progress | None,
        done: int,
        total: int,
    ) -> None:
        super().__init__()
        self.reader, self.href, self.src = reader, f.href, src
        self.remaining = f.size
        self.sink, self.progress = write, progress
        self.done, self.total = done, total

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        if self.remaining <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self.remaining)]
        try:
            chunk = self.src.read(len(view))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise self.reader._truncated(err) from None
        if not chunk:
            raise self.reader._truncated(f"member {self.href!r} is cut short")
        n = len(chunk)
        view[:n] = chunk
        if self.sink is not None:
            self.sink(chunk)
        self.remaining -= n
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)
        return n
