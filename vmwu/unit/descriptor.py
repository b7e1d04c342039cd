"""What an OVF descriptor of vmwu may hold: namespaces, formats, member names, consistency.

The vocabulary shared by the writer (:mod:`vmwu.unit.ovf_render`), the parser
(:mod:`vmwu.unit.ovf_parse`), the manifest and the tar reader, and the one consistency
check both sides apply: :func:`descriptor_problem` (render raises ValueError on it, a bug in
the caller; parse raises UnitError, a bad unit). See docs/ova-layout.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from vmwu.unit.model import FileRole, UnitDescriptor, UnitFile

OVF1_NS: Final = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2_NS: Final = "http://schemas.dmtf.org/ovf/envelope/2"
RASD_NS: Final = (
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
)
VSSD_NS: Final = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
VMWU_NS: Final = "http://vmwu.dev/ovf/1"
VMWU_NS_FAMILY: Final = "http://vmwu.dev/ovf/"

# OVF version -> envelope namespace. 1.0 and 1.1 share a namespace; 2.0 has its own.
OVF_VERSIONS: Final[Mapping[str, str]] = {"1.0": OVF1_NS, "1.1": OVF1_NS, "2.0": OVF2_NS}

# Disk format (UnitFile.format) -> OVF Disk ovf:format URI. There is no standard URI for
# raw images; vmwu uses QEMU's name space for it as it does for qcow2.
DISK_FORMAT_URIS: Final[Mapping[str, str]] = {
    "qcow2": "http://www.qemu.org/qcow2",
    "raw": "http://www.qemu.org/raw",
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
}
URI_FORMATS: Final[Mapping[str, str]] = {
    **{uri: fmt for fmt, uri in DISK_FORMAT_URIS.items()},
    # the older spelling some VMware tools write
    "http://www.vmware.com/specifications/vmdk.html#streamOptimized": "vmdk",
}

# rasd:ResourceType values (CIM_ResourceAllocationSettingData)
RT_CPU: Final = "3"
RT_MEMORY: Final = "4"
RT_SCSI: Final = "6"
RT_DISK: Final = "17"

# Conventional member names: NAME-app.qcow2, NAME-base-kernel, ...
_ROLE_STEMS: Final[Mapping[FileRole, str]] = {
    FileRole.KERNEL: "base-kernel",
    FileRole.INITRD: "base-initrd",
    FileRole.BASE_DISK: "base-disk",
    FileRole.APP_DISK: "app",
    FileRole.OUTPUT_DISK: "output",
    FileRole.BASE_LAYER: "base-layer",
}
_FORMAT_SUFFIXES: Final[Mapping[str, str]] = {"qcow2": ".qcow2", "raw": ".raw", "vmdk": ".vmdk"}

# The descriptor's size limit; anything bigger is not a descriptor we wrote.
MAX_DESCRIPTOR_BYTES: Final = 4 * 1024 * 1024

SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_XML_INVALID_RE: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def default_href(unit_name: str, role: FileRole, fmt: str) -> str:
    """The conventional member name of a file: ``NAME-app.qcow2``, ``NAME-base-kernel``..."""
    return f"{unit_name}-{_ROLE_STEMS[role]}{_FORMAT_SUFFIXES.get(fmt, '')}"


def descriptor_member(desc: UnitDescriptor) -> str:
    return f"{desc.name}.ovf"


def manifest_member(desc: UnitDescriptor) -> str:
    return f"{desc.name}.mf"


def member_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a member of a ``.ova`` (members are plain file names)."""
    if not name:
        return "has an empty name"
    if name.startswith("/"):
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "has a '..' path component"
    if "/" in name or "\\" in name:
        return "is inside a directory (members of a .ova are plain file names)"
    if name == ".":
        return "is named '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has control characters in its name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "has a name that is not valid UTF-8"
    if len(encoded) > 255:
        return "has a name longer than 255 bytes"
    return None


def descriptor_problem(desc: UnitDescriptor) -> str | None:
    """The first thing wrong with ``desc``, or None when it can be written and read back."""
    return _unit_problem(desc) or _files_problem(desc) or _text_problem(desc)


def _unit_problem(desc: UnitDescriptor) -> str | None:
    """What is wrong with the unit's own fields (name, size, timeout, base digest)."""
    if desc.ovf_version not in OVF_VERSIONS:
        return f"unsupported OVF version {desc.ovf_version!r}"
    problem = member_name_problem(f"{desc.name}.ovf")
    if problem or not desc.name:
        return f"unit name {desc.name!r} cannot name a file"
    if desc.cpus < 1:
        return f"cpus must be at least 1, got {desc.cpus}"
    if desc.memory_mib < 1:
        return f"memory must be at least 1 MiB, got {desc.memory_mib}"
    if desc.timeout is not None and not (math.isfinite(desc.timeout) and desc.timeout > 0):
        return f"timeout must be a positive number of seconds, got {desc.timeout}"
    if not SHA256_RE.fullmatch(desc.base.sha256):
        return f"base sha256 {desc.base.sha256!r} is not 64 lowercase hex digits"
    return None


def _files_problem(desc: UnitDescriptor) -> str | None:
    """What is wrong with the list of files: ids and hrefs unique, each file sound."""
    ids: set[str] = set()
    hrefs: set[str] = {descriptor_member(desc), manifest_member(desc)}
    for f in desc.files:
        if not f.id or f.id in ids:
            return f"file id {f.id!r} is empty or used twice"
        ids.add(f.id)
        problem = member_name_problem(f.href)
        if problem:
            return f"file {f.id!r}: href {f.href!r} {problem}"
        if f.href in hrefs:
            return f"file {f.id!r}: href {f.href!r} is used twice"
        hrefs.add(f.href)
        problem = _file_problem(f)
        if problem:
            return problem
    return None


def _file_problem(f: UnitFile) -> str | None:
    """What is wrong with one file's digest, size, format and disk fields."""
    if not SHA256_RE.fullmatch(f.sha256):
        return f"file {f.id!r}: sha256 {f.sha256!r} is not 64 lowercase hex digits"
    if f.size < 0:
        return f"file {f.id!r}: negative size {f.size}"
    if not f.format:
        return f"file {f.id!r} has no format"
    if f.is_disk:
        if f.format not in DISK_FORMAT_URIS:
            known = ", ".join(DISK_FORMAT_URIS)
            return f"disk {f.id!r} has format {f.format!r}; expected one of {known}"
        if f.capacity is None or f.capacity < 0:
            return f"disk {f.id!r} has no capacity"
    elif f.capacity is not None or f.label is not None or f.filesystem is not None:
        return f"file {f.id!r} ({f.role}) is not a disk but has a capacity, label or fs"
    return None


def _text_problem(desc: UnitDescriptor) -> str | None:
    """A text field holding a character XML 1.0 cannot carry, if any."""
    base, layout = desc.base, desc.layout
    texts = [
        desc.name,
        desc.description,
        desc.app_launch,
        desc.vmwu_version,
        base.name,
        base.architecture,
        base.guest_os,
        base.cmdline,
        layout.app_dir,
        layout.output_dir,
        layout.cdrom_dir,
        layout.script_name,
        *(v for f in desc.files for v in (f.id, f.href, f.format, f.label, f.filesystem) if v),
    ]
    for text in texts:
        if _XML_INVALID_RE.search(text):
            return f"{text!r} holds characters that XML cannot carry"
    return None
