"""Finding every file of a unit on this node.

Embedded files come out of the ``.ova``; referenced base files come from the node cache or,
the first time, from the catalog. Either way they are copied into the node cache once,
verified against their sha256, and used read-only from there.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmwu.cache import Filler, NodeCache
from vmwu.errors import BadInput, BaseNotFound
from vmwu.images import qemu_img
from vmwu.ova import OvaReader
from vmwu.unit import FileRole, UnitDescriptor, UnitFile
from vmwu.vmm.kernel import boot_kernel

if TYPE_CHECKING:
    from vmwu.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskImage:
    path: Path
    format: str


@dataclass(frozen=True)
class ResolvedDisks:
    kernel: Path | None
    initrd: Path | None
    base_disk: DiskImage | None
    app_disk: DiskImage
    output_disk: DiskImage
    cmdline: str | None = None  # the kernel command line of a --base-image override
    # guest-packages layer (issue 6): a qcow2 whose backing file is base_disk's blob
    base_layer: DiskImage | None = None


def _copy_verified(src: Path, sha256: str, what: str) -> Filler:
    def fill(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
        if digest.hexdigest() != sha256:
            raise BaseNotFound(
                f"{what} {src} has changed since it was registered (sha256 mismatch)",
                hint="rebuild or re-add the base (`vmwu base build`, `vmwu base add --replace`)",
            )

    return fill


def _open_catalog(path: Path | None) -> Catalog:
    # imported here: a warm node resolves everything from its cache without SQLite
    from vmwu.catalog import Catalog

    return Catalog.open(path)


def _base_file(
    f: UnitFile,
    desc: UnitDescriptor,
    reader: OvaReader,
    cache: NodeCache,
    catalog_path: Path | None,
) -> Path:
    if f.embedded:
        return cache.ensure_blob(f.sha256, lambda tmp: reader.extract(f.href, tmp))
    cached = cache.blob(f.sha256)
    if cached is not None:
        return cached
    catalog = _open_catalog(catalog_path)
    source = catalog.find_file(f.sha256)
    if source is None:
        raise BaseNotFound(
            f"base '{desc.base.name}' is not on this node: no file with sha256 "
            f"{f.sha256[:16]}… ({f.role}) in the cache or in the catalog {catalog.path}",
            hint="build or add the base here (`vmwu base build tiny`, `vmwu base add`), "
            "pass --base-image NAME, or pack with --embed-base",
        )
    return cache.ensure_blob(f.sha256, _copy_verified(source, f.sha256, f"base file ({f.role})"))


def _override_base(
    name: str, catalog_path: Path | None, cache: NodeCache
) -> tuple[dict[FileRole, tuple[Path, str]], str]:
    base = _open_catalog(catalog_path).get(name)
    files: dict[FileRole, tuple[Path, str]] = {}
    for bf in base.files:
        role = FileRole(bf.role)
        if not bf.path.is_file():
            raise BaseNotFound(f"file {bf.path} of base '{base.name}' is missing")
        path = cache.ensure_blob(
            bf.sha256, _copy_verified(bf.path, bf.sha256, f"base file ({role})")
        )
        files[role] = (path, bf.format)
    return files, base.cmdline


def resolve_files(
    desc: UnitDescriptor,
    reader: OvaReader,
    cache: NodeCache,
    catalog_path: Path | None,
    *,
    base_override: str | None = None,
    input_image: Path | None = None,
    output_image: Path | None = None,
) -> ResolvedDisks:
    found: dict[FileRole, tuple[Path, str]] = {}
    for f in desc.files:
        if f.role == FileRole.APP_DISK and input_image is not None:
            found[f.role] = (input_image, _detect_format(input_image))
            continue
        if f.role == FileRole.OUTPUT_DISK and output_image is not None:
            found[f.role] = (output_image, _detect_format(output_image))
            continue
        if f.role in (FileRole.KERNEL, FileRole.INITRD, FileRole.BASE_DISK) and base_override:
            continue
        found[f.role] = (_base_file(f, desc, reader, cache, catalog_path), f.format)
    cmdline = None
    if base_override and FileRole.BASE_LAYER in found:
        # The layer is a diff against the unit's own base disk: another base under it
        # would be read as garbage.
        raise BadInput(
            f"the unit installs guest-packages over base '{desc.base.name}': "
            "--base-image cannot swap that base",
            hint="re-pack the unit on the other base instead",
        )
    if base_override:
        override, cmdline = _override_base(base_override, catalog_path, cache)
        found.update(override)
    for role in (FileRole.APP_DISK, FileRole.OUTPUT_DISK):
        if role not in found:
            raise BadInput(f"the unit has no {role}")
    kernel = initrd = None
    if FileRole.KERNEL in found:
        kfile = desc.file(FileRole.KERNEL)
        kpath = found[FileRole.KERNEL][0]
        sha = kfile.sha256 if kfile is not None and not base_override else kpath.name
        kernel = (
            boot_kernel(kpath, sha, cache)
            if desc.base.architecture in ("x86_64", "i386")
            else kpath
        )
    if FileRole.INITRD in found:
        initrd = found[FileRole.INITRD][0]
    base_disk = None
    if FileRole.BASE_DISK in found:
        path, fmt = found[FileRole.BASE_DISK]
        base_disk = DiskImage(path, fmt)
    if kernel is None and base_disk is None:
        raise BadInput("the unit's base has neither a kernel nor a bootable disk")
    app = found[FileRole.APP_DISK]
    out = found[FileRole.OUTPUT_DISK]
    layer = None
    if FileRole.BASE_LAYER in found:
        if base_disk is None:
            raise BadInput("the unit has a base-layer but its base has no disk")
        layer = DiskImage(*found[FileRole.BASE_LAYER])
    return ResolvedDisks(
        kernel, initrd, base_disk, DiskImage(*app), DiskImage(*out), cmdline, base_layer=layer
    )


def _detect_format(path: Path) -> str:
    fmt = qemu_img.info(path).get("format")
    if not isinstance(fmt, str):
        raise BadInput(f"{path} is not a disk image qemu-img understands")
    return fmt
