"""Instance disks copied from templates that a long-lived process made once (issue 15).

Every instance gets a fresh qcow2 overlay over its unit's cached application disk (and,
with a root disk, one over the base), and a fresh raw copy of the unit's output disk.
Each is a ``qemu-img`` run (~10 ms, more on a loaded node), and growing an overlay for a
warm start was two more. A process that runs many instances -- the node pool service --
makes each kind once, in a private directory, and copies it for every instance: a fresh
overlay is ~200 KB of header and tables that name the backing file by its absolute path,
so a byte copy *is* such an overlay; the raw output disk is copied with its holes.

Templates are keyed by the identity of their source (path, device, inode, size, mtime):
a node-cache entry replaced under the same name gets a new template. At most
:data:`KEEP` are kept. Off (every call runs ``qemu-img`` as before) until
:func:`enable` names a directory.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from vmwu.hostfs import copy_sparse
from vmwu.images import qemu_img

KEEP = 32

_Key = tuple[object, ...]


class Templates:
    """Templates in ``directory`` (private to this process)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made: OrderedDict[_Key, Path] = OrderedDict()
        self._sizes: dict[_Key, int] = {}
        self._lock = threading.Lock()
        self._serial = 0

    def _identity(self, source: Path) -> tuple[object, ...]:
        st = os.stat(source)
        return (os.path.abspath(source), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _template(self, key: _Key, make: Callable[[Path], None]) -> Path:
        """The template for ``key``, made by ``make(path)`` the first time."""
        with self._lock:
            found = self._made.get(key)
            if found is not None and found.exists():
                self._made.move_to_end(key)
                return found
            self.directory.mkdir(parents=True, exist_ok=True)
            self._serial += 1
            path = self.directory / f"t{self._serial}"
            make(path)
            self._made[key] = path
            while len(self._made) > KEEP:
                _, old = self._made.popitem(last=False)
                old.unlink(missing_ok=True)
            return path

    def overlay(self, backing: Path, dest: Path, *, backing_format: str, size: int | None) -> None:
        key = ("overlay", *self._identity(backing), backing_format, size)
        template = self._template(
            key,
            lambda p: qemu_img.create_overlay(backing, p, backing_format=backing_format, size=size),
        )
        shutil.copyfile(template, dest)

    def raw(self, src: Path, dest: Path, *, src_format: str) -> None:
        key = ("raw", *self._identity(src), src_format)
        template = self._template(
            key, lambda p: qemu_img.convert(src, p, src_format=src_format, dst_format="raw")
        )
        with open(template, "rb") as fin, open(dest, "wb") as fout:
            copy_sparse(fin.fileno(), fout.fileno())

    def virtual_size(self, image: Path, fmt: str) -> int:
        key = (*self._identity(image), fmt)
        with self._lock:
            size = self._sizes.get(key)
        if size is None:
            size = qemu_img.virtual_size(image, fmt)
            with self._lock:
                self._sizes[key] = size
        return size


_active: Templates | None = None


def enable(directory: Path) -> None:
    """Make instance disks from templates in ``directory`` from now on (this process)."""
    global _active
    _active = Templates(directory)


def create_overlay(
    backing: Path, overlay: Path, *, backing_format: str, size: int | None = None
) -> None:
    """A fresh qcow2 overlay over ``backing`` (of ``size``, else the backing's)."""
    if _active is None:
        qemu_img.create_overlay(backing, overlay, backing_format=backing_format, size=size)
    else:
        _active.overlay(backing, overlay, backing_format=backing_format, size=size)


def raw_copy(src: Path, dest: Path, *, src_format: str) -> None:
    """A fresh raw copy of ``src`` (a ``src_format`` image) at ``dest``."""
    if _active is None:
        qemu_img.convert(src, dest, src_format=src_format, dst_format="raw")
    else:
        _active.raw(src, dest, src_format=src_format)


def virtual_size(image: Path, fmt: str) -> int:
    """The capacity of ``image`` (one vmwu made, or a cache entry already inspected)."""
    if _active is None:
        return qemu_img.virtual_size(image, fmt)
    return _active.virtual_size(image, fmt)
