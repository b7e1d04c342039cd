"""Units made by hand in tests: a descriptor, the members of a valid .ova (for tests to
tamper with), a tar of any members at all, and a unit with one disk swapped for another
image, descriptor and manifest made to match (as a hostile author would)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

from vmwu.digest import file_sha256
from vmwu.unit.archive import write_ova
from vmwu.unit.manifest import render_manifest
from vmwu.unit.model import BaseRef, BootMethod, FileRole, UnitDescriptor, UnitFile
from vmwu.unit.ovf_render import render_ovf
from vmwu.unit.reader import OvaReader

APP = b"APP-DISK" + bytes(range(256)) * 40
OUT = b"OUTPUT" + b"\0" * 3000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_desc(blobs: dict[str, bytes] | None = None, **changes: object) -> UnitDescriptor:
    """A unit with a referenced kernel/initrd and embedded app and output disks."""
    blobs = blobs if blobs is not None else {"u-app.qcow2": APP, "u-output.qcow2": OUT}
    app, out = blobs["u-app.qcow2"], blobs["u-output.qcow2"]
    desc = UnitDescriptor(
        name="u",
        base=BaseRef(
            name="tiny-x86_64",
            sha256="b" * 64,
            architecture="x86_64",
            guest_os="linux6.1",
            boot_method=BootMethod.DIRECT_KERNEL,
            cmdline="console=ttyS0 quiet",
            agent_version=1,
        ),
        files=(
            UnitFile("kernel", "tiny-vmlinuz", FileRole.KERNEL, "1" * 64, 5000, False, "bzimage"),
            UnitFile("initrd", "tiny-initrd", FileRole.INITRD, "2" * 64, 3000, False, "cpio"),
            UnitFile(
                "app-disk",
                "u-app.qcow2",
                FileRole.APP_DISK,
                sha(app),
                len(app),
                True,
                "qcow2",
                capacity=64 << 20,
                label="VMWU-APP",
                filesystem="ext4",
            ),
            UnitFile(
                "output-disk",
                "u-output.qcow2",
                FileRole.OUTPUT_DISK,
                sha(out),
                len(out),
                True,
                "qcow2",
                capacity=256 << 20,
                label="VMWU-OUT",
                filesystem="ext4",
            ),
        ),
        memory_mib=768,
        cpus=2,
        description="renders a fractal",
        app_launch="./mandelbrot `cat /cdrom/param` > /output/image.pgm",
        timeout=3600.0,
        vmwu_version="0.1.0",
    )
    return dataclasses.replace(desc, **changes)  # type: ignore[arg-type]


def edit(data: bytes, old: str, new: str) -> bytes:
    text = data.decode()
    assert old in text
    return text.replace(old, new).encode()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def good_entries(
    desc: UnitDescriptor | None = None, blobs: dict[str, bytes] | None = None
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of a valid unit; tests then tamper with the list."""
    blobs = blobs if blobs is not None else {"u-app.qcow2": APP, "u-output.qcow2": OUT}
    desc = desc or make_desc(blobs)
    ovf_data = render_ovf(desc)
    manifest = render_manifest(
        [("u.ovf", sha(ovf_data))] + [(name, sha(data)) for name, data in blobs.items()]
    )
    return [reg("u.ovf", ovf_data), reg("u.mf", manifest)] + [
        reg(name, data) for name, data in blobs.items()
    ]


def craft(tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "evil.ova"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def rewrite_unit(unit: Path, dest: Path, role: FileRole, image: Path, fmt: str, cap: int) -> Path:
    """``unit`` with the member of ``role`` replaced by ``image`` (descriptor and manifest
    made to match, as a hostile author would)."""
    with OvaReader(unit) as reader:
        desc = reader.descriptor
        members: dict[str, Path] = {}
        files = []
        for f in desc.files:
            if f.embedded:
                members[f.href] = dest.parent / f"src-{f.href}"
                reader.extract(f.href, members[f.href])
            if f.role == role:
                sha, size = file_sha256(image)
                href = f.href.rsplit(".", 1)[0] + "." + fmt
                del members[f.href]
                members[href] = image
                f = dataclasses.replace(
                    f, href=href, sha256=sha, size=size, format=fmt, capacity=cap
                )
            files.append(f)
    write_ova(dest, dataclasses.replace(desc, files=tuple(files)), members)
    return dest
