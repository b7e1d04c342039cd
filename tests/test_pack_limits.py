"""Issue 11 points 4 and 7, the parts about packing and options: sizes are read exactly
and bounded, an output disk costs the host what it holds (a 10T one packs in seconds into
a few MiB), special files in the application folder, white-space mount points, an empty
package-name, duplicate ``--files`` destinations, NaN and infinities are each refused with
one line; a raw ext image can be extracted. No guest boots here."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import run_vmwu
from tests.fakebase import (
    BAD_INPUT,
    GOOD_SPEC,
    Home,
    Packed,
    add_fake_base,
    assert_only_status,
    no_leftovers,
    one_error_line,
    pack_on_fake_base,
    pack_spec,
    write_app,
)
from vmwu.errors import SpecError
from vmwu.images import ext4
from vmwu.pack.spec import load_spec
from vmwu.sizes import MAX_DISK_SIZE, MAX_SIZE, TiB, parse_size

MiB = 1024**2


@pytest.fixture
def based(tmp_path: Path) -> Home:
    home = Home(tmp_path / "vmwu-home", tmp_path)
    write_app(tmp_path)
    add_fake_base(home)
    return home


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    return pack_on_fake_base(tmp_path_factory.mktemp("packed"))


# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64M", 64 * MiB),
        ("1.5G", 3 * 512 * MiB),
        (" 2 gib ", 2 * 1024 * MiB),
        ("4096", 4096),
        ("0064M", 64 * MiB),
        ("10T", 10 * TiB),
        ("1024T", 1024 * TiB),  # a size; that it is too big for a disk is the spec's call
        (str(MAX_SIZE), MAX_SIZE),
    ],
)
def test_parse_size_is_exact(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9" * 400, "too large"),
        ("8388608T", "too large"),
        (str(MAX_SIZE + 1), "too large"),
        ("nan", "expected a size"),
        ("inf", "expected a size"),
        ("1e400", "expected a size"),
        ("-1M", "expected a size"),
        ("12 parsecs", "unknown size unit"),
    ],
)
def test_parse_size_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"1024T"', "app-output-size 1024.0 TiB is over the maximum disk size of 15.0 TiB"),
        (f'"{"9" * 400}"', "is too large"),
        ("1e400", "expected a size"),
        ("nan", "expected a size"),
        ("inf", "expected a size"),
    ],
)
def test_pack_refuses_huge_sizes_in_one_line(based: Home, value: str, message: str) -> None:
    result = pack_spec(based, GOOD_SPEC + f"app-output-size = {value}\n")
    one_error_line(result, BAD_INPUT, "u.toml:4:", message)
    no_leftovers(based.cwd)


def test_pack_refuses_a_huge_app_buffer(based: Home) -> None:
    result = pack_spec(based, GOOD_SPEC, "u.toml", "--app-buffer", "100T")
    one_error_line(result, BAD_INPUT, "command line (--app-buffer)", "over the maximum disk size")


def test_pack_refuses_a_big_ext2_disk(based: Home) -> None:
    text = GOOD_SPEC + 'app-output-size = "32G"\nbase-image-filesystem = "ext2"\n'
    line = one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml:4:", "at most 16.0 GiB")
    assert "use ext4" in line
    no_leftovers(based.cwd)


def test_a_10T_output_disk_costs_the_host_what_it_holds(based: Home) -> None:
    """Was ~16 GB of inode tables per TiB (lazy_itable_init=0): now the inode tables of
    unused groups are never written, and the unit stays small."""
    result = pack_spec(based, GOOD_SPEC + 'app-output-size = "10T"\n', "u.toml", "-o", "big.ova")
    assert result.returncode == 0, result.stderr
    unit = based.cwd / "big.ova"
    assert unit.stat().st_size < 32 * MiB
    shown = json.loads(based("inspect", unit, "--json").stdout)
    out = next(f for f in shown["files"] if f["role"] == "output-disk")
    assert out["capacity"] == 10 * TiB
    assert shown["images"] == "inspected"


def test_make_image_is_sparse(tmp_path: Path) -> None:
    image = tmp_path / "big.raw"
    ext4.make_image(image, 2 * TiB, label="VMWU-OUT")
    assert image.stat().st_size == 2 * TiB
    assert image.stat().st_blocks * 512 < 16 * MiB  # what the host holds


def test_make_image_refuses_above_the_maximum(tmp_path: Path) -> None:
    with pytest.raises(ext4.BadInput, match="at most 15.0 TiB"):
        ext4.make_image(tmp_path / "x.raw", MAX_DISK_SIZE + 1, label="VMWU-OUT")
    assert not (tmp_path / "x.raw").exists()


# -- the application folder -------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(path))
    sock.close()


def _device(kind: int) -> object:
    def make(path: Path) -> None:
        try:
            os.mknod(path, kind | 0o644, os.makedev(1, 5))  # what /dev/zero is
        except PermissionError:
            pytest.skip("creating device nodes needs root")

    return make


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_fifo, "a FIFO"),
        (_socket, "a socket"),
        (_device(stat.S_IFCHR), "a character device"),
        (_device(stat.S_IFBLK), "a block device"),
    ],
    ids=["fifo", "socket", "char-device", "block-device"],
)
def test_pack_refuses_special_files(based: Home, make: object, kind: str) -> None:
    (based.cwd / "app" / "sub").mkdir()
    special = based.cwd / "app" / "sub" / "special"
    make(special)  # type: ignore[operator]
    result = pack_spec(based, GOOD_SPEC)
    one_error_line(result, BAD_INPUT, f"{special} is {kind}", "only regular files")
    no_leftovers(based.cwd)


def test_pack_refuses_special_files_in_the_input_folder(based: Home) -> None:
    (based.cwd / "data").mkdir()
    os.mkfifo(based.cwd / "data" / "pipe")
    result = pack_spec(based, GOOD_SPEC + 'input-import-dir = "data"\n')
    one_error_line(result, BAD_INPUT, "data/pipe is a FIFO")


def test_pack_keeps_symlinks_as_links(based: Home) -> None:
    (based.cwd / "app" / "zero").symlink_to("/dev/zero")  # a link, not the device
    result = pack_spec(based, GOOD_SPEC)
    assert result.returncode == 0, result.stderr


# -- spec and run options ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["app-output-dir", "app-dir", "app-cdrom-dir"])
def test_pack_refuses_white_space_in_a_mount_point(based: Home, option: str) -> None:
    result = pack_spec(based, GOOD_SPEC + f'{option} = "/my data"\n')
    one_error_line(result, BAD_INPUT, "u.toml:4:", f"{option} '/my data' contains white space")


@pytest.mark.parametrize(
    ("text", "args", "where"),
    [
        (GOOD_SPEC.replace('"u"', '""'), (), "u.toml:1:"),
        (GOOD_SPEC.replace('"u"', '"   "'), (), "u.toml:1:"),
        (GOOD_SPEC, ("--package-name", ""), "command line (--package-name)"),
    ],
)
def test_pack_refuses_an_empty_package_name(
    based: Home, text: str, args: tuple[str, ...], where: str
) -> None:
    result = pack_spec(based, text, "u.toml", *args)
    one_error_line(result, BAD_INPUT, where, "package-name is empty")
    assert not (based.cwd / "unit.ova").exists()


def test_spec_timeout_nan_is_refused(tmp_path: Path) -> None:
    write_app(tmp_path)
    for value in ("nan", "inf", '"nan"', '"-inf"'):
        (tmp_path / "u.toml").write_text(GOOD_SPEC + f"timeout = {value}\n")
        with pytest.raises(SpecError, match="expected a number"):
            load_spec(tmp_path / "u.toml")


@pytest.mark.parametrize(
    ("files", "dests", "message"),
    [
        ("a.txt,b.txt", "in,in", "--files-destination: two files go to 'in'"),
        ("a.txt,b.txt", "x/in,/x/in", "--files-destination: two files go to 'x/in'"),
        ("a.txt,sub/a.txt", None, "--files: two files go to 'a.txt'"),
    ],
)
def test_run_refuses_duplicate_destinations(
    packed: Packed, tmp_path: Path, files: str, dests: str | None, message: str
) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.txt", "b.txt", "sub/a.txt"):
        (tmp_path / name).write_text(name)
    args = ["--files", files] + (["--files-destination", dests] if dests else [])
    home = packed.home.at(tmp_path)
    result = home("run", packed.unit, "--quiet", "--output-directory", tmp_path / "out", *args)
    one_error_line(result, BAD_INPUT, message)
    assert_only_status(tmp_path / "out", result)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("option", ["--timeout", "--boot-timeout"])
def test_run_refuses_nan_and_infinity(
    packed: Packed, tmp_path: Path, option: str, value: str
) -> None:
    result = packed.home.at(tmp_path)("run", packed.unit, "--quiet", option, value)
    one_error_line(result, BAD_INPUT, option, "expected a number")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("option", ["--checkpoint-interval", "--boot-timeout"])
def test_wrap_refuses_nan_and_infinity(tmp_path: Path, option: str, value: str) -> None:
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "job.xml").write_text(
        "<job_desc><task><application>true</application></task></job_desc>"
    )
    result = run_vmwu("wrap", "--slot-dir", slot, f"{option}={value}", cwd=slot, timeout=60)
    one_error_line(result, BAD_INPUT, f"{option} must be positive, got {value}")


# -- extract ----------------------------------------------------------------------------------


def test_extract_a_raw_ext_image(packed: Packed, tmp_path: Path) -> None:
    """A raw ext image starts with a zero block, which tarfile took for an empty tar."""
    src = tmp_path / "tree"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "result.txt").write_text("42\n")
    image = tmp_path / "out.img"
    ext4.make_image(image, ext4.image_size_for(src, MiB), label="VMWU-OUT", src=src)
    result = packed.home.at(tmp_path)("extract", image, tmp_path / "dest")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dest" / "dir" / "result.txt").read_text() == "42\n"
