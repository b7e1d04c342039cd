"""What goes on an instance ISO besides the parameters: ``--files`` (with
``--files-destination``), the launcher's instance scripts, and the files of a
``--cdrom-image`` given by the user (the thesis appended to it; we copy its files onto
our own image so that the guest still finds it by the ``VMWU-INST`` label)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pycdlib

from vmwu.errors import BadInput
from vmwu.images.iso import IsoEntry


def file_destinations(files: Sequence[Path], destinations: Sequence[str]) -> list[str]:
    """Where each of ``--files`` goes on the ISO (its ``--files-destination``, else its
    name); BadInput when two go to the same place, which would silently drop one."""
    given: dict[str, Path] = {}
    for i, src in enumerate(files):
        dest = (destinations[i] if destinations else src.name).strip().lstrip("/")
        if dest in given:
            option = "--files-destination" if destinations else "--files"
            raise BadInput(
                f"{option}: two files go to {dest!r} on the instance ISO ({given[dest]} and {src})",
                hint="give each file its own destination name",
            )
        given[dest] = src
    return list(given)


def cdrom_entries(
    *,
    files: Sequence[Path],
    destinations: Sequence[str],
    instance_script: Path | None,
    instance_post_script: Path | None,
    cdrom_image: Path | None,
) -> list[IsoEntry]:
    entries: list[IsoEntry] = []
    if cdrom_image is not None:
        entries += iso_files(cdrom_image)
    for src, dest in zip(files, file_destinations(files, destinations), strict=True):
        mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
        entries.append(IsoEntry(dest, source=src, mode=mode))
    if instance_script is not None:
        entries.append(IsoEntry(".vmwu/instance-script", source=instance_script, mode=0o755))
    if instance_post_script is not None:
        entries.append(
            IsoEntry(".vmwu/instance-post-script", source=instance_post_script, mode=0o755)
        )
    # later entries (ours) replace same-named files of the user's image
    by_dest: dict[str, IsoEntry] = {}
    for entry in entries:
        by_dest[entry.dest] = entry
    return list(by_dest.values())


def iso_files(image: Path) -> list[IsoEntry]:
    """Every regular file of an ISO9660 image, by its Rock Ridge (or plain) name."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(image))
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise BadInput(f"--cdrom-image {image} is not an ISO9660 image: {exc}") from exc
    try:
        use_rr = iso.has_rock_ridge()
        facade = iso.get_rock_ridge_facade() if use_rr else iso.get_iso9660_facade()
        out: list[IsoEntry] = []
        for dirname, _dirs, names in facade.walk("/"):
            for name in names:
                path = f"{dirname.rstrip('/')}/{name}"
                buf = io.BytesIO()
                facade.get_file_from_iso_fp(buf, path)
                rel = path.lstrip("/")
                if not use_rr:
                    rel = rel.split(";")[0].lower().rstrip(".")
                out.append(IsoEntry(rel, data=buf.getvalue()))
        return out
    finally:
        iso.close()
