"""Output disks written by a hostile guest, read back by vmwu (issue 11, classes 1, 4, 5).

Every image here is one a guest could leave: the guest owns its output disk and can write
any bytes to it. The host side must write nothing outside the destination, follow no link,
create no device, overwrite nothing, and answer with one line when it refuses."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_vmwu
from tests.craft import debugfs_w, inode_of, make_fs, rename_entry, snapshot
from vmwu.errors import BadInput, UnsafeContent
from vmwu.hostfs import Report, SafeDir
from vmwu.images import ext4_read


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Files of the host a hostile guest would like to reach."""
    h = tmp_path / "host"
    (h / "victim").mkdir(parents=True)
    (h / "secret.txt").write_text("host secret\n")
    (h / "victim" / "keep.txt").write_text("keep me\n")
    return h


def extract(image: Path, dest: Path) -> list[str]:
    """``vmwu extract IMAGE DEST``, as a user would run it; the lines of what it skipped."""
    result = run_vmwu("extract", image, dest)
    assert result.returncode == 0, result.stderr
    prefix = "vmwu: not extracted: "
    lines = result.stderr.splitlines()
    assert all(line.startswith(prefix) for line in lines), result.stderr
    return [line.removeprefix(prefix) for line in lines]


def library_extract(image: Path, dest: Path) -> Report:
    with SafeDir.open(dest, create=True) as d:
        return ext4_read.scan(image).extract(d)


@pytest.mark.parametrize("extents", [True, False], ids=["extents", "block-maps"])
def test_names_with_slash_and_dotdot_are_refused(tmp_path: Path, host: Path, extents: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    escape = f"../../host/{'x' * 6}".encode()  # same length as the placeholder below
    (src / ("P" * len(escape))).write_text("escaped!\n")
    (src / "QQ").write_text("dotdot\n")
    (src / "ok.txt").write_text("fine\n")
    image = make_fs(tmp_path / "out.img", src, extents=extents)
    rename_entry(image, b"P" * len(escape), escape)
    rename_entry(image, b"QQ", b"..")
    before = snapshot(host)
    skipped = extract(image, tmp_path / "dest")
    assert snapshot(host) == before
    assert not (host / "xxxxxx").exists() and not (tmp_path / "xxxxxx").exists()
    assert (tmp_path / "dest" / "ok.txt").read_text() == "fine\n"
    assert any("'/'" in line for line in skipped) and any("'..'" in line for line in skipped)
    assert sorted(os.listdir(tmp_path / "dest")) == ["ok.txt"]


def test_link_then_file_of_the_same_name_never_writes_through_the_link(
    tmp_path: Path, host: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "L1").symlink_to(host / "secret.txt")
    (src / "L2").write_text("overwritten?\n")
    (src / "D1").symlink_to(host / "victim")
    (src / "D2").mkdir()
    (src / "D2" / "keep.txt").write_text("replaced?\n")
    (src / "D2" / "new.txt").write_text("planted?\n")
    image = make_fs(tmp_path / "out.img", src)
    rename_entry(image, b"L1", b"LL")
    rename_entry(image, b"L2", b"LL")
    rename_entry(image, b"D1", b"DD")
    rename_entry(image, b"D2", b"DD")
    before = snapshot(host)
    skipped = extract(image, tmp_path / "dest")
    assert snapshot(host) == before
    dest = tmp_path / "dest"
    assert (dest / "LL").read_text() == "overwritten?\n" and not (dest / "LL").is_symlink()
    assert (dest / "DD").is_dir() and not (dest / "DD").is_symlink()
    assert (dest / "DD" / "new.txt").read_text() == "planted?\n"
    assert len(skipped) == 2  # the two links lost to the real entries


def test_links_are_recreated_as_links_and_never_followed(tmp_path: Path, host: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "abs").symlink_to(host / "secret.txt")
    (src / "rel").symlink_to("../../host/secret.txt")
    (src / "d" / "up").symlink_to("../../../host/victim")
    (src / "long").symlink_to("y" * 200)
    image = make_fs(tmp_path / "out.img", src)
    before = snapshot(host)
    extract(image, tmp_path / "dest")
    assert snapshot(host) == before
    dest = tmp_path / "dest"
    assert os.readlink(dest / "abs") == str(host / "secret.txt")
    assert os.readlink(dest / "rel") == "../../host/secret.txt"
    assert os.readlink(dest / "d" / "up") == "../../../host/victim"
    assert os.readlink(dest / "long") == "y" * 200


def test_devices_fifos_and_set_id_bits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "suid").write_text("#!/bin/sh\n")
    (src / "suid").chmod(0o4755)
    os.mkfifo(src / "fifo")
    image = make_fs(tmp_path / "out.img", src)
    debugfs_w(image, "mknod null c 1 3", "mknod disk b 8 0")
    report = library_extract(image, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert sorted(os.listdir(dest)) == ["suid"]
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {"fifo", "null", "disk"}
    assert "character device" in skipped["null"] and "block device" in skipped["disk"]


def test_a_directory_loop_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("once\n")
    image = make_fs(tmp_path / "out.img", src)
    debugfs_w(image, "ln <2> /sub/root", "ln /sub /sub/again")
    skipped = extract(image, tmp_path / "dest")
    assert (tmp_path / "dest" / "sub" / "f").read_text() == "once\n"
    assert sum("loop" in line for line in skipped) == 2
    assert sorted(os.listdir(tmp_path / "dest" / "sub")) == ["f"]


def test_files_sharing_blocks_are_refused(tmp_path: Path) -> None:
    """One block shown in many files would let a small disk fill the host's."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(64 * 1024))
    (src / "b").write_text("b\n")
    image = make_fs(tmp_path / "out.img", src)
    debugfs_w(image, f"copy_inode <{inode_of(image, '/a')}> <{inode_of(image, '/b')}>")
    with pytest.raises(UnsafeContent, match="share disk blocks"):
        library_extract(image, tmp_path / "dest")
    result = run_vmwu("extract", image, tmp_path / "dest")
    assert result.returncode == 241 and "share disk blocks" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dest" / "a").exists()


def test_block_mapped_files_cannot_add_up_to_more_than_the_disk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_text("small\n")
    (src / "huge").write_text("x\n")
    image = make_fs(tmp_path / "out.img", src, extents=False)
    debugfs_w(image, "sif /huge size 0x100000000000")  # 16 TiB claimed, holes
    skipped = extract(image, tmp_path / "dest")
    assert (tmp_path / "dest" / "small").read_text() == "small\n"
    assert not (tmp_path / "dest" / "huge").exists()
    assert any("capacity" in line for line in skipped)


def test_a_sparse_file_larger_than_its_disk_costs_the_host_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "sparse").write_text("head\n")
    image = make_fs(tmp_path / "out.img", src)
    debugfs_w(image, "sif /sparse size 0x10000000000")  # 1 TiB of holes after 5 bytes
    extract(image, tmp_path / "dest")
    out = tmp_path / "dest" / "sparse"
    assert out.stat().st_size == 1 << 40
    assert out.stat().st_blocks * 512 <= 64 * 1024
    with open(out, "rb") as fh:
        assert fh.read(5) == b"head\n"


def test_features_vmwu_does_not_read_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image = tmp_path / "out.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-d", src, image, "8M"], check=True
    )
    with pytest.raises(UnsafeContent, match="inline_data"):
        ext4_read.scan(image)
    result = run_vmwu("extract", image, tmp_path / "dest")
    assert result.returncode == 241 and "inline_data" in result.stderr


def test_not_a_file_system(tmp_path: Path) -> None:
    image = tmp_path / "zeros.img"
    image.write_bytes(bytes(1 << 20))
    with pytest.raises(BadInput, match="no ext2/3/4 file system"):
        ext4_read.scan(image)


def test_names_with_control_bytes_are_kept_and_shown_escaped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "new\nline").write_text("1")
    (src / "back\\slash").write_text("2")
    (src / "ü").write_text("3")
    image = make_fs(tmp_path / "out.img", src)
    extract(image, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path / "dest")) == sorted(["new\nline", "back\\slash", "ü"])
    assert (tmp_path / "dest" / "new\nline").read_text() == "1"


def test_vmwu_extract_never_replaces_or_deletes(tmp_path: Path, host: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("from the disk\n")
    (src / "sub" / "b.txt").write_text("b\n")
    image = make_fs(tmp_path / "out.img", src)
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "a.txt").write_text("mine\n")
    (dest / "sub" / "other.txt").write_text("also mine\n")
    result = run_vmwu("extract", image, dest)
    assert result.returncode == 241, result.stderr
    assert "already holds a.txt" in result.stderr and "nothing was extracted" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (dest / "a.txt").read_text() == "mine\n"
    assert not (dest / "sub" / "b.txt").exists()
    (dest / "a.txt").unlink()
    result = run_vmwu("extract", image, dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "a.txt").read_text() == "from the disk\n"
    assert (dest / "sub" / "other.txt").read_text() == "also mine\n"
    assert (dest / "sub" / "b.txt").read_text() == "b\n"


def test_vmwu_extract_lists_what_it_skipped(tmp_path: Path, host: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok\n")
    os.mkfifo(src / "pipe")
    image = make_fs(tmp_path / "out.img", src)
    result = run_vmwu("extract", image, tmp_path / "dest")
    assert result.returncode == 0, result.stderr
    assert "vmwu: not extracted: pipe: a FIFO is never copied" in result.stderr
    assert "Traceback" not in result.stderr
