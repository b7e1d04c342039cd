"""Hostile ext2/3/4 images made in tests, as a guest could leave its output disk: names
that e2fsprogs would never write, links where files should be, blocks shared by two files.

Everything is done on image files with mke2fs -d, debugfs -w and byte patches: no root,
no mounting."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_fs(image: Path, src: Path, *, size: int = 16 << 20, extents: bool = True) -> Path:
    """An ext4 image of ``src`` without a journal or metadata checksums (so that patched
    directory blocks still read); with or without extents."""
    features = "^has_journal,^metadata_csum," + ("extent" if extents else "^extent,^flex_bg,^64bit")
    image.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", features, "-d", src, image, f"{size >> 10}k"],
        check=True,
    )
    return image


def rename_entry(image: Path, old: bytes, new: bytes) -> None:
    """Give the directory entry named ``old`` the name ``new`` (same length) by patching the
    image's bytes: the only way to get a '/' or '..' into a name."""
    assert len(old) == len(new), "a patched name keeps its length"
    data = image.read_bytes()
    assert data.count(old) == 1, f"{old!r} must occur exactly once in the image"
    image.write_bytes(data.replace(old, new))


def debugfs_w(image: Path, *commands: str) -> None:
    """Run write commands of debugfs on the image (mknod, ln, copy_inode, sif, ...)."""
    script = "".join(c + "\n" for c in commands)
    subprocess.run(
        ["debugfs", "-w", "-f", "-", image],
        input=script.encode(),
        check=True,
        capture_output=True,
    )


def inode_of(image: Path, path: str) -> int:
    out = subprocess.run(
        ["debugfs", "-R", f"stat {path}", image], check=True, capture_output=True
    ).stdout.decode()
    return int(out.split()[1])


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under ``root`` with its mode and content (or link target)."""
    seen: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            seen[str(path)] = (st.st_mode, str(path.readlink()))
        elif path.is_file():
            seen[str(path)] = (st.st_mode, path.read_bytes())
        else:
            seen[str(path)] = (st.st_mode, b"")
    return seen
