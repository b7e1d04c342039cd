"""ext2/3/4 file systems in image files, without mounting anything.

Filling: ``mkfs.ext4 -d`` copies a staged folder into a fresh image. Reading back:
``debugfs -R rdump``. Both run as an ordinary user.

Reproducibility: mke2fs takes inode ctimes from the staged files (which we cannot set), so
after filling we rewrite every used inode's ctime with ``debugfs -w`` and pin the UUID,
hash seed and creation time; the same staged tree then gives the same bytes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from vmwu import tools
from vmwu.errors import BadInput, HostDiskFull

FILESYSTEMS = ("ext2", "ext3", "ext4")

# Deterministic identity for every file system vmwu makes; the label tells disks apart.
_FIXED_UUIDS = {
    "VMWU-APP": "7c6e0a5e-0000-4000-8000-00000000a001",
    "VMWU-OUT": "7c6e0a5e-0000-4000-8000-00000000a002",
}
_HASH_SEED = "7c6e0a5e-0000-4000-8000-0000000000ff"
_FIRST_INODE = 11  # lost+found; mke2fs -d allocates the tree's inodes right after it


def content_size(src: Path) -> tuple[int, int]:
    """Bytes of data (rounded up to 4 KiB blocks) and number of inodes under ``src``."""
    data = 0
    inodes = 1
    for root, dirs, files in os.walk(src):
        inodes += len(dirs) + len(files)
        for name in files + dirs:
            st = os.lstat(os.path.join(root, name))
            data += (st.st_size + 4095) // 4096 * 4096
    return data, inodes


def image_size_for(src: Path | None, extra: int) -> int:
    """A size for an image holding ``src`` plus ``extra`` free bytes (metadata included)."""
    data, inodes = content_size(src) if src else (0, 1)
    # inode tables (256 B each, with head room), group descriptors and bitmaps; ~3 % + 2 MiB
    # keeps small images bootable and large ones tight.
    overhead = inodes * 512 + data // 32 + 2 * 1024 * 1024
    size = data + extra + overhead
    return (size + 1024 * 1024 - 1) // (1024 * 1024) * (1024 * 1024)


# ext2 and ext3 cannot leave their inode tables unwritten (that needs ext4's group
# descriptor checksums), so mke2fs writes them whole: ~16 MiB of host disk per GiB of disk.
# They are kept to this size; ext4 disks cost what they hold (see make_image).
MAX_ZEROED_ITABLE_DISK = 16 * 1024**3

# ext4 features of every vmwu disk (with MKE2FS_CONFIG=/dev/null nothing else is on):
# extents; uninit_bg, so that inode tables and bitmaps of unused groups are never written
# (lazy_itable_init=1) and the guest's agent mounts with noinit_itable so that its kernel
# does not zero them either; flex_bg with 1024 groups per flex group and sparse_super2
# (two superblock backups) instead of resize_inode, so that the metadata that is written
# sits in a few places: a 10 TiB output disk is 13 MiB of raw image and 8 MiB of qcow2.
EXT4_FEATURES = "^has_journal,extent,flex_bg,uninit_bg,^resize_inode,sparse_super2"
FLEX_BG_GROUPS = "1024"


def check_size(size: int, fstype: str, what: str) -> None:
    """Refuse a disk that vmwu will not make (one line naming ``what``)."""
    from vmwu.sizes import MAX_DISK_SIZE, format_over, format_size

    if fstype != "ext4" and size > MAX_ZEROED_ITABLE_DISK:
        raise BadInput(
            f"{what} is {format_over(size, MAX_ZEROED_ITABLE_DISK)}: an {fstype} disk can be "
            f"at most {format_size(MAX_ZEROED_ITABLE_DISK)} (its inode tables are written whole)",
            hint='use ext4 (base-image-filesystem = "ext4"), whose disks cost what they hold',
        )
    if size > MAX_DISK_SIZE:
        raise BadInput(
            f"{what} is {format_over(size, MAX_DISK_SIZE)}: a disk can be at most "
            f"{format_size(MAX_DISK_SIZE)}"
        )


def make_image(
    image: Path,
    size: int,
    *,
    label: str,
    src: Path | None = None,
    fstype: str = "ext4",
    epoch: int = 946684800,
) -> None:
    """Create a raw image of ``size`` bytes holding an ``fstype`` file system labelled
    ``label``, filled from ``src`` if given. Every timestamp is ``epoch``. The image is
    sparse: an empty ext4 file system costs the host a few MiB whatever its size."""
    if fstype not in FILESYSTEMS:
        raise BadInput(f"unsupported file system {fstype!r}: use one of {', '.join(FILESYSTEMS)}")
    check_size(size, fstype, f"disk {label}")
    uuid = _FIXED_UUIDS.get(label, "7c6e0a5e-0000-4000-8000-00000000a0ff")
    try:
        with open(image, "wb") as fh:
            fh.truncate(size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HostDiskFull(str(image.parent)) from exc
        if exc.errno == errno.EFBIG:
            raise BadInput(
                f"the host file system holding {image.parent} cannot hold a disk of {size} bytes"
            ) from exc
        raise
    # No journal: instances are thrown away or read back by debugfs, which does not replay
    # a journal; without one, what the guest synced is what we read.
    lazy = "1" if fstype == "ext4" else "0"
    argv: list[str | os.PathLike[str]] = [
        "mkfs.ext4" if fstype == "ext4" else "mke2fs",
        "-q",
        "-F",
        "-t",
        fstype,
        "-L",
        label,
        "-U",
        uuid,
        "-m",
        "0",
        "-E",
        f"hash_seed={_HASH_SEED},root_owner=0:0,lazy_itable_init={lazy},nodiscard",
    ]
    if fstype == "ext4":
        argv += ["-O", EXT4_FEATURES, "-G", FLEX_BG_GROUPS]
    elif fstype != "ext2":
        argv += ["-O", "^has_journal"]
    if src is not None:
        argv += ["-d", src]
    argv.append(image)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": "/dev/null"}
    tools.run(argv, env=env, disk_hint=str(image.parent))
    if src is not None:
        _pin_ctimes(image, src, epoch)


def _pin_ctimes(image: Path, src: Path, epoch: int) -> None:
    _data, inodes = content_size(src)
    used = [2] + list(range(_FIRST_INODE, _FIRST_INODE + inodes))
    # "@N" is debugfs's syntax for seconds since the epoch (a bare number is a date string).
    cmds = "".join(
        f"sif <{i}> {field} @{epoch}\n"
        for i in used
        for field in ("atime", "mtime", "ctime", "crtime")
    )
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as fh:
        fh.write(cmds)
        script = fh.name
    try:
        tools.run(
            ["debugfs", "-w", "-f", script, image],
            env={"E2FSPROGS_FAKE_TIME": str(epoch)},
            disk_hint=str(image.parent),
        )
    finally:
        os.unlink(script)


def compact(image: Path, dest: Path) -> None:
    """Copy the ext4 file system in ``image`` to ``dest`` with only its used blocks (the
    rest are holes, which ``qemu-img convert`` skips): what deleted files left behind
    does not travel in the qcow2 made from it."""
    tools.run(["e2image", "-ra", image, dest], disk_hint=str(dest.parent))


def free_bytes(image: Path) -> int | None:
    """Free bytes of the file system in ``image`` (one vmwu made) per its superblock."""
    out = tools.run(["debugfs", "-R", "stats", image], check=False).stdout.decode()
    free = block = None
    for line in out.splitlines():
        if line.startswith("Free blocks:"):
            free = int(line.split(":")[1])
        elif line.startswith("Block size:"):
            block = int(line.split(":")[1])
    return free * block if free is not None and block is not None else None
