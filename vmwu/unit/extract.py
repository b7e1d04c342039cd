"""``vmwu extract`` and ``vmwu inspect``: read units and output images without root."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput
from vmwu.hostfs import Report, SafeDir
from vmwu.images import ext4_read, inspect, qemu_img
from vmwu.sizes import format_size
from vmwu.unit.model import FileRole
from vmwu.unit.reader import OvaReader


def _is_ova(path: Path) -> bool:
    """A unit (a tar file), as opposed to a disk image: a disk's first block is often all
    zeros, which tarfile takes for an empty archive, so disk magics are looked at first."""
    import tarfile

    if path.suffix in (".ova", ".gz", ".tar"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(1082)
    if head[:4] in (b"QFI\xfb", b"KDMV") or head[1080:1082] == b"\x53\xef":
        return False  # qcow2, vmdk, ext2/3/4
    return tarfile.is_tarfile(path)


def extract(image: Path, dest: Path, *, component: str = "output-disk") -> Report:
    """Copy the files of an output image (raw or qcow2), or of a unit's disk, into
    ``dest`` through the safe door. Nothing in ``dest`` is ever replaced or deleted: if an
    entry of the disk clashes with one already there, nothing is written."""
    if not image.is_file():
        raise BadInput(f"{image} does not exist")
    with tempfile.TemporaryDirectory(prefix="vmwu-extract-") as tmp_str:
        tmp = Path(tmp_str)
        if _is_ova(image):
            try:
                role = FileRole(component)
            except ValueError:
                raise BadInput(
                    f"unknown component {component!r}: use output-disk or app-disk"
                ) from None
            with OvaReader(image) as reader:
                f = reader.descriptor.file(role)
                if f is None or not f.embedded:
                    raise BadInput(f"{image} has no embedded {component}")
                disk = tmp / f.href
                reader.extract(f.href, disk)
                fmt = inspect.check(  # before qemu-img converts it (docs/security-images.md)
                    inspect.gather(disk),
                    what=f"{f.role} {f.href} of {image}",
                    declared=f.format,
                    capacity=f.capacity,
                )
        else:
            # an image from outside (a guest wrote it): inspected, never probed by qemu-img
            disk = image
            fmt, _facts = inspect.inspect_file(image, what=f"the image {image}", declared=None)
        raw = disk
        if fmt != "raw":
            raw = tmp / "disk.raw"
            qemu_img.convert(disk, raw, src_format=fmt, dst_format="raw")
        tree = ext4_read.scan(raw)
        with SafeDir.open(dest, create=True) as out:
            clashes = tree.conflicts(out)
            if clashes:
                more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
                raise BadInput(
                    f"{dest} already holds {clashes[0]}{more}: nothing was extracted",
                    hint="extract into a new or empty folder, or move those entries away",
                )
            return tree.extract(out)


def check_members(reader: OvaReader) -> None:
    """Every embedded member hashed against the manifest, and every embedded disk image
    inspected as ``vmwu run`` inspects it (the same checks: the same answer)."""
    desc = reader.descriptor
    base_disk = desc.file(FileRole.BASE_DISK)
    with tempfile.TemporaryDirectory(prefix="vmwu-inspect-") as tmp:
        for f in desc.embedded_files():
            if not f.is_disk:
                reader.verify_member(f.href)
                continue
            disk = Path(tmp) / "disk"
            reader.extract(f.href, disk)
            backing = None
            if f.role == FileRole.BASE_LAYER and base_disk is not None:
                backing = (base_disk.sha256, base_disk.format)
            inspect.check(
                inspect.gather(disk),
                what=f"{f.role} {f.href} of {reader.path}",
                declared=f.format,
                capacity=f.capacity,
                backing=backing,
            )
            disk.unlink()


def inspect_unit(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The unit's OVF summary; with ``verify``, every member hashed against the manifest
    and every embedded disk image inspected."""
    with OvaReader(path) as reader:
        if verify:
            check_members(reader)
        d = reader.descriptor
        return {
            "name": d.name,
            "description": d.description,
            "memory_mib": d.memory_mib,
            "cpus": d.cpus,
            "app_launch": d.app_launch,
            "base": {
                "name": d.base.name,
                "sha256": d.base.sha256,
                "architecture": d.base.architecture,
                "guest_os": d.base.guest_os,
                "boot_method": d.base.boot_method.value,
                "embedded": all(
                    f.embedded
                    for f in d.files
                    if f.role in (FileRole.KERNEL, FileRole.INITRD, FileRole.BASE_DISK)
                ),
            },
            "files": [
                {
                    "role": f.role.value,
                    "href": f.href,
                    "format": f.format,
                    "size": f.size,
                    "capacity": f.capacity,
                    "embedded": f.embedded,
                    "sha256": f.sha256,
                }
                for f in d.files
            ],
            "unit_size": path.stat().st_size,
            "manifest": "verified" if verify else "not checked",
            "images": "inspected" if verify else "not checked",
            "vmwu_version": d.vmwu_version,
        }


def format_summary(s: dict[str, Any]) -> str:
    base = s["base"]
    lines = [
        f"unit        {s['name']}  ({format_size(s['unit_size'])})",
        f"launch      {s['app_launch']}",
        f"hardware    {s['cpus']} CPU, {s['memory_mib']} MiB",
        f"base        {base['name']} ({base['architecture']}, {base['guest_os']}, "
        f"{base['boot_method']}), {'embedded' if base['embedded'] else 'referenced'}, "
        f"sha256 {base['sha256'][:16]}…",
    ]
    for f in s["files"]:
        cap = f", capacity {format_size(f['capacity'])}" if f["capacity"] else ""
        where = "embedded" if f["embedded"] else "referenced"
        lines.append(
            f"  {f['role']:<12} {f['href']:<28} {f['format']:<8} "
            f"{format_size(f['size']):>10}{cap}  {where}"
        )
    lines.append(f"manifest    {s['manifest']}")
    if "images" in s:
        lines.append(f"images      {s['images']}")
    return "\n".join(lines)
