"""The one door for untrusted content reaching the host's file system.

Everything a guest produces (its output disk: names, links, sizes) and everything copied
onward from it (a wrapper's ``copy_file_from_VM``, a sweep's ``copy node:FILE``) is written
through :class:`SafeDir`: a directory held open by descriptor, in which every entry is
created relative to that descriptor and no path component is ever resolved through a
symbolic link (``O_NOFOLLOW`` on every open, ``O_DIRECTORY`` for every step down, ``O_EXCL``
for every file created). So a name can never lead outside the directory it is written in:

- names with ``/``, NUL, ``.``, ``..``, the empty name or more than 255 bytes are refused;
- a link left by the guest is never followed, neither to write nor to read; links are
  recreated as links, last, by whoever copies a tree (see ``vmwu.images.ext4_read``);
- device nodes, FIFOs and sockets are never created nor opened: they are skipped and listed;
- vmwu's own files (status.json, logs) are written with :meth:`SafeDir.write_atomic`, a
  fresh temporary name plus a rename, which replaces a guest's entry of that name instead of
  writing through it.

The directory a caller opens first (an output directory, a slot, a results folder) is the
user's own and is trusted; only what lies beneath it is not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmwu.errors import HostDiskFull, HostFailure, UnsafeContent

NAME_MAX = 255
# Modes vmwu gives what it writes: the guest's permission bits, never set-id or sticky bits
# (a set-uid file made by a guest must not become a set-uid file of the host user).
PERMISSION_BITS = 0o777
_CHUNK = 1 << 20
_ZERO = bytes(_CHUNK)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def name_problem(name: str | bytes) -> str | None:
    """Why ``name`` cannot be one directory entry on the host, or None if it can."""
    raw = os.fsencode(name)
    if raw in (b"", b".", b".."):
        return f"the name {raw.decode(errors='replace')!r} is not a file name"
    if b"/" in raw:
        return "the name holds a '/'"
    if b"\0" in raw:
        return "the name holds a NUL byte"
    if len(raw) > NAME_MAX:
        return f"the name is {len(raw)} bytes long (at most {NAME_MAX})"
    return None


def rel_parts(rel: str, where: str) -> list[str]:
    """The components of a relative path written by the user (job.xml, a plan): refused
    when absolute or when a component is ``..``; ``.`` and empty components dropped."""
    if rel.startswith("/"):
        raise UnsafeContent(f"{where}: {rel!r} is an absolute path", hint="give a relative path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafeContent(f"{where}: {rel!r} names no file")
    for part in parts:
        problem = name_problem(part)
        if problem is not None:
            raise UnsafeContent(f"{where}: {rel!r}: {problem}")
    return parts


def is_disk_full(exc: OSError) -> bool:
    """The error says the file system (or the user's quota on it) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def os_failure(exc: OSError, where: str) -> HostFailure:
    """A host-side OSError as vmwu's own error (the one place where ENOSPC becomes
    :class:`HostDiskFull`): disk full, or one line naming the place."""
    if is_disk_full(exc):
        return HostDiskFull(where)
    return HostFailure(f"{where}: {exc.strerror or exc}")


# -- vmwu's own files, written whole ----------------------------------------------------------
#
# Files vmwu writes for itself (journals' companions, markers, state, records) are replaced
# atomically: a reader, or a restart after a crash, sees the old file or the new one, never
# half of one. They go through SafeDir too, so the same rules hold wherever they live.


def write_atomic(path: Path, data: bytes, *, durable: bool = False, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``. ``durable`` fsyncs the file and its directory
    (survives a power cut), for state a restart depends on."""
    with SafeDir.open(path.parent) as d:
        d.write_atomic(path.name, data, mode=mode, durable=durable)


def write_json_atomic(path: Path, data: Any, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` as indented JSON (see :func:`write_atomic`)."""
    write_atomic(
        path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), durable=durable
    )


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a program or library that writes files by
    name (qemu-img, matplotlib, tarfile); renamed over ``path`` when the block ends
    without an error, removed otherwise."""
    tmp = path.with_name(f".vmwu-tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_failure(exc, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Report:
    """What a copy of untrusted content wrote and what it refused to write."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    data_bytes: int = 0  # bytes of data written (holes not counted)
    skipped: list[Skipped] = field(default_factory=list)
    top: list[str] = field(default_factory=list)  # top-level names written

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skipped(path, reason))


def display(parts: tuple[str, ...] | list[str], name: str | bytes = "") -> str:
    """A path for messages: printable whatever bytes a guest put in its names."""
    tail = [os.fsdecode(name)] if name else []
    text = "/".join([*parts, *tail]) or "."
    return text.encode("unicode_escape", errors="backslashreplace").decode("ascii")


class SafeDir:
    """A directory held by descriptor; see the module docstring. Close it (or use ``with``)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only: never opened again by name

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> SafeDir:
        """Open the user's own directory ``path`` (trusted: it may be a link the user made),
        creating it (and its parents) with ``create``."""
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise os_failure(exc, str(path)) from exc
        return cls(fd, path)

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check(self, name: str | bytes) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise UnsafeContent(f"{self.path}: refused to use {display([], name)}: {problem}")

    def subdir(self, name: str | bytes, *, create: bool = False, mode: int = 0o755) -> SafeDir:
        """The directory ``name`` in this one (made if ``create`` and absent). A link of that
        name is never followed: it raises :class:`UnsafeContent`."""
        self._check(name)
        if create:
            try:
                os.mkdir(name, mode & PERMISSION_BITS, dir_fd=self.fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeContent(
                    f"{self.path / os.fsdecode(name)} is not a directory (a link or a file)"
                ) from None
            raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc
        return SafeDir(fd, self.path / os.fsdecode(name))

    @contextlib.contextmanager
    def private_dir(self) -> Iterator[SafeDir]:
        """A new directory of vmwu's own here (a fresh name, made exclusively, so it can be
        no guest's), removed with what is left in it when the block ends."""
        for _ in range(100):
            name = f".vmwu-tmp-{secrets.token_hex(6)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise os_failure(exc, str(self.path)) from exc
        else:
            raise HostFailure(f"{self.path}: no free temporary name")
        sub = self.subdir(name)
        try:
            yield sub
        finally:
            sub.close()
            self.remove(name)

    def walk(self, parts: list[str], *, create: bool = False) -> SafeDir:
        """The directory ``parts`` beneath this one, one component at a time, never through
        a link. The caller closes the result (which is a new descriptor even for [])."""
        current = SafeDir(os.dup(self.fd), self.path)
        for part in parts:
            try:
                nxt = current.subdir(part, create=create)
            finally:
                current.close()
            current = nxt
        return current

    # -- looking ---------------------------------------------------------------------------

    def lstat(self, name: str | bytes) -> os.stat_result | None:
        self._check(name)
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def entries(self) -> list[str]:
        """The names in this directory (sorted)."""
        fd = os.dup(self.fd)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def open_read(self, name: str | bytes) -> int:
        """A descriptor to read the regular file ``name``: never a link, device or FIFO."""
        self._check(name)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeContent(f"{self.path / os.fsdecode(name)} is a link") from None
            raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeContent(f"{self.path / os.fsdecode(name)} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def read_bytes(self, name: str | bytes, limit: int) -> bytes:
        """The content of the regular file ``name``, refused beyond ``limit`` bytes."""
        fd = self.open_read(name)
        try:
            if os.fstat(fd).st_size > limit:
                raise UnsafeContent(f"{self.path / os.fsdecode(name)} is larger than {limit} bytes")
            return os.read(fd, limit + 1)[:limit]
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------

    def create(self, name: str | bytes, mode: int = 0o644) -> int:
        """A new regular file ``name``, opened for writing; fails if anything by that name
        exists (``FileExistsError``), a link included."""
        self._check(name)
        return os.open(name, _NEW_FILE_FLAGS, mode & PERMISSION_BITS, dir_fd=self.fd)

    def open_append(self, name: str | bytes, mode: int = 0o644) -> int:
        """A descriptor appending to the regular file ``name`` (created if absent); never a
        link, device or FIFO."""
        self._check(name)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags | os.O_NONBLOCK, mode & PERMISSION_BITS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeContent(f"{self.path / os.fsdecode(name)} is a link") from None
            raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeContent(f"{self.path / os.fsdecode(name)} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def _temp(self, mode: int, name: str | bytes) -> tuple[str, int]:
        """A new file under a fresh name (that says what it will become)."""
        for _ in range(100):
            tmp = f".vmwu-tmp-{secrets.token_hex(6)}-{os.fsdecode(name)[:200]}"
            try:
                return tmp, os.open(tmp, _NEW_FILE_FLAGS, mode & PERMISSION_BITS, dir_fd=self.fd)
            except FileExistsError:
                continue
        raise HostFailure(f"{self.path}: no free temporary name")

    def write_atomic(
        self, name: str | bytes, data: bytes, *, mode: int = 0o644, durable: bool = False
    ) -> None:
        """Replace ``name`` with a file holding ``data``: written under a fresh name, then
        renamed over ``name``. An existing link of that name is replaced, never followed."""
        self._check(name)
        tmp, fd = self._temp(mode, name)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            if durable:
                os.fsync(self.fd)
        except OSError as exc:
            self._discard(tmp)
            raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc

    def copy_file_in(self, src: Path, name: str | bytes, *, mode: int = 0o644) -> None:
        """Replace ``name`` with a copy of vmwu's own file ``src`` (holes kept), through a
        fresh name and a rename."""
        self._check(name)
        tmp, out = self._temp(mode, name)
        try:
            try:
                src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_sparse(src_fd, out)
                finally:
                    os.close(src_fd)
            finally:
                os.close(out)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            self._discard(tmp)
            raise os_failure(exc, str(self.path / os.fsdecode(name))) from exc

    def take(self, other: SafeDir, name: str | bytes, new_name: str | bytes) -> None:
        """Move ``name`` of ``other`` (a file vmwu wrote there) here as ``new_name``,
        replacing an entry of that name (never following it)."""
        self._check(new_name)
        try:
            os.replace(name, new_name, src_dir_fd=other.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            raise os_failure(exc, str(self.path / os.fsdecode(new_name))) from exc

    def symlink(self, name: str | bytes, target: bytes) -> None:
        """A link ``name`` -> ``target``; the target is stored, never resolved by vmwu."""
        self._check(name)
        os.symlink(target, name, dir_fd=self.fd)

    def remove(self, name: str | bytes) -> None:
        """Remove the entry ``name`` whatever it is (a directory with all it holds), never
        following a link."""
        st = self.lstat(name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            with self.subdir(name) as sub:
                for child in sub.entries():
                    sub.remove(child)
            os.rmdir(name, dir_fd=self.fd)
        else:
            os.unlink(name, dir_fd=self.fd)

    def _discard(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def set_mode(self, name: str | bytes, mode: int) -> None:
        os.chmod(name, mode & PERMISSION_BITS, dir_fd=self.fd, follow_symlinks=False)

    # -- copying an untrusted tree that is already on the host -----------------------------

    def copy_from(
        self,
        src: SafeDir,
        name: str,
        new_name: str,
        report: Report,
        *,
        replace: bool = False,
        links: bool = True,
        where: tuple[str, ...] = (),
    ) -> None:
        """Copy the entry ``name`` of ``src`` here as ``new_name``: files with their holes,
        directories entry by entry, links as links (never followed; skipped and listed
        without ``links``), special files skipped and listed in ``report``. With
        ``replace``, an existing entry that is not a directory is replaced; directories are
        merged. Without it, existing entries are kept and the conflict is listed."""
        st = src.lstat(name)
        shown = display(where, new_name)
        if st is None:
            report.skip(shown, "it does not exist")
            return
        existing = self.lstat(new_name)
        if stat.S_ISDIR(st.st_mode):
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                if not replace:
                    report.skip(shown, "something else of that name is already there")
                    return
                self.remove(new_name)
            with src.subdir(name) as s, self.subdir(new_name, create=True) as d:
                report.dirs += 1
                for child in s.entries():
                    d.copy_from(
                        s,
                        child,
                        child,
                        report,
                        replace=replace,
                        links=links,
                        where=(*where, new_name),
                    )
            return
        if existing is not None:
            if not replace or stat.S_ISDIR(existing.st_mode):
                report.skip(shown, "an entry of that name is already there")
                return
        if stat.S_ISLNK(st.st_mode):
            if not links:
                report.skip(shown, "a link is not copied here")
                return
            target = os.readlink(name, dir_fd=src.fd)
            self._replace_with(new_name, lambda tmp: self.symlink(tmp, os.fsencode(target)))
            report.links += 1
            return
        if not stat.S_ISREG(st.st_mode):
            report.skip(shown, f"a {kind(st.st_mode)} is never copied")
            return
        fd = src.open_read(name)
        try:

            def fill(tmp: str) -> None:
                out = self.create(tmp, st.st_mode)
                try:
                    report.data_bytes += copy_sparse(fd, out)
                finally:
                    os.close(out)

            self._replace_with(new_name, fill)
        finally:
            os.close(fd)
        report.files += 1

    def _replace_with(self, name: str, make: Callable[[str], None]) -> None:
        tmp = f".vmwu-tmp-{secrets.token_hex(6)}"
        try:
            make(tmp)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            self._discard(tmp)
            raise os_failure(exc, str(self.path / name)) from exc


def kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file"


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the data regions of an open file; the whole file where the file
    system cannot tell holes from data."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                return
            yield pos, size  # SEEK_DATA unsupported: treat it all as data
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def write_data(out: int, data: bytes | memoryview, pos: int) -> int:
    """Write ``data`` at ``pos`` leaving all-zero 1 MiB chunks as holes; bytes written."""
    written = 0
    view = memoryview(data)
    for off in range(0, len(view), _CHUNK):
        chunk = view[off : off + _CHUNK]
        if chunk == _ZERO[: len(chunk)]:
            continue
        at = pos + off
        while chunk:
            n = os.pwrite(out, chunk, at)
            chunk, at, written = chunk[n:], at + n, written + n
    return written


def copy_sparse(src: int, out: int) -> int:
    """Copy the open file ``src`` into the new file ``out`` keeping holes; data bytes."""
    size = os.fstat(src).st_size
    os.ftruncate(out, size)
    written = 0
    for start, end in data_extents(src, size):
        pos = start
        while pos < end:
            buf = os.pread(src, min(_CHUNK, end - pos), pos)
            if not buf:
                break
            written += write_data(out, buf, pos)
            pos += len(buf)
    return written
