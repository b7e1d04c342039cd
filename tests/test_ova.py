"""The .ova format: OVF descriptor, manifest, deterministic writing and hostile reading."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.units import APP, OUT, craft, edit, good_entries, make_desc, reg, sha, special
from vmwu.digest import file_sha256
from vmwu.errors import HostDiskFull, UnitError
from vmwu.guest.protocol import AGENT_VERSION
from vmwu.unit.archive import write_ova
from vmwu.unit.descriptor import MAX_DESCRIPTOR_BYTES
from vmwu.unit.manifest import parse_manifest, render_manifest
from vmwu.unit.model import FileRole, GuestLayout, UnitFile
from vmwu.unit.ovf_parse import parse_ovf
from vmwu.unit.ovf_render import render_ovf
from vmwu.unit.reader import OvaReader

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"


def sources(tmp_path: Path, blobs: dict[str, bytes] | None = None) -> dict[str, Path]:
    blobs = blobs if blobs is not None else {"u-app.qcow2": APP, "u-output.qcow2": OUT}
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    paths = {}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
        paths[name] = src / name
    return paths


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    path = tmp_path / "u.ova"
    write_ova(path, make_desc(), sources(tmp_path))
    return path


# -- OVF descriptor ----------------------------------------------------------------------


def test_round_trip() -> None:
    desc = make_desc()
    assert parse_ovf(render_ovf(desc), "u.ovf") == desc


def test_round_trip_defaults_and_versions() -> None:
    for version in ("1.0", "1.1", "2.0"):
        desc = make_desc(description="", timeout=None, vmwu_version="", ovf_version=version)
        data = render_ovf(desc)
        assert parse_ovf(data, "u.ovf") == desc
    assert b'xmlns="http://schemas.dmtf.org/ovf/envelope/2"' in data


def test_round_trip_awkward_text() -> None:
    desc = make_desc(
        description="  two\nlines\r\nwith <tags> & \"quotes\" 'and' ünïcødé\t ",
        app_launch='sh -c "a && b > /output/x" \n',
        layout=GuestLayout(app_dir="/srv/app dir", script_name="run me.sh"),
        base=dataclasses.replace(make_desc().base, cmdline="", agent_version=None),
        timeout=0.1,
    )
    assert parse_ovf(render_ovf(desc), "u.ovf") == desc


def test_agent_version_is_the_same_text_on_disk() -> None:
    """vmwu:AgentVersion keeps its text ("1", "none"), so units packed before it was typed
    still read; an empty or absent element is this vmwu's agent, as pack always read it."""
    with_agent = render_ovf(make_desc())
    assert b"<vmwu:AgentVersion>1</vmwu:AgentVersion>" in with_agent
    none = make_desc(base=dataclasses.replace(make_desc().base, agent_version=None))
    assert b"<vmwu:AgentVersion>none</vmwu:AgentVersion>" in render_ovf(none)
    assert parse_ovf(render_ovf(none), "u.ovf").base.agent_version is None
    for old in ("<vmwu:AgentVersion></vmwu:AgentVersion>", ""):
        data = edit(with_agent, "<vmwu:AgentVersion>1</vmwu:AgentVersion>", old)
        assert parse_ovf(data, "u.ovf").base.agent_version == AGENT_VERSION


@pytest.mark.parametrize("text", ["garbage", "None", "1.0", "-1", "99999999"])
def test_agent_version_garbage_is_one_line(text: str) -> None:
    data = edit(render_ovf(make_desc()), ">1</vmwu:AgentVersion>", f">{text}</vmwu:AgentVersion>")
    with pytest.raises(UnitError) as err:
        parse_ovf(data, "u.ovf")
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"vmwu:Base: agent version {text!r} is neither a number nor 'none' in u.ovf")


def test_render_is_deterministic_utf8_with_trailing_newline() -> None:
    data = render_ovf(make_desc())
    assert data == render_ovf(make_desc())
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert data.endswith(b"</Envelope>\n")
    data.decode("utf-8")


def test_render_is_standard_ovf_in_schema_order() -> None:
    desc = make_desc(
        files=make_desc().files
        + (
            UnitFile("base-disk", "b.raw", FileRole.BASE_DISK, "5" * 64, 10, False, "raw", 1 << 30),
            UnitFile("x", "x.vmdk", FileRole.BASE_DISK, "6" * 64, 10, False, "vmdk", 1 << 30),
        )
    )
    root = ET.fromstring(render_ovf(desc))
    assert root.tag == f"{OVF}Envelope"
    assert root.get(f"{OVF}version") == "1.0"
    assert [c.tag for c in root] == [f"{OVF}References", f"{OVF}DiskSection", f"{OVF}VirtualSystem"]
    files = root.findall(f"{OVF}References/{OVF}File")
    assert [f.get(f"{OVF}href") for f in files] == [f.href for f in desc.files]
    assert files[2].get(f"{OVF}size") == str(len(APP))
    disks = root.findall(f"{OVF}DiskSection/{OVF}Disk")
    assert [d.get(f"{OVF}fileRef") for d in disks] == ["app-disk", "output-disk", "base-disk", "x"]
    assert disks[0].get(f"{OVF}capacity") == str(64 << 20)
    assert disks[0].get(f"{OVF}capacityAllocationUnits") == "byte"
    assert [d.get(f"{OVF}format") for d in disks] == [
        "http://www.qemu.org/qcow2",
        "http://www.qemu.org/qcow2",
        "http://www.qemu.org/raw",
        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    ]
    vs = root.find(f"{OVF}VirtualSystem")
    assert vs is not None
    tags = [c.tag for c in vs]
    assert tags[:4] == [
        f"{OVF}Info",
        f"{OVF}Name",
        f"{OVF}OperatingSystemSection",
        f"{OVF}VirtualHardwareSection",
    ]
    ws = vs.find("{http://vmwu.dev/ovf/1}WorkUnitSection")
    assert ws is not None and ws.get(f"{OVF}required") == "false"
    assert ws[0].tag == f"{OVF}Info"
    hw = vs.find(f"{OVF}VirtualHardwareSection")
    assert hw is not None
    assert [c.tag for c in hw][:3] == [f"{OVF}Info", f"{OVF}System", f"{OVF}Item"]
    items = {i.findtext(f"{RASD}ResourceType"): i for i in hw.findall(f"{OVF}Item")}
    assert items["3"].findtext(f"{RASD}VirtualQuantity") == "2"
    assert items["4"].findtext(f"{RASD}VirtualQuantity") == "768"
    assert items["4"].findtext(f"{RASD}AllocationUnits") == "byte * 2^20"
    hosts = [i.findtext(f"{RASD}HostResource") for i in hw.findall(f"{OVF}Item")]
    assert [h for h in hosts if h] == [f"ovf:/disk/{d.get(f'{OVF}diskId')}" for d in disks]
    # rasd elements must be in the (alphabetical) order of the CIM schema
    for item in hw.findall(f"{OVF}Item"):
        names = [c.tag for c in item]
        assert names == sorted(names)


@pytest.mark.parametrize(
    "changes",
    [
        {"ovf_version": "3.0"},
        {"name": "a/b"},
        {"cpus": 0},
        {"app_launch": "bell\x07"},
        {"base": dataclasses.replace(make_desc().base, sha256="XYZ")},
        {"files": (dataclasses.replace(make_desc().files[2], capacity=None),)},
        {"files": (dataclasses.replace(make_desc().files[2], format="vdi"),)},
        {"files": (dataclasses.replace(make_desc().files[2], href="../x"),)},
        {"files": make_desc().files[2:3] * 2},
    ],
)
def test_render_refuses_inconsistent_descriptor(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_ovf(dataclasses.replace(make_desc(), **changes))  # type: ignore[arg-type]


def test_parse_refuses_unknown_ovf_version() -> None:
    data = edit(render_ovf(make_desc()), 'ovf:version="1.0"', 'ovf:version="3.0"')
    with pytest.raises(UnitError, match=r"unsupported OVF version 3.0 in u.ovf"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_unknown_envelope_namespace() -> None:
    data = edit(render_ovf(make_desc()), "ovf/envelope/1", "ovf/envelope/9")
    with pytest.raises(UnitError, match=r"unsupported OVF version .* in u.ovf"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_plain_ovf_without_vmwu_section() -> None:
    text = render_ovf(make_desc()).decode()
    start = text.index("<vmwu:WorkUnitSection")
    end = text.index("</vmwu:WorkUnitSection>") + len("</vmwu:WorkUnitSection>")
    with pytest.raises(UnitError, match="not a vmwu work unit"):
        parse_ovf((text[:start] + text[end:]).encode(), "u.ovf")


def test_parse_names_a_newer_vmwu_format() -> None:
    data = edit(render_ovf(make_desc()), "http://vmwu.dev/ovf/1", "http://vmwu.dev/ovf/2")
    with pytest.raises(UnitError, match="newer vmwu"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_disk_without_file() -> None:
    data = edit(render_ovf(make_desc()), 'ovf:fileRef="app-disk"', 'ovf:fileRef="nope"')
    with pytest.raises(UnitError, match="'nope', which References does not list"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_hardware_item_without_disk() -> None:
    data = edit(render_ovf(make_desc()), "ovf:/disk/app-disk", "ovf:/disk/gone")
    with pytest.raises(UnitError, match="DiskSection lacks"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_format_mismatch() -> None:
    data = edit(render_ovf(make_desc()), 'vmwu:format="qcow2"', 'vmwu:format="raw"')
    with pytest.raises(UnitError, match="qcow2 but its file says"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_unsafe_href() -> None:
    data = edit(render_ovf(make_desc()), 'ovf:href="u-app.qcow2"', 'ovf:href="../../etc/x"')
    with pytest.raises(UnitError, match="'..' path component"):
        parse_ovf(data, "u.ovf")


def test_parse_refuses_garbage() -> None:
    with pytest.raises(UnitError, match="not well-formed XML"):
        parse_ovf(b"<Envelope", "u.ovf")
    with pytest.raises(UnitError, match="not an OVF descriptor"):
        parse_ovf(b"<html/>", "u.ovf")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&lol9;</Envelope>
"""


@pytest.mark.timeout(10)
def test_parse_refuses_entity_bomb_and_external_entities() -> None:
    with pytest.raises(UnitError, match="DOCTYPE or ENTITY"):
        parse_ovf(BILLION_LAUGHS, "u.ovf")
    xxe = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope>&e;</Envelope>'
    with pytest.raises(UnitError, match="DOCTYPE or ENTITY"):
        parse_ovf(xxe, "u.ovf")
    # a DOCTYPE hidden by another encoding is still seen (expat decodes first)
    utf16 = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x><x/>'.encode("utf-16")
    with pytest.raises(UnitError, match="DOCTYPE or ENTITY"):
        parse_ovf(utf16, "u.ovf")


# -- manifest ----------------------------------------------------------------------------


def test_manifest_round_trip() -> None:
    entries = [("u.ovf", "a" * 64), ("u-app.qcow2", "b" * 64)]
    data = render_manifest(entries)
    assert data == f"SHA256(u.ovf)= {'a' * 64}\nSHA256(u-app.qcow2)= {'b' * 64}\n".encode()
    assert list(parse_manifest(data, "u.mf").items()) == entries


def test_manifest_is_strict() -> None:
    good = f"SHA256(u.ovf)= {'a' * 64}\n"
    assert parse_manifest((good.upper().replace("U.OVF", "u.ovf")).encode(), "m") == {
        "u.ovf": "a" * 64
    }
    with pytest.raises(UnitError, match=r"u.mf:2: expected"):
        parse_manifest((good + "garbage\n").encode(), "u.mf")
    with pytest.raises(UnitError, match="SHA256 manifests only"):
        parse_manifest(f"SHA1(u.ovf)= {'a' * 40}\n".encode(), "u.mf")
    with pytest.raises(UnitError, match="listed twice"):
        parse_manifest((good + good).encode(), "u.mf")
    with pytest.raises(UnitError, match="expected"):
        parse_manifest(f"SHA256(u.ovf)= {'a' * 63}\n".encode(), "u.mf")


# -- writing -----------------------------------------------------------------------------


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(APP)
    assert file_sha256(p) == (sha(APP), len(APP))


def test_write_layout(unit: Path) -> None:
    with tarfile.open(unit) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == ["u.ovf", "u.mf", "u-app.qcow2", "u-output.qcow2"]
        for info in infos:
            assert (info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime) == (
                0o644,
                0,
                0,
                "",
                "",
                0,
            )
            assert info.type == tarfile.REGTYPE
        ovf_data = tar.extractfile("u.ovf").read()  # type: ignore[union-attr]
        mf_data = tar.extractfile("u.mf").read()  # type: ignore[union-attr]
        assert tar.extractfile("u-app.qcow2").read() == APP  # type: ignore[union-attr]
    assert ovf_data == render_ovf(make_desc())
    assert parse_manifest(mf_data, "u.mf") == {
        "u.ovf": sha(ovf_data),
        "u-app.qcow2": sha(APP),
        "u-output.qcow2": sha(OUT),
    }
    assert [p.name for p in unit.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_write_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.ova", tmp_path / "b.ova", tmp_path / "c.ova"
    write_ova(a, make_desc(), sources(tmp_path))
    write_ova(b, make_desc(), sources(tmp_path))
    write_ova(c, make_desc(), sources(tmp_path), mtime=1_700_000_000)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_write_reports_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    write_ova(
        tmp_path / "u.ova",
        make_desc(),
        sources(tmp_path),
        progress=lambda d, t: calls.append((d, t)),
    )
    total = calls[0][1]
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert total > len(APP) + len(OUT)


def test_write_refuses_sources_not_matching_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "u.ova"
    srcs = sources(tmp_path)
    srcs["u-app.qcow2"].write_bytes(APP[:-1] + b"!")  # same size, other content
    with pytest.raises(ValueError, match="sha256"):
        write_ova(path, make_desc(), srcs)
    srcs["u-app.qcow2"].write_bytes(APP + b"!")
    with pytest.raises(ValueError, match="bytes, not"):
        write_ova(path, make_desc(), srcs)
    with pytest.raises(ValueError, match="missing"):
        write_ova(path, make_desc(), {"u-app.qcow2": srcs["u-app.qcow2"]})
    with pytest.raises(ValueError, match="unexpected"):
        write_ova(path, make_desc(), {**sources(tmp_path), "kernel": srcs["u-app.qcow2"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_write_disk_full_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "u.ova"
    path.write_bytes(b"previous unit")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(HostDiskFull, match="u.ova"):
        write_ova(path, make_desc(), sources(tmp_path))
    assert path.read_bytes() == b"previous unit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "u.ova"]


# -- reading -----------------------------------------------------------------------------


def test_reader_opens_verifies_and_extracts(unit: Path, tmp_path: Path) -> None:
    with OvaReader(unit) as reader:
        assert reader.descriptor == make_desc()
        assert reader.compression is None
        assert list(reader.members) == ["u.ovf", "u.mf", "u-app.qcow2", "u-output.qcow2"]
        assert reader.members["u-app.qcow2"] == len(APP)
        assert reader.manifest["u-output.qcow2"] == sha(OUT)
        calls: list[tuple[int, int]] = []
        reader.verify(progress=lambda d, t: calls.append((d, t)))
        assert calls[-1] == (len(APP) + len(OUT), len(APP) + len(OUT))
        reader.extract("u-app.qcow2", tmp_path / "app.tmp")
        assert (tmp_path / "app.tmp").read_bytes() == APP
        with pytest.raises(ValueError):
            reader.extract("tiny-vmlinuz", tmp_path / "k.tmp")  # referenced, not embedded


def test_reader_opens_gzip_compressed_unit(unit: Path, tmp_path: Path) -> None:
    gz = tmp_path / "u.ova.gz"
    gz.write_bytes(gzip.compress(unit.read_bytes(), mtime=0))
    with OvaReader(gz) as reader:
        assert reader.compression == "gz"
        assert reader.descriptor == make_desc()
        reader.verify()
        reader.extract("u-output.qcow2", tmp_path / "out.tmp")
    assert (tmp_path / "out.tmp").read_bytes() == OUT


def test_reader_refuses_a_file_that_is_not_a_tar(tmp_path: Path) -> None:
    for name, data in [("text.ova", b"hello world\n" * 100), ("empty.ova", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnitError, match=rf"{name} is not a .ova \(tar\) file"):
            OvaReader(path)
    with pytest.raises(UnitError, match="cannot open"):
        OvaReader(tmp_path / "missing.ova")


def test_reader_refuses_truncated_unit(unit: Path) -> None:
    data = unit.read_bytes()
    unit.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnitError, match="truncated"):
        OvaReader(unit)


def test_reader_refuses_unit_cut_at_a_member_boundary(unit: Path) -> None:
    with tarfile.open(unit) as tar:
        last = tar.getmember("u-output.qcow2")
    end = last.offset_data + (last.size + 511) // 512 * 512
    unit.write_bytes(unit.read_bytes()[:end])  # no end-of-archive blocks
    with pytest.raises(UnitError, match="truncated"):
        OvaReader(unit)


def test_reader_detects_a_flipped_byte(unit: Path, tmp_path: Path) -> None:
    with tarfile.open(unit) as tar:
        offset = tar.getmember("u-app.qcow2").offset_data + 1000
    data = bytearray(unit.read_bytes())
    data[offset] ^= 0xFF
    unit.write_bytes(bytes(data))
    with OvaReader(unit) as reader:  # headers are fine: only hashing finds it
        expected = rf"manifest mismatch for u-app.qcow2 in {unit}: the unit is corrupt; re-copy it"
        with pytest.raises(UnitError, match=expected):
            reader.verify()
        dest = tmp_path / "app.tmp"
        with pytest.raises(UnitError, match="manifest mismatch"):
            reader.extract("u-app.qcow2", dest)
        assert not dest.exists()
        reader.extract("u-output.qcow2", tmp_path / "out.tmp")  # the other one is fine


def test_extract_disk_full_removes_dest(
    unit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "cache" / "app.tmp"
    dest.parent.mkdir()
    real_open = Path.open

    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(self: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        if self == dest:
            real_open(self, mode).close()  # the file exists, as a real partial write would
            return Full()
        return real_open(self, mode, *args, **kwargs)  # type: ignore[call-overload]

    with OvaReader(unit) as reader:
        monkeypatch.setattr(Path, "open", fake_open)
        with pytest.raises(HostDiskFull, match="cache"):
            reader.extract("u-app.qcow2", dest)
    assert not dest.exists()


# -- hand-crafted hostile tars -----------------------------------------------------------


def test_crafted_good_unit_opens(tmp_path: Path) -> None:
    with OvaReader(craft(tmp_path, good_entries())) as reader:
        reader.verify()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (reg("/etc/cron.d/evil", b"x"), "'/etc/cron.d/evil' has an absolute path"),
        (reg("../../.bashrc", b"x"), r"'../../.bashrc' has a '..' path component"),
        (reg("sub/dir.qcow2", b"x"), "'sub/dir.qcow2' is inside a directory"),
        (special("link", tarfile.SYMTYPE, "/etc/shadow"), "'link' is a symbolic link"),
        (special("hard", tarfile.LNKTYPE, "u.ovf"), "'hard' is a hard link"),
        (special("sda", tarfile.BLKTYPE), "'sda' is a block device"),
        (special("null", tarfile.CHRTYPE), "'null' is a character device"),
        (special("pipe", tarfile.FIFOTYPE), "'pipe' is a FIFO"),
        (special("dir", tarfile.DIRTYPE), "'dir' is a directory"),
        (reg("extra.sh", b"#!/bin/sh\n"), "'extra.sh' is not declared in the descriptor"),
        (reg("u-app.qcow2", APP), "'u-app.qcow2' appears twice"),
        (reg("tiny-vmlinuz", b"k" * 5000), "declared as referenced by sha256, not embedded"),
    ],
)
def test_reader_refuses_hostile_member(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    path = craft(tmp_path, good_entries() + [member])
    with pytest.raises(UnitError, match=message):
        OvaReader(path)


def test_reader_refuses_member_larger_than_declared(tmp_path: Path) -> None:
    big = APP + b"payload appended by an attacker"
    entries = good_entries(make_desc(), {"u-app.qcow2": big, "u-output.qcow2": OUT})
    with pytest.raises(UnitError, match="'u-app.qcow2' is larger than declared"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_member_smaller_than_declared(tmp_path: Path) -> None:
    entries = good_entries(make_desc(), {"u-app.qcow2": APP[:100], "u-output.qcow2": OUT})
    with pytest.raises(UnitError, match="truncated"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_missing_member(tmp_path: Path) -> None:
    entries = good_entries()
    del entries[3]
    with pytest.raises(UnitError, match="'u-output.qcow2' declared in the descriptor is missing"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_wrong_first_member(tmp_path: Path) -> None:
    entries = good_entries()
    entries.insert(0, entries.pop(2))
    with pytest.raises(UnitError, match="first member is 'u-app.qcow2'"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_missing_manifest(tmp_path: Path) -> None:
    entries = good_entries()
    del entries[1]
    with pytest.raises(UnitError, match="expected the manifest u.mf"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_manifest_not_listing_every_member(tmp_path: Path) -> None:
    entries = good_entries()
    info, data = entries[1]
    assert data is not None
    entries[1] = reg("u.mf", b"".join(data.splitlines(keepends=True)[:-1]))
    with pytest.raises(UnitError, match="manifest u.mf does not list 'u-output.qcow2'"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_tampered_descriptor(tmp_path: Path) -> None:
    entries = good_entries()
    info, data = entries[0]
    assert data is not None
    entries[0] = reg("u.ovf", edit(data, "<rasd:VirtualQuantity>768<", "<rasd:VirtualQuantity>9<"))
    with pytest.raises(UnitError, match="manifest mismatch for u.ovf"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_unknown_ovf_version(tmp_path: Path) -> None:
    entries = good_entries()
    data = entries[0][1]
    assert data is not None
    entries[0] = reg("u.ovf", edit(data, 'ovf:version="1.0"', 'ovf:version="0.9"'))
    with pytest.raises(UnitError, match=r"unsupported OVF version 0.9 in u.ovf in .*evil.ova"):
        OvaReader(craft(tmp_path, entries))


@pytest.mark.timeout(10)
def test_reader_refuses_entity_bomb(tmp_path: Path) -> None:
    entries = good_entries()
    entries[0] = reg("u.ovf", BILLION_LAUGHS)
    with pytest.raises(UnitError, match="DOCTYPE or ENTITY"):
        OvaReader(craft(tmp_path, entries))


def test_reader_refuses_oversized_descriptor_without_reading_it(tmp_path: Path) -> None:
    entries = good_entries()
    entries[0] = reg("u.ovf", b" " * (MAX_DESCRIPTOR_BYTES + 1))
    with pytest.raises(UnitError, match="too large"):
        OvaReader(craft(tmp_path, entries))


def test_reader_applies_max_member_size(unit: Path) -> None:
    with pytest.raises(UnitError, match="'u-app.qcow2' is .* over the limit of 8192"):
        OvaReader(unit, max_member_size=8192)
    OvaReader(unit, max_member_size=len(APP)).close()


def test_reader_refuses_trailing_garbage_header(tmp_path: Path) -> None:
    path = craft(tmp_path, good_entries())
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        last = tar.getmember("u-output.qcow2")
    end = last.offset_data + (last.size + 511) // 512 * 512
    path.write_bytes(data[:end] + b"\xff" * 512 + data[end + 512 :])
    with pytest.raises(UnitError, match="unreadable tar header"):
        OvaReader(path)


@pytest.mark.parametrize("encoding", ["U0F-8", "no-such-codec", "utf-16", "latin-1"])
def test_parse_reads_utf8_whatever_the_declaration_says(encoding: str) -> None:
    """An unknown encoding name in the XML declaration made the parser raise LookupError
    (exit 240; found by tests/test_ova_fuzz.py): the descriptor is read as UTF-8."""
    data = render_ovf(make_desc()).replace(b'encoding="UTF-8"', f'encoding="{encoding}"'.encode())
    assert parse_ovf(data, "u.ovf") == make_desc()
