"""Issue 6 without booting: root file systems from tarballs, bootable disks, the NoCloud
seed, mmdebstrap's errors, `base import` checks, guest-packages specs and vmdk units."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pycdlib
import pytest

from tests.conftest import ROOT
from tests.fakebase import (
    BAD_INPUT,
    Home,
    add_fake_base,
    one_error_line,
    write_app,
)
from vmwu.bases import mmdebstrap
from vmwu.errors import BadInput, HostFailure
from vmwu.images import bootdisk, rootfs
from vmwu.pack.spec import load_spec
from vmwu.run import cloudinit
from vmwu.unit.model import BaseRef, BootMethod, FileRole
from vmwu.vmm import firmware
from vmwu.vmm.qemu import Drive, MachineConfig, drive_args, pflash_args

# -- a root file system from a tarball, without root ------------------------------------------


def _tar(path: Path) -> None:
    def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
        info.mtime = 946684800
        if info.isreg():
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)

    with tarfile.open(path, "w") as tar:
        for name in ("./", "./usr/", "./usr/bin/", "./dev/", "./var/", "./var/mail/"):
            add(_dir(name))
        f = tarfile.TarInfo("./usr/bin/chage")
        f.mode, f.uid, f.gid = 0o2755, 0, 42  # setgid, group shadow
        add(f, b"\x7fELF pretend")
        mail = tarfile.TarInfo("./var/mail/x")
        mail.mode, mail.uid, mail.gid = 0o660, 1000, 8
        add(mail, b"mail")
        link = tarfile.TarInfo("./usr/bin/chage2")
        link.type, link.linkname = tarfile.LNKTYPE, "./usr/bin/chage"
        add(link)
        sym = tarfile.TarInfo("./bin")
        sym.type, sym.linkname = tarfile.SYMTYPE, "usr/bin"
        add(sym)
        null = tarfile.TarInfo("./dev/null")
        null.type, null.mode, null.devmajor, null.devminor = tarfile.CHRTYPE, 0o666, 1, 3
        add(null)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _stat(image: str, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"stat {path}", image], capture_output=True, text=True, check=True
    ).stdout


def test_tarball_becomes_ext4_with_owners_modes_links_and_devices(tmp_path: Path) -> None:
    _tar(tmp_path / "root.tar")
    staged = rootfs.extract(tmp_path / "root.tar", tmp_path / "root")
    staged.add_file("/usr/local/bin/tool", b"#!/bin/sh\n", mode=0o755)
    assert any(f.path == "/dev/null" and f.rdev == (1, 3) for f in staged.fixups)
    image = tmp_path / "root.raw"
    rootfs.make_ext4(
        image, staged, size=16 * 1024**2, label="ROOT", uuid="1" * 8 + "-1111-4111-8111-" + "1" * 12
    )
    chage = _stat(str(image), "/usr/bin/chage")
    assert "Mode:  02755" in chage and "Group:    42" in chage and "Links: 2" in chage
    mail = _stat(str(image), "/var/mail/x")
    assert "User:  1000" in mail and "Group:     8" in mail
    null = _stat(str(image), "/dev/null")
    assert "Type: character special" in null and "Mode:  0666" in null
    assert "Device major/minor number: 01:03" in null
    assert "User:     0" in _stat(str(image), "/usr/local/bin/tool")


def test_unsafe_tarball_members_are_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BadInput, match="unsafe member"):
        rootfs.extract(tmp_path / "evil.tar", tmp_path / "root")


def test_bootable_disk_has_a_table_syslinux_and_a_root_at_its_offset(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    staged = rootfs.Staged(root)
    staged.add_file("/sbin/init", b"#!/bin/sh\n", mode=0o755)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel" * 100)
    disk = tmp_path / "disk.img"
    bootdisk.make_bios_disk(
        disk,
        boot_files={"vmlinuz": kernel},
        entry=bootdisk.BootEntry(initrd=None, append="root=/dev/vda2 console=ttyS0"),
        root=staged,
        root_size=8 * 1024**2,
    )
    data = disk.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[:440] == bootdisk.MBR_CODE.read_bytes()[:440]
    table = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True)
    parts = json.loads(table.stdout)["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == ["e", "83"] and parts[0].get("bootable")
    fat = f"{disk}@@{1024**2}"
    listing = subprocess.run(["mdir", "-a", "-b", "-i", fat, "::/"], capture_output=True, text=True)
    assert {"::/LDLINUX.SYS", "::/SYSLINUX.CFG", "::/VMLINUZ"} <= set(
        listing.stdout.upper().split()
    )
    cfg = subprocess.run(["mtype", "-i", fat, "::/syslinux.cfg"], capture_output=True, text=True)
    assert "TIMEOUT 0" in cfg.stdout and "APPEND root=/dev/vda2" in cfg.stdout
    offset = parts[1]["start"] * 512
    assert "User:     0" in _stat(f"{disk}?offset={offset}", "/sbin/init")


def test_uefi_disk_is_gpt_with_an_esp_and_is_told_apart_from_bios(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    loader = tmp_path / "BOOTX64.EFI"
    loader.write_bytes(b"MZ" + bytes(1000))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    disks = {}
    for kind in ("bios", "uefi"):
        disks[kind] = tmp_path / f"{kind}.img"
        bootdisk.make_bios_disk(
            disks[kind],
            boot_files={"vmlinuz": kernel},
            entry=bootdisk.BootEntry(initrd=None, append="root=/dev/vda2"),
            root=rootfs.Staged(root),
            root_size=8 * 1024**2,
            uefi_loader=loader if kind == "uefi" else None,
        )
        assert firmware.detect(disks[kind], "raw") == kind
    fat = f"{disks['uefi']}@@{1024**2}"
    entry = subprocess.run(
        ["mtype", "-i", fat, "::/loader/entries/vmwu.conf"], capture_output=True, text=True
    )
    assert "linux /vmlinuz" in entry.stdout and "options root=/dev/vda2" in entry.stdout
    efi = subprocess.run(["mtype", "-i", fat, "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True)
    assert efi.stdout.startswith(b"MZ")
    qcow = tmp_path / "uefi.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-O", "qcow2", str(disks["uefi"]), str(qcow)], check=True
    )
    assert firmware.detect(qcow, "qcow2") == "uefi"


def test_uefi_flash_is_ovmf_code_read_only_and_a_private_variable_store() -> None:
    cfg = MachineConfig(pflash=(Path("/ovmf/CODE.fd"), Path("/inst/efivars.fd")))
    args = pflash_args(cfg)
    assert args == [
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/ovmf/CODE.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/inst/efivars.fd",
    ]  # fmt: skip


# -- the NoCloud seed ------------------------------------------------------------------------


def test_seed_is_a_cidata_volume_with_a_fresh_instance_id(tmp_path: Path) -> None:
    ids = []
    for n in range(2):
        path = cloudinit.write_seed(tmp_path / f"seed{n}.iso")
        iso = pycdlib.PyCdlib()
        iso.open(str(path))
        try:
            assert iso.pvd.volume_identifier.decode().strip() == "CIDATA"
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/meta-data")
            ids.append(out.getvalue().decode().split()[1])
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/user-data")
            assert out.getvalue().startswith(b"#cloud-config\n")
            assert b"vmwu/boot.sh" in out.getvalue()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/vmwu/vmwu-agent")
            assert out.getvalue().startswith(b"#!/bin/sh")
        finally:
            iso.close()
    assert ids[0] != ids[1] and all(i.startswith("vmwu-") for i in ids)


def test_only_bases_without_the_agent_get_a_seed() -> None:
    base = BaseRef("b", "0" * 64, "x86_64", "linux", BootMethod.DISK, agent_version="none")
    assert cloudinit.needs_seed(base)
    assert not cloudinit.needs_seed(
        BaseRef("t", "0" * 64, "x86_64", "linux", BootMethod.DISK, agent_version="1")
    )


def test_a_disk_base_boots_first_by_bootindex() -> None:
    args = drive_args((Drive("base", Path("/b.qcow2"), "qcow2", serial="VMWU-BASE", bootindex=0),))
    assert "virtio-blk-pci,drive=base,serial=VMWU-BASE,bootindex=0" in args


# -- mmdebstrap's errors, one line each ------------------------------------------------------

BAD_RELEASE = """I: running apt-get update...
Err:1 http://deb.debian.org/debian nosuchrelease Release
  404  Not Found [IP: 203.0.113.80 80]
E: The repository 'http://deb.debian.org/debian nosuchrelease Release' does not have a Release file.
E: apt-get update --error-on=any -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed
E: mmdebstrap failed to run
"""
BAD_PACKAGE = """Building dependency tree...
E: Unable to locate package nosuchpkg-xyz
E: setup failed: E: apt-get -o Dir::Bin::dpkg=env install nosuchpkg-xyz failed
E: mmdebstrap failed to run
"""


def test_mmdebstrap_failures_become_bad_input_naming_the_culprit() -> None:
    spec = mmdebstrap.Bootstrap(release="nosuchrelease")
    err = mmdebstrap.explain_failure(BAD_RELEASE, spec)
    assert isinstance(err, BadInput) and "unknown Debian release 'nosuchrelease'" in str(err)
    err = mmdebstrap.explain_failure(BAD_PACKAGE, mmdebstrap.Bootstrap(release="bookworm"))
    assert isinstance(err, BadInput) and "has no package nosuchpkg-xyz" in str(err)
    err = mmdebstrap.explain_failure("E: Failed to fetch http://x/y  Could not resolve 'x'\n", spec)
    assert isinstance(err, HostFailure) and not isinstance(err, BadInput)


@pytest.mark.parametrize("release", ["Bookworm", "book worm", "", "../x"])
def test_names_that_cannot_be_a_release_are_refused_before_anything_runs(release: str) -> None:
    with pytest.raises(BadInput, match="bad Debian release"):
        mmdebstrap.check_names(release, [])


def test_mmdebstrap_command_line_is_rootless_and_tarball(tmp_path: Path) -> None:
    spec = mmdebstrap.Bootstrap(release="bookworm", packages=("systemd-sysv", "g++"))
    argv = mmdebstrap.bootstrap_argv(spec, "unshare", tmp_path / "r.tar")
    assert argv[:5] == ["mmdebstrap", "--mode=unshare", "--variant=minbase",
                        "--architectures=amd64", "--format=tar"]  # fmt: skip
    assert "--include=systemd-sysv,g++" in argv and argv[-2:] == [
        "bookworm",
        str(tmp_path / "r.tar"),
    ]


def test_a_foreign_bootstrap_only_extracts_and_keeps_the_debs_for_the_guest(
    tmp_path: Path,
) -> None:
    spec = mmdebstrap.Bootstrap(release="bookworm", arch="arm64", packages=("g++",), foreign=True)
    argv = mmdebstrap.bootstrap_argv(spec, "unshare", tmp_path / "r.tar")
    assert "--variant=extract" in argv and "--architectures=arm64" in argv
    # minbase's set spelled out, since extract installs nothing of its own
    assert {"--include=?essential", "--include=?priority(required)", "--include=g++"} <= set(argv)
    assert "--skip=check/qemu" in argv  # nothing of arm64 runs on the host
    hook = next(a for a in argv if a.startswith("--extract-hook="))
    assert mmdebstrap.SECOND_STAGE_DEBS in hook and "var/cache/apt/archives/*.deb" in hook


def test_a_bad_architecture_for_the_debian_base_is_one_line(tmp_path: Path) -> None:
    from vmwu.bases.catalog import Catalog
    from vmwu.bases.debian import build_debian

    with pytest.raises(BadInput, match="unknown architecture 'mips'"):
        build_debian(Catalog(tmp_path / "c.sqlite"), arch="mips")
    with pytest.raises(BadInput, match="cannot be built for 'i386'"):
        build_debian(Catalog(tmp_path / "c.sqlite"), arch="i386")


# -- the command line -----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Home:
    work = tmp_path / "work"
    work.mkdir()
    return Home(tmp_path / "home", work)


def test_build_debian_with_a_bad_release_name_fails_at_once(home: Home) -> None:
    result = home("base", "build", "debian", "--release", "Bad Name")
    one_error_line(result, BAD_INPUT, "bad Debian release 'Bad Name'")
    result = home("base", "build", "tiny", "--release", "bookworm")
    one_error_line(result, BAD_INPUT, "options of `base build debian`")


def test_import_refuses_what_is_not_a_bootable_disk(home: Home) -> None:
    (home.cwd / "notes.txt").write_text("hello\n")
    one_error_line(home("base", "import", "-q", "notes.txt"), BAD_INPUT, "is not a disk image")
    (home.cwd / "blank.img").write_bytes(bytes(2 * 1024**2))
    one_error_line(home("base", "import", "-q", "blank.img"), BAD_INPUT, "no boot signature")
    one_error_line(home("base", "import", "-q", "missing.img"), BAD_INPUT, "does not exist")


def _bootable_raw(path: Path) -> Path:
    data = bytearray(2 * 1024**2)
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))
    return path


def test_import_converts_a_vdi_and_checks_a_given_format(home: Home) -> None:
    raw = _bootable_raw(home.cwd / "disk.raw")
    subprocess.run(
        ["qemu-img", "convert", "-O", "vdi", str(raw), str(home.cwd / "disk.vdi")], check=True
    )
    result = home("base", "import", "disk.vdi", "--name", "v", "--os", "linux5.10")
    assert result.returncode == 0, result.stderr
    shown = json.loads(home("base", "show", "v", "--json").stdout)
    assert shown["format"] == "qcow2" and shown["files"][0]["path"].endswith("v/disk.qcow2")
    assert shown["agent_version"] == "none" and shown["input_device"] == "LABEL=VMWU-APP"
    one_error_line(
        home("base", "import", "-q", "disk.vdi", "--name", "w", "--format", "vmdk"),
        BAD_INPUT,
        "holds a vdi image but is declared vmdk",
    )
    result = home("base", "import", "disk.raw", "--name", "d", "--via", "daemon")
    shown = json.loads(home("base", "show", "d", "--json").stdout)
    assert (shown["input_device"], shown["output_device"], shown["cdrom_device"]) == (
        "/dev/vdb",
        "/dev/vdc",
        "/dev/vdd",
    )
    assert "###OUTPUT_MOUNT_DEVICE###" in Path(shown["script_template"]).read_text()


def test_guest_packages_parse_from_lists_and_commas(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    spec = tmp_path / "u.toml"
    spec.write_text(
        'app-import-dir = "app"\napp-launch = "true"\nguest-packages = ["g++", "make"]\n'
    )
    assert load_spec(spec).guest_packages == ("g++", "make")
    gvap = tmp_path / "u.gvap"
    gvap.write_text('app-import-dir="app"\napp-launch="true"\nguest-packages="g++, make"\n')
    assert load_spec(gvap).guest_packages == ("g++", "make")
    assert load_spec(gvap, []).disk_format == "qcow2"


def test_guest_packages_need_a_debian_base(home: Home) -> None:
    add_fake_base(home)
    write_app(home.cwd)
    (home.cwd / "u.toml").write_text(
        'app-import-dir = "app"\napp-launch = "/app/run.sh"\nguest-packages = ["g++"]\n'
    )
    one_error_line(home("pack", "-q", "u.toml"), BAD_INPUT, "guest-packages needs a base built by")
    (home.cwd / "v.toml").write_text(
        'app-import-dir = "app"\napp-launch = "/app/run.sh"\nguest-packages = ["G++!"]\n'
    )
    one_error_line(
        home("pack", "-q", "v.toml"), BAD_INPUT, "v.toml", "is not a Debian package name"
    )


# -- vmdk units --------------------------------------------------------------------------------


def test_pack_format_vmdk_writes_stream_optimized_disks_reproducibly(home: Home) -> None:
    add_fake_base(home)
    write_app(home.cwd)
    (home.cwd / "u.toml").write_text('app-import-dir = "app"\napp-launch = "/app/run.sh"\n')
    digests = []
    for n in range(2):
        result = home("pack", "u.toml", "--format", "vmdk", "-o", f"u{n}.ova")
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256((home.cwd / f"u{n}.ova").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    with tarfile.open(home.cwd / "u0.ova") as tar:
        names = tar.getnames()
        assert names[:2] == ["u.ovf", "u.mf"] and "u-app.vmdk" in names
        tar.extract("u-app.vmdk", home.cwd, filter="data")
        ovf = tar.extractfile("u.ovf")
        assert ovf is not None
        descriptor = ovf.read()
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(home.cwd / "u-app.vmdk")],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert (
        info["format"] == "vmdk"
        and info["format-specific"]["data"]["create-type"] == "streamOptimized"
    )
    assert b"vmdk.html#streamOptimized" in descriptor


VMWU_XSD = ROOT / "vmwu" / "schema" / "vmwu-ovf-1.xsd"
DMTF_XSD = ROOT / "tests" / "data" / "ovf-schema" / "v1" / "dsp8023_1.1.1.xsd"


def validate_ovf(descriptor: Path, dmtf_xsd: str) -> subprocess.CompletedProcess[str]:
    """xmllint against DSP8023 and vmwu's own extension schema, imported by one driver."""
    driver = descriptor.parent / "driver.xsd"
    driver.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n'
        '  <xs:import namespace="http://schemas.dmtf.org/ovf/envelope/1"'
        f' schemaLocation="{Path(dmtf_xsd).absolute().as_uri()}"/>\n'
        '  <xs:import namespace="http://vmwu.dev/ovf/1"'
        f' schemaLocation="{VMWU_XSD.as_uri()}"/>\n'
        "</xs:schema>\n"
    )
    return subprocess.run(
        ["xmllint", "--noout", "--nonet", "--schema", str(driver), str(descriptor)],
        capture_output=True,
        text=True,
    )


def test_vmwu_extension_schema_is_a_schema() -> None:
    """The schema itself parses as XML Schema (whether or not DSP8023 is here)."""
    result = subprocess.run(["xmllint", "--noout", str(VMWU_XSD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = VMWU_XSD.read_text()
    for role in FileRole:
        assert f'<xs:enumeration value="{role.value}"/>' in text  # every role is declared


@pytest.mark.parametrize("embed", [False, True])
def test_vmdk_unit_descriptor_validates_against_the_dmtf_schema(home: Home, embed: bool) -> None:
    # DSP8023 as DMTF publishes it (tests/data/ovf-schema), or the copy VMWU_OVF_XSD names
    xsd = os.environ.get("VMWU_OVF_XSD") or str(DMTF_XSD)
    add_fake_base(home)
    write_app(home.cwd)
    (home.cwd / "u.toml").write_text(
        'app-import-dir = "app"\napp-launch = "/app/run.sh"\ndescription = "a test unit"\n'
        "timeout = 60\n"
    )
    extra = ["--embed-base"] if embed else []
    result = home("pack", "u.toml", "--format", "vmdk", "-o", "u.ova", *extra)
    assert result.returncode == 0, result.stderr
    with tarfile.open(home.cwd / "u.ova") as tar:
        ovf = tar.extractfile("u.ovf")
        assert ovf is not None
        descriptor = ovf.read()
    (home.cwd / "unit.ovf").write_bytes(descriptor)
    result = validate_ovf(home.cwd / "unit.ovf", xsd)
    assert result.returncode == 0, result.stderr
    # and the schemas do reject what is not an OVF work unit
    bad = descriptor.replace(b"vmwu:AppLaunch>", b"vmwu:Launch>")
    assert bad != descriptor
    (home.cwd / "bad.ovf").write_bytes(bad)
    assert validate_ovf(home.cwd / "bad.ovf", xsd).returncode != 0


def test_unknown_disk_format_is_refused(home: Home) -> None:
    add_fake_base(home)
    write_app(home.cwd)
    (home.cwd / "u.toml").write_text('app-import-dir = "app"\napp-launch = "/app/run.sh"\n')
    one_error_line(
        home("pack", "-q", "u.toml", "--format", "vhdx"), BAD_INPUT, "disk-format 'vhdx'"
    )


def test_vmdk_cid_is_pinned_whatever_its_length(tmp_path: Path) -> None:
    """QEMU writes the random content ID with %x: 1 to 8 digits. The pinned file must not
    depend on either the value or the length."""
    from vmwu.images.vmdk import pin_cid

    raw = tmp_path / "r.raw"
    with open(raw, "wb") as fh:
        fh.truncate(4 << 20)
    outputs = []
    for n, cid in enumerate((b"1234567", b"89abcdef", b"5")):
        (tmp_path / str(n)).mkdir()
        vmdk = tmp_path / str(n) / "u-app.vmdk"  # the extent line names the file itself
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
             str(raw), str(vmdk)],
            check=True,
        )  # fmt: skip
        data = bytearray(vmdk.read_bytes())
        start = data.index(b"\nCID=") + 5
        end = data.index(b"\n", start)
        text_end = data.index(b"\0", start)
        # rewrite the CID with another length, keeping the descriptor area's size
        text = bytes(data[start - 5 : text_end]).replace(bytes(data[start:end]), cid, 1)
        area = text_end - (start - 5)
        data[start - 5 : text_end + 1] = text.ljust(area + 1, b"\0")
        vmdk.write_bytes(bytes(data))
        pin_cid(vmdk)
        outputs.append(vmdk.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    check = subprocess.run(
        ["qemu-img", "check", str(tmp_path / "0" / "u-app.vmdk")], capture_output=True
    )
    assert check.returncode == 0
