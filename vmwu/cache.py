"""The node cache: content-addressed files shared by every ``vmwu run`` on a node.

Layout under the cache root (``paths.cache_dir()``)::

    blobs/<sha256>          unit and base files, stored under the sha256 of their bytes
    derived/<key>           files computed from blobs (e.g. the PVH vmlinux of a kernel),
                            saved guests (warm-<key>.state and what goes with it), layers
    locks/<key>.lock        one flock per entry being filled
    locks/use/<entry>.use   one flock per entry in use; its mtime is the entry's last use
    locks/pressure          touched when eviction found the cache over its limit by what is
                            in use (pools check it: :meth:`NodeCache.pressure_since`)
    tmp/                    entries being written (same file system, renamed when done)
    instances/<id>/         one directory per running instance (overlays, ISO, logs)
    downloads/, apt/        the package caches of ``vmwu base build``

An entry is filled at most once per node: fillers take an exclusive ``flock`` on the
entry's lock file, re-check, write into ``tmp/`` and ``os.replace`` into place, so a
concurrent reader sees either nothing or the complete file. A filler that fails (disk
full, corrupt input, crash) leaves no entry behind; its temp file is removed (or, after a
crash, ignored and cleaned by ``clean_tmp``). Entries are made read-only: instances run on
qcow2 overlays and never write them.

**Entries and their use.** The unit of eviction is an *entry*: in ``blobs/`` and
``derived/``, every file whose name starts with the same stem (the name up to its first
``.``) — a blob, its inspection facts, its PVH kernel, its firmware marker; a saved guest
(``warm-<key>.state``, its frozen root disk, its RAM file, its failure marker); a layer.
Elsewhere (``instances/<id>``, any other directory of entries such as pools) each child
is an entry, and ``downloads/`` and ``apt/`` are one entry each. Whoever uses an entry
holds :meth:`NodeCache.in_use` on it: a shared ``flock`` on ``locks/use/<entry>.use``,
taken *before* the entry is looked up or filled, so that it cannot vanish between the two.
Taking and dropping it sets the file's mtime: the entry's last use, which does not depend
on atime (``noatime`` mounts) and costs one ``utime`` per use.

**Eviction.** With a size limit (:func:`limit_from`: ``--cache-limit``, a run config's
``cache-limit``, ``$VMWU_CACHE_LIMIT``; unlimited by default), inserting an entry first
removes idle entries, least recently used first, until the new one fits; :meth:`trim`
does the same on demand and :meth:`clean` removes every idle entry. An entry is removed
only under an exclusive non-blocking ``flock`` on its use file: an entry in use is
skipped, never removed, so the cache may stay over its limit by what is in use. Someone
who asks for an entry while it is being removed waits (a few milliseconds) and finds it
gone, and fills it again. One evictor works at a time (``locks/evict``), and an insertion
renames its entry into place under that lock, so concurrent insertions account for each
other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vmwu import paths
from vmwu.errors import BadInput, HostDiskFull
from vmwu.hostfs import is_disk_full
from vmwu.sizes import format_size, parse_size

log = logging.getLogger(__name__)

Filler = Callable[[Path], None]

LIMIT_ENV = "VMWU_CACHE_LIMIT"
# Directories whose files are grouped into entries by stem (blob + what is derived from it).
GROUPED = ("blobs", "derived")
# Directories that are one entry each (the package caches of `vmwu base build`).
WHOLE = ("downloads", "apt")
# Directories that are not entries: vmwu's own bookkeeping. Instances are entries that
# only `clean` removes (a running one is in use; a stopped one was kept or crashed).
NOT_ENTRIES = ("locks", "tmp")
INSTANCES = "instances"
# Temp files of fillers that crashed (dot-files beside entries, tmp/) go after this long.
STALE_TMP = 3600.0
UNLIMITED_WORDS = ("none", "unlimited", "off")
# Touched when an eviction could not bring the cache under its limit (entries in use).
PRESSURE = "pressure"


def parse_limit(text: str | int) -> int | None:
    """A cache size limit: a size (``10G``, ``500M``, bytes) or ``none``/``unlimited``
    (None). Raises ``ValueError`` with a message fit for users."""
    if isinstance(text, str) and text.strip().lower() in UNLIMITED_WORDS:
        return None
    return parse_size(text)


def limit_from(option: str | None = None, *, origin: str = "--cache-limit") -> int | None:
    """The cache limit in force: ``option`` if given, else ``$VMWU_CACHE_LIMIT``, else
    unlimited (None). A bad value is a :class:`BadInput` naming where it came from."""
    source, text = origin, option
    if text is None or not text.strip():
        source, text = LIMIT_ENV, os.environ.get(LIMIT_ENV)
    if text is None or not text.strip():
        return None
    try:
        return parse_limit(text)
    except ValueError as exc:
        raise BadInput(
            f"{source}: bad cache limit: {exc}", hint="give a size like 20G, or none"
        ) from None


@dataclass(frozen=True)
class Entry:
    """One entry of the cache as a scan found it."""

    group: str  # "<stem>", "downloads", "instances/<id>", "<dir>/<name>"
    paths: tuple[Path, ...]
    size: int  # bytes on disk (allocated blocks)
    last_use: float  # seconds since the epoch

    @property
    def kind(self) -> str:
        """What the entry is, for people."""
        if "/" in self.group:
            return self.group.split("/", 1)[0].rstrip("s")
        if self.group in WHOLE:
            return "packages"
        if self.group.startswith("warm-"):
            return "saved-guest"
        if self.group.startswith("layer-"):
            return "layer"
        if self.group.startswith("verified-"):
            return "record"
        if any(p.parent.name == "blobs" for p in self.paths):
            return "blob"
        return "derived"


@dataclass
class Removal:
    """What :meth:`NodeCache.trim` or :meth:`NodeCache.clean` did."""

    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)  # skipped: in use
    size_before: int = 0
    size_after: int = 0
    tmp_removed: int = 0


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _flock(path: Path, how: int, *, create: bool = True) -> int | None:
    """An open descriptor of ``path`` with ``flock(how)`` held, or None when ``how`` is
    non-blocking and someone else holds it (or ``path`` does not exist and ``create`` is
    false). A lock file may be removed by whoever holds it exclusively: a lock taken on a
    file that is no longer at ``path`` is dropped and taken again on the new one."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)  # the first lock of its kind
            continue
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)
        if not create:
            return None


def _is_temp(name: str) -> bool:
    """A temp file or directory beside entries (hostfs.replacing, a saved guest's root
    disk being written, the layer builder's work directory)."""
    return name.startswith((".", "vmwu-"))


def _stamp(fd: int, when_ns: int | None = None) -> None:
    """Set the file's mtime to now (or ``when_ns``), to the nanosecond (``utime(None)``
    takes the kernel's coarse clock: uses a few milliseconds apart would look
    simultaneous)."""
    now = time.time_ns() if when_ns is None else when_ns
    os.utime(fd, ns=(now, now))


def _stamp_path(path: Path) -> None:
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _allocated(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if stat.S_ISDIR(st.st_mode):
        return paths.dir_size(path)
    return st.st_blocks * 512


def _newest_mtime(path: Path) -> float:
    try:
        st = os.lstat(path)
    except OSError:
        return 0.0
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _remove(path: Path) -> None:
    """Remove a file or a tree (entries are read-only: directories are made writable)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o755)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


class NodeCache:
    """The node cache at ``root`` (default ``paths.cache_dir()``). Its size limit
    ``self.limit`` (bytes, None: unlimited) is ``limit`` in bytes, or the text of a
    ``--cache-limit`` option, or (None) what :func:`limit_from` finds configured."""

    def __init__(self, root: Path | None = None, *, limit: int | str | None = None) -> None:
        self.root = root or paths.cache_dir()
        # None: as configured; a text: as --cache-limit says ("none": unlimited)
        self.limit = limit if isinstance(limit, int) else limit_from(limit)
        self._holds = contextlib.ExitStack()
        self._released_ns: int | None = None

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
        fd = _flock(self._dir("locks") / f"{key}.lock", fcntl.LOCK_EX)
        assert fd is not None
        try:
            yield
        finally:
            os.close(fd)

    # -- use -------------------------------------------------------------------------------

    def group(self, path: Path) -> str:
        """The entry ``path`` (anything under the cache root) belongs to."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            raise ValueError(f"{path} is not in the node cache {self.root}") from None
        if not parts or parts[0] in NOT_ENTRIES:
            raise ValueError(f"{path} is not an entry of the node cache")
        if parts[0] in WHOLE:
            return parts[0]
        if len(parts) < 2 or not parts[1].strip("."):
            raise ValueError(f"{path} is not an entry of the node cache")
        if parts[0] in GROUPED:
            return parts[1].split(".", 1)[0] or parts[1]
        return f"{parts[0]}/{parts[1]}"

    def _use_file(self, group: str) -> Path:
        return self.root / "locks" / "use" / f"{group}.use"

    @contextmanager
    def in_use(self, path: Path) -> Iterator[None]:
        """Hold the entry of ``path`` in use for the ``with`` block: eviction and
        ``clean`` skip it. Take it before looking the entry up or filling it (it may be
        absent: then it cannot be removed once filled). Marks the entry used, on entry and
        on exit. Waits only while an evictor is removing the entry (milliseconds)."""
        use = self._use_file(self.group(path))
        fd = _flock(use, fcntl.LOCK_SH)
        assert fd is not None
        try:
            _stamp(fd)
            yield
        finally:
            with contextlib.suppress(OSError):
                _stamp(fd, self._released_ns)
            os.close(fd)

    def hold(self, path: Path) -> None:
        """Hold the entry of ``path`` in use until :meth:`release_holds` (an instance holds
        what it uses from prepare to release, in a ``NodeCache`` of its own: the release
        drops every hold of this object). Others use :meth:`in_use`."""
        self._holds.enter_context(self.in_use(path))

    def release_holds(self) -> None:
        """Drop every hold, all marked used at the same moment: entries used together
        are equally recent (and then the smaller goes first, see :meth:`entries`)."""
        self._released_ns = time.time_ns()
        try:
            self._holds.close()
        finally:
            self._released_ns = None

    def is_in_use(self, entry: Entry) -> bool:
        """Whether someone holds ``entry`` in use now (a probe: may change at once)."""
        fd = _flock(self._use_file(entry.group), fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
        if fd is None:
            return self._use_file(entry.group).exists()
        os.close(fd)
        return False

    # -- filling ---------------------------------------------------------------------------

    def _ensure(self, kind: str, key: str, fill: Filler) -> Path:
        final = self._dir(kind) / key
        with self.in_use(final):
            if final.exists():
                return final
            with self.lock(key):
                if final.exists():  # another process filled it while we waited
                    return final
                self.clean_tmp()  # leftovers of fillers that crashed (kill -9, power loss)
                while True:
                    try:
                        self._fill(key, final, fill)
                        return final
                    except HostDiskFull:
                        # the file system is full: make room from what is idle, retry
                        if not self._evict_for_space():
                            raise

    def _fill(self, key: str, final: Path, fill: Filler) -> None:
        tmp = self._dir("tmp") / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fill(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            self._insert(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise HostDiskFull(str(self.root)) from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _evict_for_space(self) -> bool:
        """On a full file system: evict the least recently used half (by size) of the
        idle entries, at least one; False when none could be evicted. A filler retries
        after each, so a full disk costs at most a few fills more than it needs."""
        with self._evicting():
            entries = self.entries()
            idle = [e for e in entries if not self.is_in_use(e)]
            goal = sum(e.size for e in idle) // 2
            freed, removed = 0, 0
            for entry in idle:
                if removed and freed >= goal:
                    break
                if self._remove_if_idle(entry):
                    freed += entry.size
                    removed += 1
        if removed:
            log.warning(
                "node cache %s: the file system is full; evicted %d idle entries (%s)",
                self.root,
                removed,
                format_size(freed),
            )
        return removed > 0

    def _insert(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``, first making room for it under the limit."""
        if self.limit is None:
            os.replace(tmp, final)
            return
        with self._evicting():
            done = self._trim_locked(self.limit, extra=_allocated(tmp))
            os.replace(tmp, final)
        if done.size_after + _allocated(final) > self.limit:
            log.warning(
                "node cache %s: %s with %s in use, over its limit of %s",
                self.root,
                format_size(done.size_after + _allocated(final)),
                final.name,
                format_size(self.limit),
            )

    def new_instance_dir(self, name: str) -> Path:
        """A new instance directory, held in use (see :meth:`hold`) before it exists."""
        path = self._dir(INSTANCES) / f"{name[:20]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.hold(path)
        path.mkdir()
        return path

    # -- accounting and eviction -----------------------------------------------------------

    def entries(self, *, instances: bool = False) -> list[Entry]:
        """Every entry, in the order eviction takes them (``instances``: with the
        instance directories)."""
        groups: dict[str, list[Path]] = {}
        if not self.root.is_dir():
            return []
        for top in sorted(self.root.iterdir()):
            if not top.is_dir() or top.name in NOT_ENTRIES or _is_temp(top.name):
                continue
            if top.name == INSTANCES and not instances:
                continue
            if top.name in WHOLE:
                groups[top.name] = [top]
                continue
            try:
                children = sorted(top.iterdir())
            except FileNotFoundError:  # removed meanwhile
                continue
            for child in children:
                if _is_temp(child.name):  # a filler's temp file
                    continue
                groups.setdefault(self.group(child), []).append(child)
        found = []
        for group, members in groups.items():
            try:
                last = os.stat(self._use_file(group)).st_mtime
            except OSError:
                last = max(_newest_mtime(p) for p in members)
            size = sum(_allocated(p) for p in members)
            found.append(Entry(group, tuple(members), size, last))
        # least recently used first; of entries last used together (one instance's), the
        # smaller first: what is larger costs more to make again (a saved guest, a base)
        found.sort(key=lambda e: (e.last_use, e.size, e.group))
        return found

    def size(self) -> int:
        """Bytes the entries take (what the limit bounds)."""
        return sum(e.size for e in self.entries())

    @contextmanager
    def _evicting(self) -> Iterator[None]:
        fd = _flock(self._dir("locks") / "evict", fcntl.LOCK_EX)
        assert fd is not None
        try:
            yield
        finally:
            os.close(fd)

    def trim(self, limit: int | None = None) -> Removal:
        """Remove idle entries, least recently used first, until the cache fits ``limit``
        (default: its own; nothing to do when unlimited)."""
        limit = self.limit if limit is None else limit
        if not self.root.is_dir():
            return Removal()
        with self._evicting():
            if limit is None:
                size = self.size()
                return Removal(size_before=size, size_after=size)
            return self._trim_locked(limit)

    def _trim_locked(self, limit: int, *, extra: int = 0) -> Removal:
        entries = self.entries()
        total = sum(e.size for e in entries)
        done = Removal(size_before=total)
        for entry in entries:
            if total + extra <= limit:
                break
            if self._remove_if_idle(entry, lru=True):
                total -= entry.size
                done.removed.append(entry)
            else:
                done.in_use.append(entry)
        done.size_after = total
        if total + extra > limit:
            # over the limit by what is in use: tell holders that can let go (pools)
            with contextlib.suppress(OSError):
                pressure = self._dir("locks") / PRESSURE
                pressure.touch()
                _stamp_path(pressure)
        return done

    def pressure_since(self, when: float) -> bool:
        """Whether an eviction since ``when`` (``time.time()``) found the cache over its
        limit by what is in use. A holder that can give entries up (a pool keeping ready
        VMs of a saved guest nobody asked for lately) checks this and lets them go, so
        that they become idle and evictable like the rest."""
        try:
            return (self.root / "locks" / PRESSURE).stat().st_mtime > when
        except OSError:
            return False

    def clean(self) -> Removal:
        """Remove every idle entry, the directories of instances that no longer run
        (crashed, or kept with --keep) and the temp files of crashed fillers. Safe while
        instances run: what they use is kept."""
        if not self.root.is_dir():
            return Removal()
        with self._evicting():
            entries = self.entries(instances=True)
            total = sum(e.size for e in entries)
            done = Removal(size_before=total)
            for entry in entries:
                if self._remove_if_idle(entry):
                    total -= entry.size
                    done.removed.append(entry)
                else:
                    done.in_use.append(entry)
            done.size_after = total
            done.tmp_removed = self.clean_tmp(older_than=STALE_TMP, idle_fillers=True)
        return done

    def _remove_if_idle(self, entry: Entry, *, lru: bool = False) -> bool:
        """Remove ``entry`` unless someone holds it (or, ``lru``, used it since it was
        scanned: it is no longer the least recently used)."""
        use = self._use_file(entry.group)
        stamped = use.exists()
        fd = _flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        try:
            used_since = stamped and os.fstat(fd).st_mtime > entry.last_use
            if lru and used_since:
                return False
            # Whoever adds a file to an entry holds it: unused since the scan, the scan's
            # list is whole; else look again.
            members = self._members(entry) if used_since else list(entry.paths)
            for member in members:
                _remove(member)
            self._drop_fill_locks(entry, members)
            use.unlink(missing_ok=True)  # while locked: a waiter re-takes a new file
            log.info("node cache: removed %s (%s)", entry.group, format_size(entry.size))
            return True
        finally:
            os.close(fd)

    def _members(self, entry: Entry) -> list[Path]:
        """The entry's files now (a sibling may have appeared since the scan)."""
        if "/" in entry.group or entry.group in WHOLE:
            return list(entry.paths)
        members = []
        for kind in GROUPED:
            d = self.root / kind
            if d.is_dir():
                members += [
                    p
                    for p in (d / entry.group, *d.glob(f"{entry.group}.*"))
                    if p.name.split(".", 1)[0] == entry.group and os.path.lexists(p)
                ]
        return members

    def _drop_fill_locks(self, entry: Entry, members: list[Path]) -> None:
        """The fill locks of a removed entry's files (``locks/<file name>.lock``), where
        no filler holds them."""
        if "/" in entry.group or entry.group in WHOLE:
            return
        for name in {entry.group, *(m.name for m in members)}:
            lock = self.root / "locks" / f"{name}.lock"
            fd = _flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
            if fd is not None:
                lock.unlink(missing_ok=True)
                os.close(fd)

    def clean_tmp(self, older_than: float = STALE_TMP, *, idle_fillers: bool = False) -> int:
        """Remove temp files left by crashed fillers; returns how many. With
        ``idle_fillers``, also those of any age whose filler no longer holds its lock."""
        removed = 0
        now = time.time()
        tmp = self.root / "tmp"
        for entry in sorted(tmp.iterdir()) if tmp.is_dir() else []:
            try:
                stale = now - entry.stat().st_mtime > older_than
                if not stale and idle_fillers:
                    key = entry.name.rsplit(".", 2)[0]
                    lock = self.root / "locks" / f"{key}.lock"
                    fd = _flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)
                    stale = fd is not None or not lock.exists()
                    if fd is not None:
                        os.close(fd)
                if stale:
                    entry.unlink()
                    removed += 1
            except OSError:
                pass
        # temp files beside entries (hostfs.replacing, a saved guest's root disk) and
        # temp directories of the layer builder
        for d in (self.root / "derived", self.root / "blobs", self.root):
            for entry in sorted(d.iterdir()) if d.is_dir() else []:
                if not _is_temp(entry.name):
                    continue
                if now - _newest_mtime(entry) > older_than:
                    _remove(entry)
                    removed += 1
        return removed
