"""``vmwu run --overwrite`` (thesis Appendix D): write the instance's application and
output disks back into the unit, so that the next launch starts from them."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from vmwu.cache import NodeCache
from vmwu.digest import file_sha256
from vmwu.errors import UnitError
from vmwu.images import qemu_img
from vmwu.unit.archive import write_ova
from vmwu.unit.model import FileRole, UnitDescriptor


def overwrite_unit(
    unit: Path, desc: UnitDescriptor, inst: Path, cache: NodeCache, *, mtime: int
) -> None:
    with tempfile.TemporaryDirectory(prefix=".vmwu-overwrite-", dir=unit.parent) as tmp_str:
        tmp = Path(tmp_str)
        members: dict[str, Path] = {}
        files = []
        for f in desc.files:
            if f.role == FileRole.APP_DISK:
                src, src_fmt = inst / "app.qcow2", "qcow2"
            elif f.role == FileRole.OUTPUT_DISK:
                src, src_fmt = inst / "output.raw", "raw"
            else:
                if f.embedded:
                    blob = cache.blob(f.sha256)
                    if blob is None:
                        raise UnitError(
                            f"cannot rewrite {unit}: base file {f.href} is not in the cache"
                        )
                    members[f.href] = blob
                files.append(f)
                continue
            # flatten the overlay (or convert the raw disk) into a compressed qcow2
            dest = tmp / f.href
            qemu_img.convert(src, dest, src_format=src_fmt, dst_format="qcow2", compress=True)
            sha, size = file_sha256(dest)
            members[f.href] = dest
            files.append(dataclasses.replace(f, sha256=sha, size=size, format="qcow2"))
        write_ova(unit, dataclasses.replace(desc, files=tuple(files)), members, mtime=mtime)
