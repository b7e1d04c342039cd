"""ext4 images built and read back without mounting; the node cache's filling rules."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from vmwu.cache import NodeCache
from vmwu.errors import HostDiskFull
from vmwu.hostfs import SafeDir
from vmwu.images import ext4, ext4_read


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(10000))
    (root / "sub" / "exe").write_text("#!/bin/sh\n")
    (root / "sub" / "exe").chmod(0o755)
    (root / "link").symlink_to("/etc/passwd")


def test_ext4_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    image = tmp_path / "a.img"
    ext4.make_image(image, ext4.image_size_for(src, 1 << 20), label="VMWU-APP", src=src)
    out = tmp_path / "out"
    with SafeDir.open(out, create=True) as dest:
        ext4_read.scan(image).extract(dest)
    assert (out / "a.txt").read_text() == "hello\n"
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.access(out / "sub" / "exe", os.X_OK)
    assert (out / "link").is_symlink() and os.readlink(out / "link") == "/etc/passwd"
    assert not (out / "lost+found").exists()
    assert ext4_read.read_file(image, "/a.txt") == b"hello\n"
    assert ext4_read.read_file(image, "/nope") is None
    assert ext4_read.read_file(image, "/sub/exe") == b"#!/bin/sh\n"
    assert ext4_read.read_file(image, "/link/x") is None  # never through a link


def test_ext4_is_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    size = ext4.image_size_for(src, 1 << 20)
    ext4.make_image(a, size, label="VMWU-APP", src=src)
    os.utime(src / "a.txt", (1, 1))  # touching inputs changes nothing
    ext4.make_image(b, size, label="VMWU-APP", src=src)
    assert a.read_bytes() == b.read_bytes()


def test_size_leaves_room_for_buffer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    image = tmp_path / "a.img"
    ext4.make_image(image, ext4.image_size_for(src, 8 << 20), label="VMWU-APP", src=src)
    free = ext4.free_bytes(image)
    assert free is not None and free >= 8 << 20


def test_cache_fills_once_under_concurrency(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    calls = []

    def fill(tmp: Path) -> None:
        calls.append(1)
        tmp.write_bytes(b"x" * 1000)

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.ensure_blob("ab" * 32, fill)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and results[0].read_bytes() == b"x" * 1000
    assert not os.access(results[0], os.W_OK) or os.geteuid() == 0
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_cache_leaves_nothing_when_disk_fills(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")

    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(HostDiskFull):
        cache.ensure_blob("cd" * 32, fill)
    assert cache.blob("cd" * 32) is None
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_cache_leaves_nothing_when_filler_fails(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")

    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"bad")
        raise ValueError("corrupt")

    with pytest.raises(ValueError):
        cache.ensure_blob("ef" * 32, fill)
    assert cache.blob("ef" * 32) is None
