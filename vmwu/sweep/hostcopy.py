"""How a sweep touches what its jobs leave (files a guest may have made, in the node's
directories and in the results): only through :mod:`vmwu.hostfs`, the project's one door
for untrusted content. Every path is a trusted base directory (vmwu's own: the node's
directory, a result being written, RESULTS) and a relative path beneath it, walked one
component at a time without following a link; a link in the way is an error ("… is not a
directory (a link or a file)"), links inside a copied directory are copied as links,
device nodes, FIFOs and sockets are skipped and listed.

:func:`copy_untrusted` is the one call that copies such content (a job's ``copy node:X``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vmwu.errors import BadInput, UnsafeContent
from vmwu.hostfs import Report, SafeDir, rel_parts

SKELETON_LIMIT = 64 * 1024 * 1024  # a substitute skeleton is text, not an image


def copy_untrusted(src_base: Path, src_rel: str, dest_base: Path, dest_rel: str) -> list[str]:
    """Copy the entry ``src_rel`` of ``src_base`` (a file or a directory tree) to
    ``dest_rel`` of ``dest_base`` (files replaced, directories merged). Returns what was
    skipped. A link as the entry itself is refused: copying it would copy where it points,
    or hand on a link to anywhere."""
    where = str(src_base / src_rel)
    src_parts = rel_parts(src_rel, where)
    dest_parts = rel_parts(dest_rel, str(dest_base / dest_rel))
    report = Report()
    with (
        SafeDir.open(src_base) as src_root,
        src_root.walk(src_parts[:-1]) as src,
        SafeDir.open(dest_base, create=True) as dest_root,
        dest_root.walk(dest_parts[:-1], create=True) as dest,
    ):
        st = src.lstat(src_parts[-1])
        if st is None:
            raise BadInput(f"{where} does not exist")
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeContent(
                f"{where} is a symbolic link; vmwu does not follow links a job leaves"
            )
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UnsafeContent(f"{where} is not a regular file or a directory")
        dest.copy_from(src, src_parts[-1], dest_parts[-1], report, replace=True, links=True)
    return [str(s) for s in report.skipped]


def kind_of(base: Path, rel: str) -> int | None:
    """The file type (``stat.S_IFMT``) of ``rel`` beneath ``base``, None if absent; never
    through a link (one in the way is :class:`UnsafeContent`)."""
    if not [p for p in rel.split("/") if p not in ("", ".")]:
        return stat.S_IFDIR
    parts = rel_parts(rel, str(base / rel))
    with SafeDir.open(base) as root:
        current = SafeDir(os.dup(root.fd), base)
        try:
            for part in parts[:-1]:
                if current.lstat(part) is None:
                    return None
                step = current.subdir(part)
                current.close()
                current = step
            st = current.lstat(parts[-1])
        finally:
            current.close()
    return None if st is None else stat.S_IFMT(st.st_mode)


def open_output(base: Path, rel: str, *, append: bool) -> int:
    """A descriptor for writing ``rel`` beneath ``base`` (a redirect's file): appended to,
    or made anew (an existing entry is replaced, not written through)."""
    parts = rel_parts(rel, str(base / rel))
    with SafeDir.open(base) as root, root.walk(parts[:-1], create=True) as parent:
        if append:
            return parent.open_append(parts[-1])
        parent.remove(parts[-1])
        return parent.create(parts[-1])


def write_file(base: Path, rel: str, data: bytes) -> None:
    parts = rel_parts(rel, str(base / rel))
    with SafeDir.open(base) as root, root.walk(parts[:-1], create=True) as parent:
        parent.write_atomic(parts[-1], data)


def read_file(base: Path, rel: str, limit: int = SKELETON_LIMIT) -> bytes:
    parts = rel_parts(rel, str(base / rel))
    with SafeDir.open(base) as root, root.walk(parts[:-1]) as parent:
        return parent.read_bytes(parts[-1], limit)


def move_in(src_base: Path, rel: str, dest_base: Path, *, replace: bool) -> None:
    """Move the entry ``rel`` of ``src_base`` to the same place beneath ``dest_base`` (one
    rename; the same file system), its parents made as needed; without ``replace`` an
    entry already there is an error."""
    parts = rel_parts(rel, str(dest_base / rel))
    with (
        SafeDir.open(src_base) as src_root,
        src_root.walk(parts[:-1]) as src,
        SafeDir.open(dest_base) as dest_root,
        dest_root.walk(parts[:-1], create=True) as dest,
    ):
        if dest.lstat(parts[-1]) is not None:
            if not replace:
                raise FileExistsError(os.strerror(17))
            dest.remove(parts[-1])
        dest.take(src, parts[-1], parts[-1])
