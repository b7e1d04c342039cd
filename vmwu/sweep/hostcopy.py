"""Copying what a job left on its node (files a guest may have made) without trusting it:
no symbolic link is followed, neither in the source nor on the way to the target; links
inside a copied directory are recreated as links (after every file is written), never
followed; device nodes, FIFOs and sockets are skipped and listed.

:func:`copy_untrusted` is the one call that writes such content for keeps (a job's
``copy node:X …``); it is the piece to route through ``vmwu.hostfs`` (the project's one
door for untrusted content) once that exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path, PurePosixPath

from vmwu.errors import BadInput

_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def resolve_under(base: Path, rel: str, what: str) -> Path:
    """``base/rel`` (``rel`` normalised, without ``..``), refusing any existing component
    that is a symbolic link: a write there would land wherever the link points."""
    path = base
    for part in PurePosixPath(rel).parts:
        if part in (".", ""):
            continue
        if part == ".." or "/" in part:
            raise BadInput(f"{what}: {rel!r} leaves {base}")
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as err:
            raise BadInput(f"{what}: cannot look at {path}: {err.strerror}") from None
        if stat.S_ISLNK(mode):
            raise BadInput(
                f"{what}: {path} is a symbolic link; vmwu does not follow links a job leaves"
            )
    return path


def copy_untrusted(source: Path, target: Path) -> list[str]:
    """Copy a regular file or a directory tree from ``source`` to ``target`` (replaced if
    there), landing by one rename. Returns what was skipped (special files)."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise BadInput(f"{source} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(f"{source} is a symbolic link; vmwu does not follow links a job leaves")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise BadInput(f"{source} is not a regular file or a directory")
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    skipped: list[str] = []
    try:
        if stat.S_ISDIR(st.st_mode):
            _copy_tree(source, partial, skipped)
        else:
            _copy_file(source, partial)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise
    return skipped


def _copy_file(source: Path, dest: Path) -> None:
    """A regular file, holes kept (output images are mostly empty), mtime kept."""
    fd_in = os.open(source, os.O_RDONLY | _NOFOLLOW)
    try:
        st = os.fstat(fd_in)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{source} is not a regular file")
        fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            _copy_data(fd_in, fd_out, st.st_size)
            os.ftruncate(fd_out, st.st_size)
            os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _copy_data(fd_in: int, fd_out: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            data_at = os.lseek(fd_in, offset, os.SEEK_DATA)
            hole_at = os.lseek(fd_in, data_at, os.SEEK_HOLE)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole is left
                break
            data_at, hole_at = offset, size  # no SEEK_DATA here: copy the rest
        if data_at >= size:
            break
        os.lseek(fd_in, data_at, os.SEEK_SET)
        os.lseek(fd_out, data_at, os.SEEK_SET)
        left = hole_at - data_at
        while left > 0:
            chunk = os.read(fd_in, min(left, 1 << 20))
            if not chunk:
                return
            os.write(fd_out, chunk)
            left -= len(chunk)
        offset = hole_at


def _copy_tree(source: Path, dest: Path, skipped: list[str]) -> None:
    links: list[tuple[str, Path]] = []
    os.mkdir(dest, 0o755)
    stack = [(source, dest)]
    while stack:
        src_dir, dst_dir = stack.pop()
        with os.scandir(src_dir) as entries:
            for entry in entries:
                target = dst_dir / entry.name
                if entry.is_symlink():
                    links.append((os.readlink(entry.path), target))
                elif entry.is_dir(follow_symlinks=False):
                    os.mkdir(target, 0o755)
                    stack.append((Path(entry.path), target))
                elif entry.is_file(follow_symlinks=False):
                    _copy_file(Path(entry.path), target)
                else:
                    skipped.append(str(Path(entry.path).relative_to(source)))
    for link, at in links:  # after every file: nothing is written through them
        os.symlink(link, at)
