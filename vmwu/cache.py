"""The node cache: content-addressed files shared by every ``vmwu run`` on a node.

Layout under the cache root (``paths.cache_dir()``)::

    blobs/<sha256>          unit and base files, stored under the sha256 of their bytes
    derived/<key>           files computed from blobs (e.g. the PVH vmlinux of a kernel)
    locks/<key>.lock        one flock per entry being filled
    tmp/                    entries being written (same file system, renamed when done)
    instances/<id>/         one directory per running instance (overlays, ISO, logs)

An entry is filled at most once per node: fillers take an exclusive ``flock`` on the
entry's lock file, re-check, write into ``tmp/`` and ``os.replace`` into place, so a
concurrent reader sees either nothing or the complete file. A filler that fails (disk
full, corrupt input, crash) leaves no entry behind; its temp file is removed (or, after a
crash, ignored and cleaned by ``clean_tmp``). Entries are made read-only: instances run on
qcow2 overlays and never write them.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vmwu import paths
from vmwu.errors import HostDiskFull
from vmwu.hostfs import is_disk_full

Filler = Callable[[Path], None]


class NodeCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.cache_dir()

    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def blob(self, sha256: str) -> Path | None:
        path = self.blob_path(sha256)
        return path if path.exists() else None

    def derived_path(self, key: str) -> Path:
        return self.root / "derived" / key

    def ensure_blob(self, sha256: str, fill: Filler) -> Path:
        """The blob ``sha256``, calling ``fill(tmp_path)`` to create it if missing. The
        filler must verify what it writes against ``sha256``."""
        return self._ensure("blobs", sha256, fill)

    def ensure_derived(self, key: str, fill: Filler) -> Path:
        return self._ensure("derived", key, fill)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        lock_path = self._dir("locks") / f"{key}.lock"
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def in_use(self, path: Path) -> Iterator[None]:
        """Mark the entry ``path`` as in use while the context lasts: a shared ``flock``
        on ``<path>.lock`` beside it (eviction takes it exclusively and skips entries it
        cannot lock). Held by the instances that map a saved guest's RAM file and state."""
        lock_path = path.with_name(path.name + ".lock")
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _ensure(self, kind: str, key: str, fill: Filler) -> Path:
        final = self._dir(kind) / key
        if final.exists():
            return final
        with self.lock(key):
            if final.exists():  # another process filled it while we waited
                return final
            self.clean_tmp()  # leftovers of fillers that crashed (kill -9, power loss)
            tmp = self._dir("tmp") / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
            try:
                fill(tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if is_disk_full(exc):
                    raise HostDiskFull(str(self.root)) from exc
                raise
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return final

    def new_instance_dir(self, name: str) -> Path:
        path = self._dir("instances") / f"{name[:20]}-{os.getpid()}-{secrets.token_hex(3)}"
        path.mkdir()
        return path

    def clean_tmp(self, older_than: float = 3600.0) -> int:
        """Remove temp files left by crashed fillers; returns how many."""
        tmp = self.root / "tmp"
        removed = 0
        if not tmp.is_dir():
            return 0
        now = time.time()
        for entry in tmp.iterdir():
            try:
                if now - entry.stat().st_mtime > older_than:
                    entry.unlink()
                    removed += 1
            except OSError:
                pass
        return removed

    def clear(self) -> None:
        """Delete the whole cache (``vmwu cache clean --all``)."""
        if self.root.exists():
            for sub in ("blobs", "derived"):
                d = self.root / sub
                if d.exists():
                    for entry in d.iterdir():
                        entry.chmod(0o644)
            shutil.rmtree(self.root)
