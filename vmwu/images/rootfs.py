"""A root file system from a tarball into an ext4 image: no root, no mounts, no loop devices.

``mmdebstrap`` writes the tree as a tarball whose entries carry the right owners, modes
and device nodes whatever mode it ran in. An ordinary user cannot stage such a tree on
disk (``chown`` to other users, setgid for foreign groups and ``mknod`` need privileges),
and ``mkfs.ext4 -d`` copies what it finds on disk. So:

1. :func:`extract` unpacks the tarball into a staging directory with what the user may
   do (as root: everything but device nodes), and returns the *fix-ups*: every entry
   whose owner, group or mode on disk differs from the tarball, and every device node;
2. the caller may add files of its own to the staging tree (:func:`add_file`), with the
   owner and mode they must have in the image;
3. :func:`make_ext4` runs ``mkfs.ext4 -d`` on the staging tree, then applies the fix-ups
   inside the image with one ``debugfs -w`` script (``sif`` for owners and modes,
   ``mknod`` for devices).

Extended attributes (file capabilities such as ``ping``'s) are not carried over.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vmwu import tools
from vmwu.errors import BadInput, HostDiskFull
from vmwu.hostfs import is_disk_full

_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Fixup:
    """What an entry must be in the image: ``path`` (absolute in the image), full
    ``mode`` (type bits included), owner and group, and for device nodes ``rdev``."""

    path: str
    mode: int
    uid: int
    gid: int
    rdev: tuple[int, int] | None = None


@dataclass
class Staged:
    """A staged tree and the fix-ups it needs in the image."""

    root: Path
    fixups: list[Fixup] = field(default_factory=list)

    def add_file(
        self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
        """Write ``data`` at ``path`` (absolute in the image), parents created, and record
        the owner and mode it must have."""
        target = self._target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.write_bytes(data)
        target.chmod(mode & 0o777)
        self._expect(path, stat.S_IFREG | mode, uid, gid)

    def add_symlink(self, path: str, dest: str) -> None:
        target = self._target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(dest, target)
        self._expect(path, stat.S_IFLNK | 0o777, 0, 0)

    def _target(self, path: str) -> Path:
        rel = path.lstrip("/")
        if not rel or ".." in Path(rel).parts:
            raise ValueError(f"bad path in the image: {path!r}")
        # Callers name real directories (usr/local/bin, etc/systemd/system): a parent
        # that is an absolute symlink would point out of the tree.
        for parent in (self.root / rel).parents:
            if parent == self.root:
                break
            if parent.is_symlink() and os.readlink(parent).startswith("/"):
                raise ValueError(f"{path!r}: {parent} is an absolute symlink")
        return self.root / rel

    def _expect(self, path: str, mode: int, uid: int, gid: int) -> None:
        st = os.lstat(self._target(path))
        if (st.st_uid, st.st_gid, st.st_mode) != (uid, gid, mode) and not stat.S_ISLNK(mode):
            self.fixups.append(Fixup(self._image_path(path), mode, uid, gid))
        elif stat.S_ISLNK(mode) and (st.st_uid, st.st_gid) != (uid, gid):
            self.fixups.append(Fixup(self._image_path(path), mode, uid, gid))

    def _image_path(self, path: str) -> str:
        return "/" + path.lstrip("/")


def extract(tarball: Path, dest: Path) -> Staged:
    """Unpack ``tarball`` (a root file system) into ``dest`` (created) and return the
    staged tree with the fix-ups the image needs."""
    dest.mkdir(parents=True, exist_ok=True)
    staged = Staged(dest)
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        with tarfile.open(tarball) as tar:
            for info in tar:
                _extract_one(tar, info, dest, staged, dirs)
    except (tarfile.TarError, EOFError) as exc:
        raise BadInput(f"{tarball} is not a readable root file system tarball: {exc}") from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise HostDiskFull(str(dest)) from exc
        raise
    for path, info in reversed(dirs):  # contents first changed their mtimes
        os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)
    return staged


def _member_path(info: tarfile.TarInfo) -> str:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name.startswith("/") or ".." in Path(name).parts:
        raise BadInput(f"unsafe member {info.name!r} in a root file system tarball")
    return name


def _extract_one(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    dest: Path,
    staged: Staged,
    dirs: list[tuple[Path, tarfile.TarInfo]],
) -> None:
    name = _member_path(info)
    target = dest / name if name else dest
    image_path = "/" + name
    mode = info.mode & 0o7777
    if info.isdir():
        target.mkdir(exist_ok=True)
        full = stat.S_IFDIR | mode
        dirs.append((target, info))
    elif info.isreg():
        src = tar.extractfile(info)
        assert src is not None
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        full = stat.S_IFREG | mode
    elif info.issym():
        os.symlink(info.linkname, target)
        full = stat.S_IFLNK | 0o777
    elif info.islnk():
        os.link(dest / _member_path(tar.getmember(info.linkname)), target)
        return  # the same inode as its first name: fixed up there
    elif info.ischr() or info.isblk() or info.isfifo():
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else stat.S_IFIFO
        rdev = (info.devmajor, info.devminor) if not info.isfifo() else (0, 0)
        staged.fixups.append(Fixup(image_path, kind | mode, info.uid, info.gid, rdev))
        return
    else:
        return  # sockets and the like have no place in an image
    if _IS_ROOT:
        os.lchown(target, info.uid, info.gid)
    if not info.issym():
        os.chmod(target, mode)
        os.utime(target, (info.mtime, info.mtime))
    st = os.lstat(target)
    if (st.st_uid, st.st_gid) != (info.uid, info.gid) or (not info.issym() and st.st_mode != full):
        staged.fixups.append(Fixup(image_path, full, info.uid, info.gid))


def _quote(path: str) -> str:
    if any(c in path for c in '"\n\\'):
        raise BadInput(f"cannot carry the file name {path!r} into the image")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def debugfs_script(fixups: list[Fixup]) -> str:
    """The ``debugfs -w`` commands that apply ``fixups`` (devices are created first)."""
    lines: list[str] = []
    for f in fixups:
        path = _quote(f.path)
        if f.rdev is not None:
            # debugfs's mknod takes a name in the current directory, not a path
            parent, _, leaf = f.path.rpartition("/")
            lines.append(f"cd {_quote(parent or '/')}")
            if stat.S_ISFIFO(f.mode):
                lines.append(f"mknod {_quote(leaf)} p")
            else:
                kind = "c" if stat.S_ISCHR(f.mode) else "b"
                lines.append(f"mknod {_quote(leaf)} {kind} {f.rdev[0]} {f.rdev[1]}")
            lines.append("cd /")
        lines.append(f"sif {path} mode 0{f.mode:o}")
        lines.append(f"sif {path} uid {f.uid}")
        lines.append(f"sif {path} gid {f.gid}")
    return "".join(line + "\n" for line in lines)


def make_ext4(
    image: Path,
    staged: Staged,
    *,
    size: int,
    label: str,
    uuid: str,
    journal: bool = False,
    offset: int = 0,
) -> None:
    """A raw ext4 image of ``size`` bytes holding the staged tree, fixed up. With
    ``offset``, the file system is written at that byte offset of an existing ``image``
    (a partition of a whole-disk image) instead."""
    try:
        if not offset:
            with open(image, "wb") as fh:
                fh.truncate(size)
    except OSError as exc:
        if exc.errno == 28:
            raise HostDiskFull(str(image.parent)) from exc
        raise
    argv: list[str | os.PathLike[str]] = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        label,
        "-U",
        uuid,
        "-m",
        "0",
        "-E",
        f"root_owner=0:0,lazy_itable_init=0,nodiscard,offset={offset}",
    ]
    if not journal:
        argv += ["-O", "^has_journal"]
    argv += ["-d", staged.root, image, f"{size // 1024}k"]
    tools.run(argv, env={"MKE2FS_CONFIG": "/dev/null"}, disk_hint=str(image.parent))
    if not staged.fixups:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as fh:
        fh.write(debugfs_script(staged.fixups))
        script = fh.name
    try:
        # "FILE?offset=N": e2fsprogs' I/O option for a file system inside a bigger file
        target = f"{os.fspath(image)}?offset={offset}" if offset else os.fspath(image)
        proc = tools.run(["debugfs", "-w", "-f", script, target], disk_hint=str(image.parent))
    finally:
        os.unlink(script)
    # debugfs exits 0 whatever its commands did; its complaints name the command.
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise BadInput(f"cannot fix up owners and modes in {image}: {errors[0]}")


def tree_size(root: Path) -> int:
    """Bytes the staged tree needs (4 KiB blocks), hard links counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += (st.st_size + 4095) // 4096 * 4096 + 256
    return total
