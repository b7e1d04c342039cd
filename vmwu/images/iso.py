"""ISO9660 images for instance parameters and files (pycdlib; no mkisofs, no mount).

Names inside the guest come from Rock Ridge (any length, case, UTF-8); the plain ISO9660
names underneath are mangled 8.3 names that only non-Rock-Ridge readers see.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pycdlib

from vmwu.errors import BadInput, HostDiskFull
from vmwu.guest.protocol import Label

INSTANCE_LABEL = str(Label.INSTANCE)


@dataclass(frozen=True)
class IsoEntry:
    """A file for the image: ``dest`` is its path inside the ISO (``"a/b.txt"``)."""

    dest: str
    source: Path | None = None  # a host file ...
    data: bytes | None = None  # ... or literal bytes
    mode: int = 0o644


class _Names:
    """Unique ISO9660 (8.3, upper case) names per directory."""

    def __init__(self) -> None:
        self._used: dict[str, set[str]] = {}

    def mangle(self, parent: str, name: str, is_dir: bool) -> str:
        stem, _, ext = name.rpartition(".") if "." in name and not is_dir else (name, "", "")
        stem = re.sub(r"[^A-Z0-9_]", "_", stem.upper())[:8] or "_"
        ext = re.sub(r"[^A-Z0-9_]", "_", ext.upper())[:3]
        used = self._used.setdefault(parent, set())
        candidate = stem if is_dir else f"{stem}.{ext}"
        n = 0
        while candidate in used:
            n += 1
            tag = f"_{n}"
            base = stem[: 8 - len(tag)] + tag
            candidate = base if is_dir else f"{base}.{ext}"
        used.add(candidate)
        return candidate


def check_dest(dest: str) -> PurePosixPath:
    """Validate a destination path inside the ISO."""
    path = PurePosixPath(dest)
    if not dest or path.is_absolute() or any(p in ("", ".", "..") for p in path.parts):
        raise BadInput(f"bad destination {dest!r} on the instance ISO: use a relative path")
    for part in path.parts:
        if len(part.encode()) > 240:
            raise BadInput(f"file name too long for the instance ISO: {part[:40]}...")
    return path


def write_iso(out: Path, entries: Iterable[IsoEntry], *, label: str = INSTANCE_LABEL) -> None:
    """Write an ISO9660 + Rock Ridge image holding ``entries``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, rock_ridge="1.09", sys_ident="LINUX")
    names = _Names()
    dirs: dict[str, str] = {"": "/"}  # rr path -> iso path
    seen: set[str] = set()
    with ExitStack() as stack:
        for entry in entries:
            dest = check_dest(entry.dest)
            if str(dest) in seen or str(dest) in dirs:
                raise BadInput(f"two files for the same place on the instance ISO: {dest}")
            seen.add(str(dest))
            parent = ""
            for part in dest.parts[:-1]:
                rr_dir = f"{parent}/{part}" if parent else part
                if rr_dir in seen:
                    raise BadInput(f"{rr_dir} is both a file and a directory on the instance ISO")
                if rr_dir not in dirs:
                    iso_name = names.mangle(dirs[parent], part, is_dir=True)
                    iso_dir = dirs[parent].rstrip("/") + "/" + iso_name
                    iso.add_directory(iso_dir, rr_name=part, file_mode=0o40755)
                    dirs[rr_dir] = iso_dir
                parent = rr_dir
            fp: BinaryIO
            if entry.source is not None:
                fp = stack.enter_context(open(entry.source, "rb"))
                length = entry.source.stat().st_size
            else:
                data = entry.data or b""
                fp = io.BytesIO(data)
                length = len(data)
            iso_name = names.mangle(dirs[parent], dest.name, is_dir=False)
            iso_path = dirs[parent].rstrip("/") + "/" + iso_name + ";1"
            iso.add_fp(fp, length, iso_path, rr_name=dest.name, file_mode=0o100000 | entry.mode)
        try:
            with open(out, "wb") as fh:
                iso.write_fp(fh)
        except OSError as exc:
            out.unlink(missing_ok=True)
            if exc.errno == 28:
                raise HostDiskFull(str(out.parent)) from exc
            raise
        finally:
            iso.close()
