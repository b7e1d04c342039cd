"""Issue 3 section 8 at the command line: every bad input gives one line on stderr (no
traceback), a documented exit code (``vmwu.errors.ExitCode``), and nothing is lost.

No guest boots here: each case fails while packing, or in ``vmwu run`` before QEMU starts.
Units are packed against a fake base (dummy kernel and initrd registered with ``vmwu base
add``), so nothing is downloaded. Parsing details are unit-tested in test_spec.py,
test_ova.py and test_catalog.py; these tests drive the real CLI in a subprocess and check
what a user sees. Failures that need a guest are in tests/integration/test_failures.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from tests.fakebase import (
    BAD_INPUT,
    BASE_NOT_FOUND,
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
from tests.units import (
    APP,
    OUT,
    craft,
    edit,
    good_entries,
    make_desc,
    reg,
    special,
)
from vmwu import cli
from vmwu.cache import NodeCache
from vmwu.errors import ExitCode, HostDiskFull
from vmwu.run import resolve
from vmwu.unit.model import FileRole
from vmwu.unit.reader import OvaReader


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """An empty catalog and cache; the working directory holds ./app."""
    h = Home(tmp_path / "vmwu-home", tmp_path)
    write_app(tmp_path)
    return h


@pytest.fixture
def based(home: Home) -> Home:
    """``home`` with the fake base registered."""
    add_fake_base(home)
    return home


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """A real unit packed on the fake base, shared by the ``run`` tests that do not change
    the catalog (they run in their own working directory: ``packed.home.at(tmp_path)``)."""
    return pack_on_fake_base(tmp_path_factory.mktemp("packed"))


# -- vmwu pack ------------------------------------------------------------------------------


def test_pack_malformed_toml_names_file_and_line(based: Home) -> None:
    text = 'package-name = "u"\napp-launch = "unterminated\napp-import-dir = "app"\n'
    one_error_line(pack_spec(based, text, "bad.toml"), BAD_INPUT, "bad.toml:2:", "invalid TOML")
    no_leftovers(based.cwd)


def test_pack_malformed_gvap_line_names_file_and_line(based: Home) -> None:
    text = 'package-name="u"\napp-import-dir="app"\nthis is not an option\napp-launch="x"\n'
    one_error_line(
        pack_spec(based, text, "bad.gvap"), BAD_INPUT, "bad.gvap:3:", "expected option=value"
    )


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("u.toml", GOOD_SPEC + 'app-output-sise = "8M"\n', "u.toml:4:"),
        ("u.gvap", 'app-import="app"\napp-lauch="/app/run.sh"\n', "u.gvap:2:"),
    ],
)
def test_pack_misspelt_option_in_file_suggests(
    based: Home, name: str, text: str, where: str
) -> None:
    line = one_error_line(pack_spec(based, text, name), BAD_INPUT, where, "unknown option")
    assert "did you mean" in line


def test_pack_misspelt_option_on_command_line_suggests(based: Home) -> None:
    result = pack_spec(based, GOOD_SPEC, "u.toml", "--app-import-dri", "app")
    one_error_line(
        result, BAD_INPUT, "command line (--app-import-dri)", "did you mean 'app-import-dir'?"
    )


def test_pack_missing_app_import_dir(based: Home) -> None:
    text = 'package-name = "u"\napp-launch = "/app/run.sh"\n'
    one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml", "app-import-dir is required")


@pytest.mark.parametrize(
    ("target", "problem"), [("nowhere", "does not exist"), ("f", "is not a directory")]
)
def test_pack_app_import_dir_pointing_nowhere(based: Home, target: str, problem: str) -> None:
    (based.cwd / "f").write_text("a file, not a folder\n")
    text = f'package-name = "u"\napp-import-dir = "{target}"\napp-launch = "/app/run.sh"\n'
    one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml:2:", f"{target} {problem}")


def test_pack_empty_app_launch(based: Home) -> None:
    text = 'package-name = "u"\napp-import-dir = "app"\napp-launch = "  "\n'
    one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml:3:", "app-launch is empty")


def test_pack_unparsable_size(based: Home) -> None:
    text = GOOD_SPEC + 'app-output-size = "12 parsecs"\n'
    one_error_line(
        pack_spec(based, text), BAD_INPUT, "u.toml:4:", "app-output-size", "'12 parsecs'"
    )


def test_pack_no_base_in_empty_catalog(home: Home) -> None:
    one_error_line(
        pack_spec(home, GOOD_SPEC), BASE_NOT_FOUND, "catalog", "is empty", "vmwu base build tiny"
    )
    no_leftovers(home.cwd)


def test_pack_no_matching_base_lists_what_exists(based: Home) -> None:
    text = GOOD_SPEC + 'app-architecture = "aarch64"\n'
    one_error_line(pack_spec(based, text), BASE_NOT_FOUND, "aarch64", "it has: fake (x86_64")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("app-architecture", "sparc", "unknown architecture 'sparc'"),
     ("app-os", "win!!", "bad operating system name 'win!!'")],
)  # fmt: skip
def test_pack_unknown_architecture_or_os_names_the_line(
    based: Home, option: str, value: str, message: str
) -> None:
    text = GOOD_SPEC + f'{option} = "{value}"\n'
    one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml:4:", message)


def test_pack_base_image_not_in_catalog(based: Home) -> None:
    text = GOOD_SPEC + 'base-image = "gone"\n'
    one_error_line(
        pack_spec(based, text), BASE_NOT_FOUND, "u.toml:4:", "base-image", "no base 'gone'", "fake"
    )


def test_pack_edit_vm_is_not_supported(based: Home) -> None:
    text = GOOD_SPEC + "edit-vm = 1\n"
    one_error_line(pack_spec(based, text), BAD_INPUT, "u.toml:4:", "edit-vm is not supported")


def test_pack_script_template_missing(based: Home) -> None:
    result = pack_spec(based, GOOD_SPEC, "u.toml", "--script-template", "nope.sh")
    one_error_line(result, BAD_INPUT, "--script-template", "nope.sh does not exist")


def test_pack_unknown_template_token_names_file_and_line(based: Home) -> None:
    template = "#!/bin/sh\ncd ###APPLICATION_DIRECTORY###\n###LAUNCHING_COMAND###\n"
    (based.cwd / "tpl.sh").write_text(template)
    text = GOOD_SPEC + 'script-template = "tpl.sh"\n'
    one_error_line(
        pack_spec(based, text), BAD_INPUT, "tpl.sh:3:", "unknown template token", "LAUNCHING_COMAND"
    )


def test_pack_edit_script_without_a_terminal(based: Home) -> None:
    """stdin is not a terminal: refuse instead of starting an editor."""
    (based.cwd / "u.toml").write_text(GOOD_SPEC + "edit-script = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "vmwu", "pack", "u.toml", "-q"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **based.env, "VISUAL": "false", "EDITOR": "false"},
        cwd=based.cwd,
        timeout=60,
    )
    one_error_line(result, BAD_INPUT, "u.toml:4:", "edit-script needs a terminal")
    no_leftovers(based.cwd)


@pytest.mark.parametrize("output", ["missing-dir/u.ova", "/proc/u.ova", "app"])
def test_pack_output_that_cannot_be_written(based: Home, output: str) -> None:
    result = pack_spec(based, GOOD_SPEC, "u.toml", "-o", output)
    one_error_line(result, BAD_INPUT, "cannot write the unit")
    no_leftovers(based.cwd)
    assert sorted(p.name for p in (based.cwd / "app").iterdir()) == ["run.sh"]


# -- vmwu run: the unit ------------------------------------------------------------------------


def run_unit(home: Home, unit: Path | str, *args: str) -> Any:
    return home("run", unit, "--quiet", "--output-directory", home.cwd / "out", *args)


def test_run_unit_missing(packed: Packed, tmp_path: Path) -> None:
    result = run_unit(packed.home.at(tmp_path), "nope.ova")
    one_error_line(result, BAD_INPUT, "nope.ova does not exist")
    assert_only_status(tmp_path / "out", result)


def test_run_unit_that_is_not_a_tar(packed: Packed, tmp_path: Path) -> None:
    (tmp_path / "notes.ova").write_text("just some text\n" * 100)
    result = run_unit(packed.home.at(tmp_path), "notes.ova")
    one_error_line(result, BAD_INPUT, "notes.ova is not a .ova (tar) file")
    assert_only_status(tmp_path / "out", result)


def test_run_truncated_unit(packed: Packed, tmp_path: Path) -> None:
    data = packed.unit.read_bytes()
    (tmp_path / "half.ova").write_bytes(data[: len(data) // 2])
    result = run_unit(packed.home.at(tmp_path), "half.ova")
    one_error_line(result, BAD_INPUT, "half.ova is truncated or damaged")
    assert_only_status(tmp_path / "out", result)


def test_run_unit_whose_manifest_does_not_match(packed: Packed, tmp_path: Path) -> None:
    """The descriptor changed (same length, so the tar stays valid): memory 512 → 999."""
    data = packed.unit.read_bytes()
    tampered = data.replace(b"<rasd:VirtualQuantity>512<", b"<rasd:VirtualQuantity>999<", 1)
    assert tampered != data
    (tmp_path / "tampered.ova").write_bytes(tampered)
    result = run_unit(packed.home.at(tmp_path), "tampered.ova")
    one_error_line(result, BAD_INPUT, "manifest mismatch for u.ovf", "corrupt")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (reg("/etc/cron.d/evil", b"x"), "'/etc/cron.d/evil' has an absolute path"),
        (reg("../../.bashrc", b"x"), "'../../.bashrc' has a '..' path component"),
        (special("link", tarfile.SYMTYPE, "/etc/shadow"), "'link' is a symbolic link"),
        (special("hard", tarfile.LNKTYPE, "u.ovf"), "'hard' is a hard link"),
        (special("sda", tarfile.BLKTYPE), "'sda' is a block device"),
        (special("null", tarfile.CHRTYPE), "'null' is a character device"),
    ],
    ids=["absolute", "dotdot", "symlink", "hardlink", "block-device", "char-device"],
)
def test_run_refuses_hostile_member(
    packed: Packed, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    evil = craft(tmp_path, good_entries() + [member])
    result = run_unit(packed.home.at(tmp_path), evil)
    one_error_line(result, BAD_INPUT, message, "evil.ova")
    assert_only_status(tmp_path / "out", result)
    assert not Path("/etc/cron.d/evil").exists()


def test_run_refuses_member_larger_than_declared(packed: Packed, tmp_path: Path) -> None:
    big = APP + b"payload appended by an attacker"
    evil = craft(tmp_path, good_entries(make_desc(), {"u-app.qcow2": big, "u-output.qcow2": OUT}))
    result = run_unit(packed.home.at(tmp_path), evil)
    one_error_line(result, BAD_INPUT, "'u-app.qcow2' is larger than declared")


def test_run_refuses_unknown_ovf_version(packed: Packed, tmp_path: Path) -> None:
    entries = good_entries()
    data = entries[0][1]
    assert data is not None
    entries[0] = reg("u.ovf", edit(data, 'ovf:version="1.0"', 'ovf:version="7.3"'))
    result = run_unit(packed.home.at(tmp_path), craft(tmp_path, entries))
    one_error_line(result, BAD_INPUT, "unsupported OVF version 7.3")


# -- vmwu run: options ----------------------------------------------------------------------


def test_run_files_naming_a_missing_file(packed: Packed, tmp_path: Path) -> None:
    result = run_unit(packed.home.at(tmp_path), packed.unit, "--files", "nope.txt")
    one_error_line(result, BAD_INPUT, "--files", "nope.txt does not exist")
    assert_only_status(tmp_path / "out", result)


def test_run_files_destination_count_mismatch(packed: Packed, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x\n")
    result = run_unit(
        packed.home.at(tmp_path), packed.unit, "--files", "in.txt", "--files-destination", "a,b"
    )
    one_error_line(result, BAD_INPUT, "--files-destination names 2 destinations for 1 files")


def test_run_output_directory_is_a_file(packed: Packed, tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.write_text("yesterday's results\n")
    result = packed.home.at(tmp_path)("run", packed.unit, "--quiet", "--output-directory", precious)
    one_error_line(result, BAD_INPUT, f"{precious} exists and is not a directory")
    assert precious.read_text() == "yesterday's results\n"


def test_run_output_directory_not_writable(packed: Packed, tmp_path: Path) -> None:
    """Tests run as root, where permission bits do not apply: use /proc, which nobody can
    create directories in."""
    result = packed.home.at(tmp_path)(
        "run", packed.unit, "--quiet", "--output-directory", "/proc/x"
    )
    one_error_line(result, BAD_INPUT, "cannot create output directory /proc/x")


def test_run_output_directory_not_empty(packed: Packed, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("keep me\n")
    result = run_unit(packed.home.at(tmp_path), packed.unit)
    one_error_line(result, BAD_INPUT, f"output directory {out} is not empty")
    assert [p.name for p in out.iterdir()] == ["result.txt"]
    assert (out / "result.txt").read_text() == "keep me\n"


def test_run_unknown_accel(packed: Packed, tmp_path: Path) -> None:
    result = run_unit(packed.home.at(tmp_path), packed.unit, "--accel", "warp")
    one_error_line(result, BAD_INPUT, "unknown accelerator 'warp'", "auto, kvm, tcg")
    assert_only_status(tmp_path / "out", result)  # refused before anything was created


def test_run_misspelt_option_suggests(packed: Packed, tmp_path: Path) -> None:
    result = packed.home.at(tmp_path)("run", packed.unit, "--outptu-directory", "x")
    one_error_line(result, BAD_INPUT, "--outptu-directory", "did you mean 'output-directory'?")


def test_run_config_file_missing(packed: Packed, tmp_path: Path) -> None:
    result = run_unit(packed.home.at(tmp_path), packed.unit, "--config", "launch.toml")
    one_error_line(result, BAD_INPUT, "--config", "launch.toml does not exist")


def test_run_without_a_unit(packed: Packed, tmp_path: Path) -> None:
    one_error_line(packed.home.at(tmp_path)("run"), BAD_INPUT, "no work unit given")


def test_unknown_command(packed: Packed, tmp_path: Path) -> None:
    result = packed.home.at(tmp_path)("bogus-command")
    one_error_line(result, BAD_INPUT, "invalid choice: 'bogus-command'")


# -- vmwu run: the base on this node ---------------------------------------------------------


@pytest.fixture
def own_unit(tmp_path: Path) -> Packed:
    """A unit on a fake base in a home of its own (these tests change the base's files)."""
    home = Home(tmp_path / "vmwu-home", tmp_path)
    files = add_fake_base(home)
    write_app(tmp_path)
    (tmp_path / "u.toml").write_text(GOOD_SPEC)
    result = home("pack", "u.toml", "-q", "-o", tmp_path / "u.ova")
    assert result.returncode == 0, result.stderr
    return Packed(home, tmp_path / "u.ova", files)


def cache_is_clean(home: Home) -> list[str]:
    """Names of the blobs in the node cache; asserts that no temp file is left."""
    tmp = home.cache / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir())
    blobs = home.cache / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def test_run_base_file_changed_since_registered(own_unit: Packed) -> None:
    kernel = own_unit.base_files["kernel"]
    data = bytearray(kernel.read_bytes())
    registered = hashlib.sha256(data).hexdigest()
    data[100] ^= 0xFF  # same size, different bytes
    kernel.write_bytes(bytes(data))
    result = run_unit(own_unit.home, own_unit.unit)
    one_error_line(result, BASE_NOT_FOUND, str(kernel), "changed since it was registered")
    assert registered not in cache_is_clean(own_unit.home)


@pytest.mark.parametrize("override", [False, True], ids=["referenced", "base-image"])
def test_run_base_file_missing(own_unit: Packed, override: bool) -> None:
    own_unit.base_files["initrd"].unlink()
    args = ("--base-image", "fake") if override else ()
    result = run_unit(own_unit.home, own_unit.unit, *args)
    if override:
        one_error_line(result, BASE_NOT_FOUND, "initrd.img of base 'fake' is missing")
    else:
        one_error_line(result, BASE_NOT_FOUND, "base 'fake' is not on this node", "(initrd)")
    cache_is_clean(own_unit.home)


def test_run_base_image_override_not_in_catalog(packed: Packed, tmp_path: Path) -> None:
    result = run_unit(packed.home.at(tmp_path), packed.unit, "--base-image", "nosuch")
    one_error_line(result, BASE_NOT_FOUND, "no base 'nosuch'", "it has: fake")


# -- extract / inspect -------------------------------------------------------------------------


def test_extract_from_a_file_that_is_no_disk_image(packed: Packed, tmp_path: Path) -> None:
    (tmp_path / "notes.img").write_text("not a file system\n" * 1000)
    result = packed.home.at(tmp_path)("extract", "notes.img", "dest")
    one_error_line(result, BAD_INPUT, "notes.img holds no ext2/3/4 file system")


def test_inspect_truncated_unit(packed: Packed, tmp_path: Path) -> None:
    data = packed.unit.read_bytes()
    (tmp_path / "cut.ova").write_bytes(data[: len(data) * 2 // 3])
    result = packed.home.at(tmp_path)("inspect", "cut.ova")
    one_error_line(result, BAD_INPUT, "cut.ova is truncated or damaged")


# -- host disk full while filling the node cache --------------------------------------------


class FillsUp:
    """A file opened for writing that takes ``room`` bytes and then fails like a full disk,
    after really writing what fitted (so a partial file exists to be cleaned up)."""

    def __init__(self, fh: IO[bytes], room: int) -> None:
        self.fh = fh
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) <= self.room:
            self.room -= len(data)
            return self.fh.write(data)
        self.fh.write(data[: self.room])
        self.fh.flush()
        self.room = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill_up_under(directory: Path, opener: Callable[..., Any]) -> Callable[..., Any]:
    """``opener`` (``open`` or ``Path.open``), except that files opened for writing in
    ``directory`` fill up after 1 KiB."""

    def fake(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = opener(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).parent == directory:
            return FillsUp(fh, 1024)
        return fh

    return fake


def test_disk_full_while_unpacking_a_unit_member_leaves_no_cache_entry(
    own_unit: Packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = NodeCache(tmp_path / "cache")
    monkeypatch.setattr(Path, "open", fill_up_under(cache.root / "tmp", Path.open))
    with OvaReader(own_unit.unit) as reader:
        app = reader.descriptor.file(FileRole.APP_DISK)
        assert app is not None and app.size > 1024
        with pytest.raises(HostDiskFull, match="no space left"):
            resolve.resolve_files(reader.descriptor, reader, cache, own_unit.home.catalog)
    blobs = sorted(p.name for p in (cache.root / "blobs").iterdir())
    assert app.sha256 not in blobs
    assert len(blobs) == 2  # the base's kernel and initrd, copied before the app disk
    assert not list((cache.root / "tmp").iterdir())


def test_disk_full_while_copying_a_base_file_leaves_no_cache_entry(
    own_unit: Packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = NodeCache(tmp_path / "cache")
    monkeypatch.setattr(resolve, "open", fill_up_under(cache.root / "tmp", open), raising=False)
    with OvaReader(own_unit.unit) as reader:
        with pytest.raises(HostDiskFull, match="no space left"):
            resolve.resolve_files(reader.descriptor, reader, cache, own_unit.home.catalog)
    assert not list((cache.root / "blobs").iterdir())
    assert not list((cache.root / "tmp").iterdir())


def test_disk_full_while_filling_the_cache_is_one_line(
    own_unit: Packed,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through ``vmwu.cli.main`` in this process, so that the write can be made to fail."""
    for key, value in own_unit.home.env.items():
        monkeypatch.setenv(key, value)
    cache_tmp = own_unit.home.cache / "tmp"
    monkeypatch.setattr(Path, "open", fill_up_under(cache_tmp, Path.open))
    out = own_unit.home.cwd / "out"
    code = cli.main(["run", str(own_unit.unit), "--quiet", "--output-directory", str(out)])
    err = capsys.readouterr().err
    assert code == ExitCode.HOST_FAILURE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmwu: error: no space left"), err
    assert str(cache_tmp) in lines[0]
    blobs = cache_is_clean(own_unit.home)
    assert len(blobs) == 2  # kernel and initrd; no half-written app disk


def test_run_unit_that_is_a_directory(packed: Packed, tmp_path: Path) -> None:
    (tmp_path / "unit.ova").mkdir()
    result = run_unit(packed.home.at(tmp_path), "unit.ova")
    one_error_line(result, BAD_INPUT, "unit.ova is a directory")
