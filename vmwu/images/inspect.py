"""Disk images from outside, inspected before qemu-img or QEMU opens them.

A qcow2 image can name a *backing file* or an *external data file*, a vmdk can name
*extents*, by host path: QEMU opens them and the guest reads the host file's bytes. An
image whose format is probed instead of declared can be read as any of these. This is
the class of OpenStack's OSSA-2024-001 (CVE-2024-32498), and vmwu closes it the way
OpenStack does: every image from a unit or an option is read by oslo.utils' format
inspector (``oslo_utils.imageutils.format_inspector``, pure Python, it only reads the
file) before qemu-img or QEMU opens it, and QEMU is always told the format.

Two steps, kept apart so that a node cache can remember the first (docs/security-images.md):

- :func:`gather`: the *facts* of an image, from its own bytes: which formats its content
  matches, which safety checks of that format fail, its virtual size, and (qcow2) the
  backing file it names. Once oslo's checks pass, ``qemu-img info`` (told the format,
  under CPU and memory limits) confirms them: no backing file, no data file, one vmdk
  extent that is the file itself, the same virtual size.
- :func:`check`: the *policy* for one use of the image: the format must be the declared
  one (raw may not hold any structured format), no safety check may fail, except a
  backing file that is exactly the one vmwu allows (a unit's guest-packages layer over its
  own base disk's cache entry), and the virtual size must be sane (and the declared one).

``format_inspector`` is imported only when an image is gathered, so a ``vmwu run`` whose
images are all known to the node cache does not pay for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vmwu.errors import BadInput, ToolFailed
from vmwu.hostfs import write_atomic
from vmwu.sizes import MAX_DISK_SIZE, format_over, format_size

if TYPE_CHECKING:
    from oslo_utils.imageutils.format_inspector import FileInspector

log = logging.getLogger(__name__)

VERSION: Final = 1  # of the facts: a record of another version is gathered again
CHUNK: Final = 64 * 1024

UNIT_FORMATS: Final = ("qcow2", "raw", "vmdk")  # what a unit, --input-image, --output-image hold
IMPORT_FORMATS: Final = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc")  # `vmwu base import`

# What QEMU reads as raw: no format at all, an MBR/GPT partition table, an ISO 9660 image.
_RAW_LIKE: Final = frozenset({"raw", "gpt", "iso"})
# oslo's names that differ from QEMU's
_QEMU_NAMES: Final = {"vhd": "vpc"}
# formats whose qemu-img info confirms oslo's checks (and gives the virtual size)
_QEMU_CHECKED: Final = frozenset({"qcow2", "vmdk", "vdi", "vhdx", "vpc"})

_PHRASES: Final = {
    "backing_file": "it names a backing file",
    "data_file": "it names an external data file",
    "unknown_features": "it uses qcow2 features the inspector does not know",
    "descriptor": "its vmdk descriptor is not one embedded extent (it may name other files)",
    "footer": "its vmdk footer does not match its header",
    "null": "it is refused",
    "banned": "its format is never accepted",
    "formats": "its content matches several image formats",
    "parse": "it cannot be parsed",
    "vmdk_text": "it is a vmdk descriptor file, which names its data by file name",
    "vmdk_capacity": "its vmdk header has no capacity (QEMU would then open the extents "
    "its descriptor names)",
    "extents": "qemu-img sees extents that are other files",
    "qemu_backing": "qemu-img sees a backing file",
    "qemu_data_file": "qemu-img sees an external data file",
    "qemu_size": "qemu-img and the inspector disagree on its size",
    "qemu_info": "qemu-img cannot open it",
}


_PLAIN: Final = frozenset({"backing_file", "data_file", "unknown_features", "null", "banned"})


class UnsafeImage(BadInput):
    """An image vmwu refuses to hand to qemu-img or QEMU."""


@dataclass(frozen=True)
class Facts:
    """What an image is, read from its own bytes."""

    formats: tuple[str, ...]  # QEMU names of the formats its content matches; ("raw",): none
    size: int  # bytes of the file
    virtual_size: int  # its capacity (raw: the file's size)
    problems: tuple[tuple[str, str], ...] = ()  # (check, detail) of every failed check
    backing: tuple[str, str] | None = None  # qcow2: the backing file it names, its format
    version: int = VERSION

    @property
    def format(self) -> str:
        """The one format QEMU would read it as ("raw" for partition tables and ISOs)."""
        structured = [f for f in self.formats if f not in _RAW_LIKE]
        return structured[0] if len(structured) == 1 else "raw"

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "formats": list(self.formats),
                "size": self.size,
                "virtual_size": self.virtual_size,
                "problems": [list(p) for p in self.problems],
                "backing": list(self.backing) if self.backing else None,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Facts | None:
        """The facts in ``text``; None for a record of another version or an unreadable one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                return None
            backing = data["backing"]
            return cls(
                formats=tuple(str(f) for f in data["formats"]),
                size=int(data["size"]),
                virtual_size=int(data["virtual_size"]),
                problems=tuple((str(c), str(d)) for c, d in data["problems"]),
                backing=(str(backing[0]), str(backing[1])) if backing else None,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None


# ---------------------------------------------------------------------------------------
# gathering


class _Stream:
    """Every inspector of oslo.utils fed the same bytes (as its ``InspectWrapper`` does,
    but told apart at the end rather than asked for a single answer)."""

    def __init__(self) -> None:
        from oslo_utils.imageutils import format_inspector as fi

        # It logs each failed check as a warning; vmwu reports the refusal in one line.
        logging.getLogger(fi.__name__).setLevel(logging.CRITICAL)
        self._fi = fi
        self.inspectors: list[FileInspector] = [
            cls() for name, cls in fi.ALL_FORMATS.items() if name != "raw"
        ]
        self.broken: set[str] = set()  # inspectors whose parser gave up: not that format
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        for insp in self.inspectors:
            if insp.NAME in self.broken:
                continue
            try:
                insp.eat_chunk(chunk)
            except Exception:  # a parser meeting another format's bytes: any error
                self.broken.add(insp.NAME)

    @property
    def live(self) -> list[FileInspector]:
        return [i for i in self.inspectors if i.NAME not in self.broken]

    def complete(self) -> bool:
        try:
            return all(i.complete for i in self.live)
        except Exception:  # pragma: no cover - complete only looks at captured regions
            return False

    def facts(self) -> tuple[Facts, FileInspector | None]:
        """Facts from what was fed; the inspector of the one structured format, if any."""
        matches: list[FileInspector] = []
        for insp in self.live:
            try:
                insp.finish()
                if insp.format_match:
                    matches.append(insp)
            except Exception:
                continue
        names = tuple(sorted(_QEMU_NAMES.get(i.NAME, i.NAME) for i in matches)) or ("raw",)
        structured = [i for i in matches if i.NAME not in _RAW_LIKE]
        problems: list[tuple[str, str]] = []
        one = structured[0] if len(structured) == 1 else None
        if len(structured) > 1:
            problems.append(("formats", ", ".join(names)))
        virtual = self.size
        if one is not None:
            problems += self._safety(one)
            try:
                virtual = int(one.virtual_size)
            except Exception:
                virtual = 0
        return Facts(names, self.size, virtual, tuple(problems)), one

    def _safety(self, insp: FileInspector) -> list[tuple[str, str]]:
        fi = self._fi
        problems: list[tuple[str, str]] = []
        try:
            insp.safety_check()
        except fi.SafetyCheckFailed as exc:
            problems += [(str(name), str(err)) for name, err in sorted(exc.failures.items())]
        except Exception as exc:  # ImageFormatError: incomplete or inconsistent
            problems.append(("parse", str(exc)))
        if insp.NAME == "vmdk":
            # QEMU reads the extents named by a vmdk's descriptor when the file is a text
            # descriptor, or when its sparse header has no capacity: only a sparse file
            # (KDMV header) with a capacity is its own one and only extent.
            if not insp.has_region("header"):
                problems.append(("vmdk_text", "no sparse extent header"))
            else:
                try:
                    capacity = int(insp.virtual_size)
                except Exception:
                    capacity = 0
                if capacity <= 0:
                    problems.append(("vmdk_capacity", "capacity 0"))
        return problems


def gather_stream(chunks: Iterable[bytes]) -> Facts:
    """The facts of the image made of ``chunks`` (oslo's checks only; see :func:`gather`)."""
    stream = _Stream()
    for chunk in chunks:
        stream.feed(chunk)
    return stream.facts()[0]


def gather(path: Path) -> Facts:
    """The facts of the image file ``path``: oslo's inspectors, then, once they pass,
    ``qemu-img info`` told the format and run under limits."""
    stream = _Stream()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                stream.feed(chunk)
                if stream.complete():
                    break
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise BadInput(f"cannot read the image {path}: {exc.strerror}") from None
    facts, insp = stream.facts()
    facts = Facts(facts.formats, size, size if insp is None else facts.virtual_size, facts.problems)
    fmt = facts.format
    if fmt not in _QEMU_CHECKED:
        return facts
    checks = {c for c, _ in facts.problems}
    if checks - {"backing_file"}:
        return facts  # refused whatever qemu-img says: do not let it open the image
    return _confirm(path, fmt, facts)


def _confirm(path: Path, fmt: str, facts: Facts) -> Facts:
    """``qemu-img info`` of an image that oslo's checks passed (but perhaps for a
    backing file): the same answer from QEMU's own parser, or a problem."""
    from vmwu.images import qemu_img

    problems = list(facts.problems)
    try:
        info = qemu_img.info(path, fmt)
    except (ToolFailed, BadInput) as exc:
        return Facts(facts.formats, facts.size, facts.virtual_size, (("qemu_info", str(exc)),))
    virtual = info.get("virtual-size")
    virtual_size = facts.virtual_size
    if isinstance(virtual, int) and virtual >= 0:
        if fmt in ("qcow2", "vmdk") and virtual != facts.virtual_size:
            problems.append(("qemu_size", f"{virtual} against {facts.virtual_size} bytes"))
        virtual_size = virtual
    else:
        problems.append(("qemu_info", "no virtual size"))
    backing = None
    name = info.get("backing-filename")
    if name is not None:
        bfmt = info.get("backing-filename-format")
        backing = (str(name), str(bfmt) if bfmt else "")
        if "backing_file" not in {c for c, _ in problems}:
            problems.append(("qemu_backing", str(name)))
    specific = info.get("format-specific")
    data: dict[str, Any] = specific.get("data", {}) if isinstance(specific, dict) else {}
    if not isinstance(data, dict):
        data = {}
    if fmt == "qcow2" and data.get("data-file") is not None:
        problems.append(("qemu_data_file", str(data.get("data-file"))))
    if fmt == "vmdk":
        extents = data.get("extents")
        names = [e.get("filename") for e in extents] if isinstance(extents, list) else []
        mine = os.fspath(path)
        if len(names) != 1 or not isinstance(names[0], str) or names[0] != mine:
            problems.append(("extents", ", ".join(str(n) for n in names) or "none"))
    return Facts(facts.formats, facts.size, virtual_size, tuple(problems), backing)


# ---------------------------------------------------------------------------------------
# records (the node cache keeps the facts of each blob: resolve.py)


def load(record: Path) -> Facts | None:
    try:
        return Facts.from_json(record.read_text())
    except OSError:
        return None


def save(record: Path, facts: Facts) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, (facts.to_json() + "\n").encode())


# ---------------------------------------------------------------------------------------
# policy


def check(
    facts: Facts,
    *,
    what: str,
    declared: str | None,
    capacity: int | None = None,
    backing: tuple[str, str] | None = None,
    allowed: tuple[str, ...] = UNIT_FORMATS,
) -> str:
    """The format to give QEMU for this use of an image with ``facts``, or UnsafeImage.

    ``declared``: the format the unit (or the user) says it is; None to take the one
    found (``allowed`` formats only). ``capacity``: the virtual size the unit declares.
    ``backing``: the one backing file (name, format) this image may name."""

    def refuse(reason: str) -> UnsafeImage:
        return UnsafeImage(
            f"{what} is refused: {reason}",
            hint="vmwu lets QEMU open only self-contained images of their declared format",
        )

    found = facts.format
    structured = [f for f in facts.formats if f not in _RAW_LIKE]
    if len(structured) > 1:
        raise refuse(f"{_PHRASES['formats']} ({', '.join(structured)})")
    if declared is None:
        if found not in allowed:
            raise refuse(f"it is a {found} image; expected one of {', '.join(allowed)}")
        declared = found
    elif declared not in allowed:
        raise refuse(f"format {declared!r} is not one of {', '.join(allowed)}")
    elif found != declared:
        if found == "raw":
            raise refuse(f"it is declared {declared} but holds no {declared} image")
        raise refuse(f"it holds a {found} image but is declared {declared}")
    for name, detail in facts.problems:
        if name in ("backing_file", "qemu_backing") and backing is not None:
            continue  # judged below, against the one allowed
        phrase = _PHRASES.get(name, f"its safety check {name!r} fails")
        if name in _PLAIN:  # oslo's text says no more than the phrase
            detail = ""
        if name == "backing_file" and facts.backing is not None:
            detail = facts.backing[0]
        raise refuse(f"{phrase} ({_short(detail)})" if detail else phrase)
    if facts.backing is not None and facts.backing != backing:
        allowed_one = f"; only {backing[0]} ({backing[1]}) is allowed" if backing else ""
        raise refuse(
            f"{_PHRASES['backing_file']} ({_short(facts.backing[0])}, format "
            f"{facts.backing[1] or 'not given'}){allowed_one}"
        )
    if facts.virtual_size <= 0:
        raise refuse("it has no capacity")
    if facts.virtual_size > MAX_DISK_SIZE:
        raise refuse(
            f"its capacity {format_over(facts.virtual_size, MAX_DISK_SIZE)} is over vmwu's maximum "
            f"of {format_size(MAX_DISK_SIZE)}"
        )
    if capacity is not None and capacity != facts.virtual_size:
        raise refuse(
            f"the unit declares a capacity of {capacity} bytes, the image has {facts.virtual_size}"
        )
    return declared


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."


def inspect_file(
    path: Path,
    *,
    what: str,
    declared: str | None,
    capacity: int | None = None,
    allowed: tuple[str, ...] = UNIT_FORMATS,
) -> tuple[str, Facts]:
    """:func:`gather` then :func:`check`: the format to use and the facts."""
    facts = gather(path)
    return check(facts, what=what, declared=declared, capacity=capacity, allowed=allowed), facts
