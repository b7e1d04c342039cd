"""Property-based tests of the output read-back (issue 11): whatever bytes a guest leaves
on its output disk, reading it back raises nothing but vmwu's own errors and writes
nothing outside the destination.

Examples start from small real file systems (with and without extents) and overwrite
bytes, mostly in the metadata (superblock, group descriptors, inode tables, directory
blocks). ``VMWU_FUZZ_EXAMPLES`` raises the number of examples for a longer campaign."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.craft import make_fs
from vmwu.errors import VmwuError
from vmwu.hostfs import SafeDir
from vmwu.images import ext4_read

EXAMPLES = int(os.environ.get("VMWU_FUZZ_EXAMPLES", "60"))
IMAGE_SIZE = 1 << 20


class Seeds:
    """The seed images (kept out of hypothesis's reports: they are a megabyte each)."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self._images = images

    def __getitem__(self, which: str) -> bytes:
        return self._images[which]

    def __repr__(self) -> str:
        return f"Seeds({', '.join(self._images)})"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    base = tmp_path_factory.mktemp("seeds")
    src = base / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "d" / "b.bin").write_bytes(os.urandom(20000))
    (src / "d" / "e" / "c").write_text("gamma\n")
    (src / "link").symlink_to("d/b.bin")
    (src / "far").symlink_to("/" + "x" * 100)
    os.link(src / "a.txt", src / "d" / "hard")
    out = {}
    for name, extents in (("extents", True), ("blockmaps", False)):
        image = make_fs(base / f"{name}.img", src, size=IMAGE_SIZE, extents=extents)
        out[name] = image.read_bytes()
    return Seeds(out)


def used_blocks(image: bytes) -> list[int]:
    """The 4 KiB blocks of a seed that are not all zeros: its metadata and data."""
    return [i for i in range(0, len(image), 4096) if image[i : i + 4096].strip(b"\0")]


# Values that make sizes, counts and block numbers interesting.
SPECIAL = [b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x02\0\0\0", b"\x01\0", b"/", b"..", b"\x0b\0\0\0"]
chunks = st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(SPECIAL))


@st.composite
def patches(draw: st.DrawFn, seed: bytes) -> list[tuple[int, bytes]]:
    blocks = used_blocks(seed)
    n = draw(st.integers(1, 8))
    out = []
    for _ in range(n):
        if draw(st.booleans()):  # inside a block that holds something
            # entries sit at the start of directory blocks and inode tables
            within = draw(st.one_of(st.integers(0, 511), st.integers(0, 4095)))
            offset = draw(st.sampled_from(blocks)) + within
        else:
            offset = draw(st.integers(0, IMAGE_SIZE - 1))
        out.append((offset, draw(chunks)))
    return out


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(which=st.sampled_from(["extents", "blockmaps"]), data=st.data())
def test_read_back_of_a_damaged_disk(
    tmp_path: Path, seeds: Seeds, which: str, data: st.DataObject
) -> None:
    changes = data.draw(patches(seeds[which]))
    work = tmp_path / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    disk = bytearray(seeds[which])
    for offset, chunk in changes:
        disk[offset : offset + len(chunk)] = chunk
    del disk[IMAGE_SIZE:]
    image = work / "disk.img"
    image.write_bytes(bytes(disk))
    dest = work / "dest"
    try:
        tree = ext4_read.scan(image)
        with SafeDir.open(dest, create=True) as d:
            report = tree.extract(d)
        event(f"read back: {report.files} files, {len(report.skipped)} skipped")
    except VmwuError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
        report = None
    assert sorted(os.listdir(work)) in (["disk.img"], ["dest", "disk.img"])
    if report is not None:
        written = 0
        for root, dirs, files in os.walk(dest):
            for name in dirs + files:
                st_ = os.lstat(os.path.join(root, name))
                assert not (st_.st_mode & 0o7000), "no set-id or sticky bit"
                if os.path.isfile(os.path.join(root, name)) and not os.path.islink(
                    os.path.join(root, name)
                ):
                    written += st_.st_blocks * 512
        assert written <= len(disk) + 1024 * 1024


FIELDS = ["mode", "size", "flags", "links_count", "blocks"] + [f"block[{i}]" for i in range(15)]
VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 11, 12, 0o40755, 0o100644, 0o120777, 0o20644, 0x80000, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 300),
)
INODES = st.integers(2, 22)
NAMES = st.sampled_from(["x", "a.txt", "d", "..", ".", "lost+found", "n" * 255])
OPS = st.one_of(
    st.tuples(st.just("sif"), INODES, st.sampled_from(FIELDS), VALUES),
    st.tuples(st.just("ln"), INODES, st.sampled_from(["/", "/d/", "/d/e/"]), NAMES),
    st.tuples(st.just("copy_inode"), INODES, INODES),
)


def command(op: tuple[object, ...]) -> str:
    if op[0] == "sif":
        return f"sif <{op[1]}> {op[2]} {op[3]}"
    if op[0] == "ln":
        return f"ln <{op[1]}> {op[2]}{op[3]}"
    return f"copy_inode <{op[1]}> <{op[2]}>"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(which=st.sampled_from(["extents", "blockmaps"]), ops=st.lists(OPS, min_size=1, max_size=6))
def test_read_back_of_a_disk_with_forged_inodes(
    tmp_path: Path, seeds: Seeds, which: str, ops: list[tuple[object, ...]]
) -> None:
    """Inode fields and directory entries set to what a guest likes, with debugfs -w."""
    work = tmp_path / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    image = work / "disk.img"
    image.write_bytes(seeds[which])
    subprocess.run(
        ["debugfs", "-w", "-f", "-", image],
        input="".join(command(op) + "\n" for op in ops).encode(),
        capture_output=True,
        check=False,
    )
    dest = work / "dest"
    try:
        tree = ext4_read.scan(image)
        with SafeDir.open(dest, create=True) as d:
            report = tree.extract(d)
        event(f"read back: {report.files} files, {len(report.skipped)} skipped")
    except VmwuError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
    assert sorted(os.listdir(work)) in (["disk.img"], ["dest", "disk.img"])
    used = sum(
        os.lstat(os.path.join(r, f)).st_blocks * 512 for r, _, fs in os.walk(dest) for f in fs
    )
    assert used <= (1 << 20) + (1 << 20)
