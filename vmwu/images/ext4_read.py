"""Reading a guest's ext2/3/4 disk back, entry by entry, as hostile input.

A guest can write any bytes to its own output disk, so every name, link, size and block
map on it is the guest's choice. The disk is read in two stages:

1. **Listing** (:func:`scan`). ``debugfs`` (e2fsprogs) parses the file system -- directory
   blocks, hash trees, extent trees, block maps -- in a process of its own, under CPU,
   memory and output limits (``prlimit``), in catastrophic mode (no bitmaps read, so a
   10 TiB disk opens at once). vmwu reads only debugfs output that a guest cannot forge:
   ``ls -l`` lines, whose names debugfs escapes (``\\xNN`` for control bytes, non-ASCII
   bytes and backslashes), ``ex -l`` extent lines (numbers only) and ``idump`` hex dumps.
   Directories are walked breadth first, one debugfs run per level, with bounds on
   entries, depth and directory sizes; a directory met twice (a loop) is refused.
2. **Copying** (:meth:`Tree.extract`). vmwu copies each regular file itself: extent-mapped
   files straight from the image at the block addresses debugfs listed, after checking that
   every extent lies inside the disk and that no two files share a block (a guest could
   otherwise make one block appear in a thousand files and fill the host's disk);
   block-mapped files (ext2/3 disks, and vmwu's own disks, made without extents) from one
   ``debugfs cat`` batch whose total is bounded by the disk's capacity. All-zero stretches
   become holes. Everything is written through :mod:`vmwu.hostfs`: no name leaves its
   directory, no link is followed, links are recreated last, device nodes and FIFOs are
   skipped and listed, and nothing that exists is overwritten.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vmwu import tools
from vmwu.errors import BadInput, UnsafeContent
from vmwu.hostfs import (
    PERMISSION_BITS,
    Report,
    SafeDir,
    display,
    kind,
    name_problem,
    os_failure,
    write_data,
)

log = logging.getLogger(__name__)

MAX_ENTRIES = 1_000_000  # entries of one disk
MAX_DEPTH = 128  # directory levels
MAX_DIR_BYTES = 64 << 20  # one directory's own size (its entry blocks)
MAX_LINK = 4095  # bytes of a link target (PATH_MAX - 1)
_LIMITS = ("--cpu=300", "--as=2147483648")  # per debugfs run
_LISTING_OUTPUT = 1 << 30  # bytes of debugfs listing output per run
_BATCH = 2000  # commands per debugfs run
_CHUNK = 1 << 20
_HOSTILE = "the guest wrote a corrupt or hostile file system; nothing was copied"

_LS_LINE = re.compile(rb"^\s*(\d+)\s+([0-7]+)\s+\((\d+)\)\s+\d+\s+\d+\s+(\d+)\s+\S+\s+\S+ (.*)$")
_EX_LINE = re.compile(
    rb"^\s*\d+/\s*\d+\s+\d+/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s*(\S*)\s*$"
)
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_IDUMP_LINE = re.compile(rb"^([0-7]{4,})  ((?:[0-9a-f]{4} ?)+)")

# The superblock (1024 bytes at offset 1024): inodes, log2(block size) - 10,
# inodes per group, magic; the incompatible features at 0x60.
_SB = struct.Struct("<I20xI12xI12xH")
_EXT_MAGIC = 0xEF53
_INCOMPAT_EXTENTS = 0x40
_INCOMPAT_REFUSED = {0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold"}


@dataclass(frozen=True)
class Extent:
    logical: int  # first block in the file
    physical: int  # first block on the disk
    length: int  # blocks


@dataclass
class Entry:
    parts: tuple[bytes, ...]  # path from the root, raw names
    ino: int
    mode: int
    size: int
    extents: list[Extent] | None = None  # regular files of extent-mapped disks
    target: bytes | None = None  # links

    @property
    def name(self) -> bytes:
        return self.parts[-1]

    @property
    def shown(self) -> str:
        return display([os.fsdecode(p) for p in self.parts])

    def clipped(self, block_size: int) -> list[Extent]:
        """The extents that lie within the file's size."""
        blocks = -(-self.size // block_size)
        return [
            Extent(e.logical, e.physical, min(e.length, blocks - e.logical))
            for e in self.extents or ()
            if e.logical < blocks
        ]


@dataclass(frozen=True)
class Span:
    """A stretch of a file's content: ``length`` bytes at ``at`` in the file come from
    offset ``src`` of the open file ``fd`` (the image, or a debugfs cat output)."""

    at: int
    fd: int
    src: int
    length: int


@dataclass
class Tree:
    """What :func:`scan` found on a disk, and what it refused to list."""

    image: Path
    block_size: int
    capacity: int
    entries: list[Entry] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def find(self, path: str) -> Entry | None:
        parts = tuple(os.fsencode(p) for p in path.strip("/").split("/") if p)
        return next((e for e in self.entries if e.parts == parts), None)

    def read(self, path: str, limit: int) -> bytes | None:
        """The content of one regular file of the disk (``None`` if it is not there or not
        a regular file), refused beyond ``limit`` bytes."""
        entry = self.find(path)
        if entry is None or not stat.S_ISREG(entry.mode):
            return None
        if entry.size > limit:
            raise UnsafeContent(f"{self.image}: {path} is larger than {limit} bytes")
        with _Contents(self, [entry]) as contents:
            out = bytearray(entry.size)
            for span in contents.spans(entry):
                data = os.pread(span.fd, span.length, span.src)
                out[span.at : span.at + len(data)] = data
            return bytes(out)

    def extract(
        self,
        dest: SafeDir,
        *,
        skip_top: Iterable[str] = ("lost+found",),
        rename_top: dict[str, str] | None = None,
    ) -> Report:
        """Write the disk's entries beneath ``dest``. ``skip_top`` names top-level entries
        to leave out; ``rename_top`` maps top-level names (vmwu's own, such as status.json)
        to the names a guest's entry of that name is written under. Nothing that exists is
        overwritten: a clash is listed in the report and that entry skipped."""
        report = Report()
        for path, why in self.refused:
            report.skip(path, why)
        skip = {os.fsencode(s) for s in skip_top}
        renames = {os.fsencode(k): os.fsencode(v) for k, v in (rename_top or {}).items()}
        entries = [e for e in self.entries if e.parts[0] not in skip]
        with _Contents(self, entries) as contents:
            for ino, why in contents.refused.items():
                for e in entries:
                    if e.ino == ino:
                        report.skip(e.shown, why)
            writer = _Writer(dest, report, renames, contents)
            try:
                for entry in entries:
                    if not stat.S_ISLNK(entry.mode):
                        writer.write(entry)
                for entry in entries:  # links last: nothing is ever written through one
                    if stat.S_ISLNK(entry.mode):
                        writer.write(entry)
            finally:
                writer.close()
        return report

    def conflicts(self, dest: SafeDir, *, skip_top: Iterable[str] = ("lost+found",)) -> list[str]:
        """Entries of the disk that something in ``dest`` is already in the way of (a
        directory of the disk may meet a directory there; nothing else may)."""
        skip = {os.fsencode(s) for s in skip_top}
        found: list[str] = []
        with ExitStack() as stack:
            dirs: dict[tuple[bytes, ...], SafeDir | None] = {(): dest}
            for entry in self.entries:
                if entry.parts[0] in skip or name_problem(entry.name) is not None:
                    continue
                parent = dirs.get(entry.parts[:-1])
                if parent is None:
                    continue  # its directory is new: nothing beneath it can clash
                st = parent.lstat(entry.name)
                if st is None:
                    if stat.S_ISDIR(entry.mode):
                        dirs[entry.parts] = None
                elif stat.S_ISDIR(entry.mode) and stat.S_ISDIR(st.st_mode):
                    dirs[entry.parts] = stack.enter_context(parent.subdir(entry.name))
                else:
                    found.append(entry.shown)
        return found


class _Contents:
    """Where the bytes of each regular file are, checked before anything is copied."""

    def __init__(self, tree: Tree, entries: Sequence[Entry]) -> None:
        self.tree = tree
        self.stack = ExitStack()
        self.image = self.stack.enter_context(open(tree.image, "rb")).fileno()
        self.refused: dict[int, str] = {}
        self._cat: dict[int, Span] = {}
        files = {e.ino: e for e in entries if stat.S_ISREG(e.mode)}
        check_extents([e for e in files.values() if e.extents is not None], tree)
        mapped = [e for e in files.values() if e.extents is None and e.size > 0]
        try:
            self._cat_all(mapped)
        except BaseException:
            self.stack.close()
            raise

    def __enter__(self) -> _Contents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def spans(self, entry: Entry) -> list[Span]:
        if entry.extents is None:
            span = self._cat.get(entry.ino)
            return [span] if span is not None else []
        bs = self.tree.block_size
        return [
            Span(
                e.logical * bs,
                self.image,
                e.physical * bs,
                min(e.length * bs, entry.size - e.logical * bs),
            )
            for e in entry.clipped(bs)
        ]

    def _cat_all(self, files: list[Entry]) -> None:
        """Block-mapped files through one ``debugfs cat`` batch. Their sizes must add up to
        no more than the disk's capacity: debugfs writes holes out as zeros."""
        room = self.tree.capacity
        wanted: list[Entry] = []
        for e in sorted(files, key=lambda e: e.size):
            if e.size > room:
                self.refused[e.ino] = (
                    "its size and that of the other files of this ext2/3 disk add up to more "
                    "than the disk's capacity"
                )
                continue
            room -= e.size
            wanted.append(e)
        if not wanted:
            return
        out = self.stack.enter_context(tempfile.TemporaryFile(dir=self.tree.image.parent))
        commands = [f"cat <{e.ino}>" for e in wanted]
        limit = sum(e.size for e in wanted) + sum(len(c) + 10 for c in commands) + 4096
        _run_debugfs(self.tree.image, commands, out, limit)
        pos = 0
        for i, e in enumerate(wanted):
            echo = f"debugfs: {commands[i]}\n".encode()
            if os.pread(out.fileno(), len(echo), pos) != echo:
                # a file that could not be read shifted everything after it: read the rest
                # one file per run
                for rest in wanted[i:]:
                    self._cat_one(rest)
                return
            self._cat[e.ino] = Span(0, out.fileno(), pos + len(echo), e.size)
            pos += len(echo) + e.size

    def _cat_one(self, e: Entry) -> None:
        out = self.stack.enter_context(tempfile.TemporaryFile(dir=self.tree.image.parent))
        command = f"cat <{e.ino}>"
        echo = f"debugfs: {command}\n".encode()
        _run_debugfs(self.tree.image, [command], out, e.size + len(echo) + 4096)
        got = os.fstat(out.fileno()).st_size - len(echo)
        if got < e.size:
            self.refused[e.ino] = f"only {max(got, 0)} of its {e.size} bytes could be read"
        self._cat[e.ino] = Span(0, out.fileno(), len(echo), max(0, min(got, e.size)))


def check_extents(files: Sequence[Entry], tree: Tree) -> None:
    """Refuse a disk whose files claim blocks outside the disk or share a block: a file
    system made by a kernel never does either."""
    disk_blocks = tree.capacity // tree.block_size
    spans: list[tuple[int, int, bytes]] = []
    for entry in files:
        for ext in entry.clipped(tree.block_size):
            if ext.physical < 1 or ext.physical + ext.length > disk_blocks:
                raise UnsafeContent(
                    f"{tree.image}: {entry.shown} claims blocks outside the disk", hint=_HOSTILE
                )
            spans.append((ext.physical, ext.physical + ext.length, entry.name))
    spans.sort()
    for (_s1, end1, name1), (start2, _e2, name2) in zip(spans, spans[1:], strict=False):
        if start2 < end1:
            raise UnsafeContent(
                f"{tree.image}: {display([], name1)} and {display([], name2)} share disk blocks",
                hint=_HOSTILE,
            )


class _Writer:
    """Creates the entries of a :class:`Tree` beneath a destination, one by one."""

    def __init__(
        self, dest: SafeDir, report: Report, renames: dict[bytes, bytes], contents: _Contents
    ) -> None:
        self.report = report
        self.renames = renames
        self.contents = contents
        self.dirs: dict[tuple[bytes, ...], SafeDir | None] = {(): dest}
        self.done: dict[int, tuple[tuple[bytes, ...], bytes]] = {}  # hard links

    def close(self) -> None:
        for key, d in self.dirs.items():
            if key and d is not None:
                d.close()

    def write(self, entry: Entry) -> None:
        parts = entry.parts
        if len(parts) == 1 and parts[0] in self.renames:
            parts = (self.renames[parts[0]],)
        parent = self.dirs.get(parts[:-1])
        if parent is None:
            return  # its directory was not written (already listed)
        name = parts[-1]
        shown = display([os.fsdecode(p) for p in parts])
        if entry.ino in self.contents.refused:
            return
        try:
            if stat.S_ISDIR(entry.mode):
                self._dir(parent, parts, entry.mode)
            elif stat.S_ISREG(entry.mode):
                self._file(parent, parts, entry)
            elif stat.S_ISLNK(entry.mode):
                if entry.target is None:
                    self.report.skip(shown, "its link target could not be read")
                    return
                parent.symlink(name, entry.target)
                self.report.links += 1
            else:
                self.report.skip(shown, f"a {kind(entry.mode)} is never copied to the host")
                return
        except FileExistsError:
            self.report.skip(shown, "an entry of that name is already there (kept as it was)")
            if stat.S_ISDIR(entry.mode):
                self.dirs[parts] = None
            return
        except OSError as exc:
            raise os_failure(exc, str(parent.path / os.fsdecode(name))) from exc
        if len(parts) == 1:
            self.report.top.append(os.fsdecode(name))

    def _dir(self, parent: SafeDir, parts: tuple[bytes, ...], mode: int) -> None:
        existing = parent.lstat(parts[-1])
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            raise FileExistsError(parts[-1])
        # owner rwx, so that what lies beneath can be written (and later removed)
        self.dirs[parts] = parent.subdir(parts[-1], create=True, mode=mode | 0o700)
        if existing is None:
            self.report.dirs += 1

    def _file(self, parent: SafeDir, parts: tuple[bytes, ...], entry: Entry) -> None:
        name = parts[-1]
        first = self.done.get(entry.ino)
        linked_dir = self.dirs.get(first[0]) if first is not None else None
        if first is not None and linked_dir is not None:  # a hard link to a file written
            os.link(
                first[1],
                name,
                src_dir_fd=linked_dir.fd,
                dst_dir_fd=parent.fd,
                follow_symlinks=False,
            )
            self.report.files += 1
            return
        out = parent.create(name, (entry.mode & PERMISSION_BITS) | 0o600)
        try:
            os.ftruncate(out, entry.size)
            for span in self.contents.spans(entry):
                pos, end, src = span.at, span.at + span.length, span.src
                while pos < end:
                    data = os.pread(span.fd, min(_CHUNK, end - pos), src)
                    if not data:
                        break
                    self.report.data_bytes += write_data(out, data, pos)
                    pos, src = pos + len(data), src + len(data)
        finally:
            os.close(out)
        self.done[entry.ino] = (parts[:-1], name)
        self.report.files += 1


# -- debugfs -------------------------------------------------------------------------------


def _run_debugfs(image: Path, commands: Sequence[str], out: IO[bytes], limit: int) -> None:
    """Run ``commands`` in one read-only debugfs under limits, its standard output into
    ``out`` (at most ``limit`` bytes)."""
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("".join(c + "\n" for c in commands))
        script.flush()
        argv: list[str | os.PathLike[str]] = ["prlimit", *_LIMITS, f"--fsize={limit}", "--"]
        argv += ["debugfs", "-c", "-f", script.name, image]
        proc = tools.run(argv, stdout=out.fileno(), check=False)
    err = proc.stderr.decode(errors="replace")
    if "while trying to open" in err or "Filesystem not open" in err:
        detail = next((ln for ln in err.splitlines() if "while trying to open" in ln), "")
        raise BadInput(
            f"{image} holds no ext2/3/4 file system that debugfs can read"
            + (f": {detail.removeprefix('debugfs: ').strip()}" if detail else "")
        )
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise UnsafeContent(
            f"{image}: reading the file system failed (debugfs exit {proc.returncode}): {last}",
            hint="the disk is corrupt, or too large to list",
        )


def _listing(image: Path, commands: list[str]) -> Iterator[bytes]:
    """The output of each of ``commands`` (listing commands, whose output a guest cannot
    shape into debugfs's own echo lines), run in batches."""
    for i in range(0, len(commands), _BATCH):
        chunk = commands[i : i + _BATCH]
        with tempfile.TemporaryFile() as out:
            _run_debugfs(image, chunk, out, _LISTING_OUTPUT)
            out.seek(0)
            data = out.read()
        pos = 0
        starts = []
        for command in chunk:
            echo = f"debugfs: {command}\n".encode()
            at = data.find(echo, pos)
            if at < 0:
                raise UnsafeContent(f"{image}: debugfs did not run {command}", hint=_HOSTILE)
            starts.append((at, at + len(echo)))
            pos = at + len(echo)
        for j, (_, begin) in enumerate(starts):
            yield data[begin : starts[j + 1][0] if j + 1 < len(starts) else len(data)]


def superblock(image: Path) -> tuple[int, int, bool]:
    """(block size, capacity in bytes, whether files may have extents) from the
    superblock, refusing what vmwu does not read: another file system, and ext4 features
    that change how entries are stored."""
    try:
        with open(image, "rb") as fh:
            fh.seek(1024)
            raw = fh.read(1024)
            capacity = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise BadInput(f"cannot read {image}: {exc.strerror}") from exc
    if len(raw) < 1024:
        raise BadInput(f"{image} is too small to hold an ext2/3/4 file system")
    inodes, log_block, per_group, magic = _SB.unpack_from(raw)
    if magic != _EXT_MAGIC or log_block > 6 or per_group == 0 or inodes == 0:
        raise BadInput(f"{image} holds no ext2/3/4 file system")
    (incompat,) = struct.unpack_from("<I", raw, 0x60)
    for bit, feature in _INCOMPAT_REFUSED.items():
        if incompat & bit:
            raise UnsafeContent(
                f"{image}: the file system uses the {feature} feature, which vmwu does not read",
                hint="keep the output disk as vmwu made it (do not reformat it in the guest)",
            )
    return 1024 << log_block, capacity, bool(incompat & _INCOMPAT_EXTENTS)


def _parse_ls(out: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    for line in out.split(b"\n"):
        m = _LS_LINE.match(line)
        if m is not None:
            ino, mode, _type, size, name = m.groups()
            name = _HEX_ESCAPE.sub(lambda h: bytes([int(h.group(1), 16)]), name)
            yield int(ino), int(mode, 8), int(size), name


def scan(image: Path) -> Tree:
    """List every entry of the file system in ``image`` (see the module docstring)."""
    block_size, capacity, extents = superblock(image)
    tree = Tree(image, block_size, capacity)
    level: list[tuple[tuple[bytes, ...], int]] = [((), 2)]  # directories to list
    dirs_seen = {2}
    for _depth in range(MAX_DEPTH):
        if not level:
            break
        nxt: list[tuple[tuple[bytes, ...], int]] = []
        outputs = _listing(image, [f"ls -l <{ino}>" for _, ino in level])
        for (parts, _), out in zip(level, outputs, strict=True):
            for ino, mode, size, name in _parse_ls(out):
                if name in (b".", b"..") and stat.S_ISDIR(mode):
                    continue  # the directory's own entries
                entry = Entry((*parts, name), ino, mode, size)
                problem = name_problem(name)
                if problem is None and stat.S_ISDIR(mode):
                    if ino in dirs_seen:
                        problem = "a directory met twice (a loop)"
                    elif size > MAX_DIR_BYTES:
                        problem = f"the directory is larger than {MAX_DIR_BYTES} bytes"
                if problem is not None:
                    tree.refused.append((entry.shown, problem))
                    continue
                if len(tree.entries) >= MAX_ENTRIES:
                    raise UnsafeContent(
                        f"{image}: more than {MAX_ENTRIES} entries",
                        hint="pack many small outputs into one archive in the guest",
                    )
                if stat.S_ISDIR(mode):
                    dirs_seen.add(ino)
                    nxt.append((entry.parts, ino))
                tree.entries.append(entry)
        level = nxt
    for parts, _ in level:
        tree.refused.append((display([os.fsdecode(p) for p in parts]), "too deep"))
    if extents:
        _add_extents(tree)
    _add_links(tree)
    return tree


def _add_extents(tree: Tree) -> None:
    files: dict[int, list[Entry]] = {}
    for e in tree.entries:
        if stat.S_ISREG(e.mode):
            files.setdefault(e.ino, []).append(e)
    inos = sorted(files)
    for ino, out in zip(inos, _listing(tree.image, [f"ex -l <{i}>" for i in inos]), strict=True):
        extents: list[Extent] | None = None  # no extent lines: a block-mapped file
        for line in out.split(b"\n"):
            m = _EX_LINE.match(line)
            if m is None:
                continue
            lstart, lend, pstart, pend, length, flags = (g.decode() for g in m.groups())
            n = int(length)
            if int(lend) - int(lstart) + 1 != n or int(pend) - int(pstart) + 1 != n:
                raise UnsafeContent(f"{tree.image}: a damaged extent in inode {ino}", hint=_HOSTILE)
            extents = extents if extents is not None else []
            if "Uninit" not in flags:  # an unwritten extent reads as zeros: a hole
                extents.append(Extent(int(lstart), int(pstart), n))
        for e in files[ino]:
            e.extents = extents


def _add_links(tree: Tree) -> None:
    """Link targets: short ones are stored in the inode itself (read from its hex dump),
    longer ones in a block (read with ``cat``)."""
    links = [e for e in tree.entries if stat.S_ISLNK(e.mode) and 0 < e.size <= MAX_LINK]
    fast = [e for e in links if e.size < 60]
    for entry, out in zip(
        fast, _listing(tree.image, [f"idump <{e.ino}>" for e in fast]), strict=True
    ):
        entry.target = _inode_bytes(out)[40 : 40 + entry.size]
    for entry in (e for e in links if e.size >= 60):
        with tempfile.TemporaryFile() as tmp:
            _run_debugfs(tree.image, [f"cat <{entry.ino}>"], tmp, entry.size + 4096)
            tmp.seek(0)
            entry.target = tmp.read().partition(b"\n")[2][: entry.size]
    for entry in links:
        if entry.target is not None and (len(entry.target) != entry.size or b"\0" in entry.target):
            entry.target = None


def _inode_bytes(out: bytes) -> bytes:
    """The first bytes of an inode from debugfs's hex dump (offsets in octal; a ``*``
    line stands for repeats of the line before, up to the next offset)."""
    data = bytearray()
    last = b""
    for line in out.split(b"\n"):
        m = _IDUMP_LINE.match(line)
        if m is None:
            continue
        offset = int(m.group(1), 8)
        while last and len(data) < offset and len(data) < 4096:  # after a "*" line
            data += last
        if offset != len(data):
            break
        last = bytes.fromhex(m.group(2).decode().replace(" ", ""))
        data += last
    return bytes(data)


def read_file(image: Path, path: str, *, limit: int = 16 << 20) -> bytes | None:
    """One regular file of a guest-made disk (``None`` if absent or not a regular file), up
    to ``limit`` bytes. Only the directories along ``path`` are listed, and no component
    is followed if it is a link."""
    block_size, capacity, extents = superblock(image)
    tree = Tree(image, block_size, capacity)
    ino = 2
    found: tuple[bytes, ...] = ()
    parts = [os.fsencode(p) for p in path.strip("/").split("/") if p]
    for i, part in enumerate(parts):
        listing = next(_listing(image, [f"ls -l <{ino}>"]))
        match = next((row for row in _parse_ls(listing) if row[3] == part), None)
        if match is None:
            return None
        ino, mode, size, _ = match
        found = (*found, part)
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            return None
    if not found:
        return None
    tree.entries.append(Entry(found, ino, mode, size))
    if extents:
        _add_extents(tree)
    return tree.read(path, limit)
