"""Finding every file of a unit on this node.

Embedded files come out of the ``.ova``; referenced base files come from the node cache or,
the first time, from the catalog. Either way they are copied into the node cache once,
verified against their sha256, and used read-only from there. Each is held in use
(``NodeCache.hold``) from before it is looked up until the instance is released, so that
eviction never removes what an instance runs on.

Every disk image is inspected (vmwu/images/inspect.py) before anything opens it: the node
cache keeps the facts of each blob beside it (``derived/<sha256>.inspect.json``, written
before the blob appears), and each use checks them against what the unit declares. A
blob without facts (a cache filled by a vmwu that did not inspect) is inspected at its
first use. A unit gets the same answer on every node: its embedded members are hashed
against its manifest even when the cache already holds their content, once per unit file
(the cache remembers a verified unit by device, inode, size, mtime and ctime).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmwu.cache import Filler, NodeCache
from vmwu.errors import BadInput, BaseNotFound
from vmwu.images import inspect
from vmwu.unit.model import FileRole, UnitDescriptor, UnitFile
from vmwu.unit.reader import OvaReader
from vmwu.vmm.kernel import boot_kernel

if TYPE_CHECKING:
    from vmwu.bases.catalog import Catalog

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
    from vmwu.bases.catalog import Catalog

    return Catalog.open(path)


def _facts(cache: NodeCache, sha256: str, blob: Path) -> inspect.Facts:
    """The inspection facts of a cache blob: remembered, or gathered now (and remembered)."""
    record = cache.derived_path(f"{sha256}.inspect.json")
    facts = inspect.load(record)
    if facts is None or facts.size != blob.stat().st_size:
        facts = inspect.gather(blob)
        inspect.save(record, facts)
    return facts


def _inspecting(fill: Filler, cache: NodeCache, sha256: str) -> Filler:
    """``fill``, then the facts of what it wrote, recorded before the blob appears."""

    def inspected_fill(tmp: Path) -> None:
        fill(tmp)
        inspect.save(cache.derived_path(f"{sha256}.inspect.json"), inspect.gather(tmp))

    return inspected_fill


def _blob(cache: NodeCache, sha256: str, fill: Filler, *, disk: bool) -> Path:
    return cache.ensure_blob(sha256, _inspecting(fill, cache, sha256) if disk else fill)


def _base_file(
    f: UnitFile,
    desc: UnitDescriptor,
    reader: OvaReader,
    cache: NodeCache,
    catalog_path: Path | None,
    hashed: set[str],
) -> Path:
    cache.hold(cache.blob_path(f.sha256))  # in use from before it is looked up
    if f.embedded:

        def extract(tmp: Path) -> None:
            reader.extract(f.href, tmp)  # hashed against the manifest on the way
            hashed.add(f.href)

        return _blob(cache, f.sha256, extract, disk=f.is_disk)
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
    fill = _copy_verified(source, f.sha256, f"base file ({f.role})")
    return _blob(cache, f.sha256, fill, disk=f.is_disk)


def _override_base(
    name: str, catalog_path: Path | None, cache: NodeCache
) -> tuple[dict[FileRole, tuple[Path, str]], str]:
    base = _open_catalog(catalog_path).get(name)
    files: dict[FileRole, tuple[Path, str]] = {}
    for bf in base.files:
        role = FileRole(bf.role)
        if not bf.path.is_file():
            raise BaseNotFound(f"file {bf.path} of base '{base.name}' is missing")
        disk = role == FileRole.BASE_DISK
        cache.hold(cache.blob_path(bf.sha256))
        fill = _copy_verified(bf.path, bf.sha256, f"base file ({role})")
        path = _blob(cache, bf.sha256, fill, disk=disk)
        fmt = bf.format
        if disk:
            what = f"disk {bf.path} of base '{base.name}' (--base-image)"
            fmt = inspect.check(_facts(cache, bf.sha256, path), what=what, declared=bf.format)
        files[role] = (path, fmt)
    return files, base.cmdline


def _skipped(
    f: UnitFile, base_override: str | None, input_image: Path | None, output_image: Path | None
) -> bool:
    """Whether an option replaces the unit's own file ``f``."""
    if f.role == FileRole.APP_DISK:
        return input_image is not None
    if f.role == FileRole.OUTPUT_DISK:
        return output_image is not None
    return bool(base_override) and f.role in (FileRole.KERNEL, FileRole.INITRD, FileRole.BASE_DISK)


def _verify_unit(
    desc: UnitDescriptor,
    reader: OvaReader,
    cache: NodeCache,
    skipped: set[str],
    hashed: set[str],
) -> Path | None:
    """Unless this very file was verified before: hash the embedded members that will not
    be extracted now (their content is in the cache already, or an option replaces them)
    against the manifest, adding them to ``hashed``. Returns the record to write once
    every member is in ``hashed`` (None: the file was verified before)."""
    record = cache.derived_path("verified-" + reader.identity())
    cache.hold(record)
    if record.exists():
        return None
    for f in desc.embedded_files():
        if f.href in skipped or cache.blob(f.sha256) is not None:
            reader.verify_member(f.href)
            hashed.add(f.href)
    return record


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
    skipped = {f.href for f in desc.files if _skipped(f, base_override, input_image, output_image)}
    hashed: set[str] = set()
    verified_record = _verify_unit(desc, reader, cache, skipped, hashed)
    base_disk = desc.file(FileRole.BASE_DISK)
    found: dict[FileRole, tuple[Path, str]] = {}
    for f in desc.files:
        if f.role == FileRole.APP_DISK and input_image is not None:
            found[f.role] = (input_image, option_image(input_image, "--input-image"))
            continue
        if f.role == FileRole.OUTPUT_DISK and output_image is not None:
            found[f.role] = (output_image, option_image(output_image, "--output-image"))
            continue
        if f.href in skipped:
            continue
        path = _base_file(f, desc, reader, cache, catalog_path, hashed)
        fmt = f.format
        if f.is_disk:
            # the one backing file allowed: a guest-packages layer over its base disk's
            # blob, named by that blob's sha256 (vmwu/layer.py)
            backing = None
            if f.role == FileRole.BASE_LAYER and base_disk is not None:
                backing = (base_disk.sha256, base_disk.format)
            fmt = inspect.check(
                _facts(cache, f.sha256, path),
                what=f"{f.role} {f.href} of {reader.path}",
                declared=f.format,
                capacity=f.capacity,
                backing=backing,
            )
        found[f.role] = (path, fmt)
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
    if verified_record is not None:
        for f in desc.embedded_files():
            if f.href not in hashed:  # another vmwu put its content in the cache meanwhile
                reader.verify_member(f.href)
        verified_record.parent.mkdir(parents=True, exist_ok=True)
        verified_record.touch()
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
    resolved_base = None
    if FileRole.BASE_DISK in found:
        path, fmt = found[FileRole.BASE_DISK]
        resolved_base = DiskImage(path, fmt)
    if kernel is None and resolved_base is None:
        raise BadInput("the unit's base has neither a kernel nor a bootable disk")
    app = found[FileRole.APP_DISK]
    out = found[FileRole.OUTPUT_DISK]
    layer = None
    if FileRole.BASE_LAYER in found:
        if resolved_base is None:
            raise BadInput("the unit has a base-layer but its base has no disk")
        layer = DiskImage(*found[FileRole.BASE_LAYER])
    return ResolvedDisks(
        kernel, initrd, resolved_base, DiskImage(*app), DiskImage(*out), cmdline, base_layer=layer
    )


def option_image(path: Path, option: str) -> str:
    """The format of an image given by an option (inspected now: it is not in the cache)."""
    fmt, _facts = inspect.inspect_file(path, what=f"{option} {path}", declared=None)
    return fmt
