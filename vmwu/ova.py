"""The ``.ova``: OVF descriptor, SHA256 manifest, deterministic tar writing, safe reading.

Layout (docs/ova-layout.md): a POSIX tar holding ``NAME.ovf`` first, ``NAME.mf`` second,
then the embedded files in descriptor order. Files the descriptor marks as *referenced*
(typically the base) are listed in the OVF ``References`` with their sha256 but are not
in the tar; the launcher resolves them from the node cache or the catalog.

Writing is deterministic: the same descriptor and sources give a byte-identical ``.ova``.
Reading assumes the file is hostile: it never extracts by name, accepts regular files
with flat names only, and trusts no size or digest it has not checked against the
descriptor and the manifest.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import re
import secrets
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Final, NoReturn
from xml.parsers import expat

from vmwu.errors import HostDiskFull, HostFailure, UnitError
from vmwu.unit import (
    BaseRef,
    BootMethod,
    FileRole,
    GuestLayout,
    UnitDescriptor,
    UnitFile,
)

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as bytes are copied or hashed."""

CHUNK: Final = 1024 * 1024

OVF1_NS: Final = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2_NS: Final = "http://schemas.dmtf.org/ovf/envelope/2"
RASD_NS: Final = (
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
)
VSSD_NS: Final = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
VMWU_NS: Final = "http://vmwu.dev/ovf/1"
_VMWU_NS_FAMILY: Final = "http://vmwu.dev/ovf/"

# OVF version -> envelope namespace. 1.0 and 1.1 share a namespace; 2.0 has its own.
OVF_VERSIONS: Final[Mapping[str, str]] = {"1.0": OVF1_NS, "1.1": OVF1_NS, "2.0": OVF2_NS}

# Disk format (UnitFile.format) -> OVF Disk ovf:format URI. There is no standard URI for
# raw images; vmwu uses QEMU's name space for it as it does for qcow2.
DISK_FORMAT_URIS: Final[Mapping[str, str]] = {
    "qcow2": "http://www.qemu.org/qcow2",
    "raw": "http://www.qemu.org/raw",
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
}
_URI_FORMATS: Final[Mapping[str, str]] = {
    **{uri: fmt for fmt, uri in DISK_FORMAT_URIS.items()},
    # the older spelling some VMware tools write
    "http://www.vmware.com/specifications/vmdk.html#streamOptimized": "vmdk",
}

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

# Limits on the two small members; anything bigger is not a descriptor we wrote.
MAX_DESCRIPTOR_BYTES: Final = 4 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 1024 * 1024

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_XML_INVALID_RE: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MANIFEST_RE: Final = re.compile(r"SHA256\((?P<name>.+)\)=[ \t]*(?P<digest>[0-9A-Fa-f]{64})")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,20}")
_BYTE_UNITS_RE: Final = re.compile(r"byte(?:\s*\*\s*2\s*\^\s*(?P<exp>[0-9]{1,2}))?")

_64_BIT_ARCHES: Final = frozenset({"x86_64", "aarch64", "ppc64le", "ppc64", "riscv64", "s390x"})

# rasd:ResourceType values (CIM_ResourceAllocationSettingData)
_RT_CPU: Final = "3"
_RT_MEMORY: Final = "4"
_RT_SCSI: Final = "6"
_RT_DISK: Final = "17"


def default_href(unit_name: str, role: FileRole, fmt: str) -> str:
    """The conventional member name of a file: ``NAME-app.qcow2``, ``NAME-base-kernel``..."""
    return f"{unit_name}-{_ROLE_STEMS[role]}{_FORMAT_SUFFIXES.get(fmt, '')}"


def descriptor_member(desc: UnitDescriptor) -> str:
    return f"{desc.name}.ovf"


def manifest_member(desc: UnitDescriptor) -> str:
    return f"{desc.name}.mf"


# ---------------------------------------------------------------------------------------
# Consistency of a descriptor (shared by render: ValueError, and parse: UnitError)


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
    if not _SHA256_RE.fullmatch(desc.base.sha256):
        return f"base sha256 {desc.base.sha256!r} is not 64 lowercase hex digits"
    ids: set[str] = set()
    hrefs: set[str] = {f"{desc.name}.ovf", f"{desc.name}.mf"}
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
        if not _SHA256_RE.fullmatch(f.sha256):
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
        base.agent_version,
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


# ---------------------------------------------------------------------------------------
# A tiny XML writer: full control of namespaces, attribute order and escaping, so the
# bytes do not depend on the Python version (ElementTree cannot write a default namespace
# together with prefixed attributes in that same namespace, which OVF needs).


@dataclass
class _El:
    tag: str  # as written, with its prefix: "File", "rasd:ResourceType"
    attrs: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    children: list[_El] = field(default_factory=list)

    def add(self, tag: str, text: str | None = None, **attrs: str) -> _El:
        child = _El(tag, [(k.replace("__", ":"), v) for k, v in attrs.items()], text)
        self.children.append(child)
        return child


def _esc_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _esc_attr(s: str) -> str:
    return _esc_text(s).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def _serialize(el: _El, out: list[str], depth: int = 0) -> None:
    pad = "  " * depth
    attrs = "".join(f' {k}="{_esc_attr(v)}"' for k, v in el.attrs)
    if el.children:
        out.append(f"{pad}<{el.tag}{attrs}>\n")
        for child in el.children:
            _serialize(child, out, depth + 1)
        out.append(f"{pad}</{el.tag}>\n")
    elif el.text:
        out.append(f"{pad}<{el.tag}{attrs}>{_esc_text(el.text)}</{el.tag}>\n")
    else:
        out.append(f"{pad}<{el.tag}{attrs}/>\n")


# ---------------------------------------------------------------------------------------
# Rendering


def _os_type(base: BaseRef) -> str:
    """CIM_OperatingSystem OSType for OperatingSystemSection ovf:id."""
    wide = base.architecture in _64_BIT_ARCHES
    if base.guest_os.lower().startswith("linux"):
        return "101" if wide else "36"  # "Linux 64-Bit" / "LINUX"
    return "102" if wide else "1"  # "Other 64-Bit" / "Other"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def render_ovf(desc: UnitDescriptor) -> bytes:
    """The OVF descriptor of ``desc``: deterministic UTF-8 XML ending in a newline.

    Raises ValueError if ``desc`` is inconsistent (a bug in the caller, not user input).
    """
    problem = descriptor_problem(desc)
    if problem:
        raise ValueError(f"cannot write the descriptor of unit {desc.name!r}: {problem}")
    env = _El(
        "Envelope",
        [
            ("xmlns", OVF_VERSIONS[desc.ovf_version]),
            ("xmlns:ovf", OVF_VERSIONS[desc.ovf_version]),
            ("xmlns:rasd", RASD_NS),
            ("xmlns:vssd", VSSD_NS),
            ("xmlns:xsi", XSI_NS),
            ("xmlns:vmwu", VMWU_NS),
            ("ovf:version", desc.ovf_version),
        ],
    )
    refs = env.add("References")
    for f in desc.files:
        el = refs.add("File", ovf__id=f.id, ovf__href=f.href, ovf__size=str(f.size))
        el.attrs += [
            ("vmwu:role", f.role.value),
            ("vmwu:embedded", _bool(f.embedded)),
            ("vmwu:sha256", f.sha256),
            ("vmwu:format", f.format),
        ]
        if f.label is not None:
            el.attrs.append(("vmwu:label", f.label))
        if f.filesystem is not None:
            el.attrs.append(("vmwu:filesystem", f.filesystem))

    disks = [f for f in desc.files if f.is_disk]
    if disks:
        section = env.add("DiskSection")
        section.add("Info", "Virtual disks of the work unit")
        for f in disks:
            section.add(
                "Disk",
                ovf__diskId=f.id,
                ovf__fileRef=f.id,
                ovf__capacity=str(f.capacity),
                ovf__capacityAllocationUnits="byte",
                ovf__format=DISK_FORMAT_URIS[f.format],
            )

    vs = env.add("VirtualSystem", ovf__id=desc.name)
    vs.add("Info", "A vmwu work unit (virtual machine work unit)")
    vs.add("Name", desc.name)
    os_section = vs.add("OperatingSystemSection", ovf__id=_os_type(desc.base))
    os_section.add("Info", "The guest operating system")
    os_section.add("Description", desc.base.guest_os or "unknown")

    hw = vs.add("VirtualHardwareSection")
    hw.add("Info", f"{desc.cpus} CPU(s), {desc.memory_mib} MiB of memory")
    system = hw.add("System")
    system.add("vssd:ElementName", "Virtual Hardware Family")
    system.add("vssd:InstanceID", "0")
    system.add("vssd:VirtualSystemIdentifier", desc.name)
    system.add("vssd:VirtualSystemType", f"qemu-{desc.base.architecture}")
    cpu = hw.add("Item")
    cpu.add("rasd:AllocationUnits", "hertz * 10^6")
    cpu.add("rasd:Description", "Number of virtual CPUs")
    cpu.add("rasd:ElementName", f"{desc.cpus} virtual CPU(s)")
    cpu.add("rasd:InstanceID", "1")
    cpu.add("rasd:ResourceType", _RT_CPU)
    cpu.add("rasd:VirtualQuantity", str(desc.cpus))
    mem = hw.add("Item")
    mem.add("rasd:AllocationUnits", "byte * 2^20")
    mem.add("rasd:Description", "Memory size")
    mem.add("rasd:ElementName", f"{desc.memory_mib} MiB of memory")
    mem.add("rasd:InstanceID", "2")
    mem.add("rasd:ResourceType", _RT_MEMORY)
    mem.add("rasd:VirtualQuantity", str(desc.memory_mib))
    if disks:
        ctl = hw.add("Item")
        ctl.add("rasd:Address", "0")
        ctl.add("rasd:Description", "SCSI controller")
        ctl.add("rasd:ElementName", "SCSI controller 0")
        ctl.add("rasd:InstanceID", "3")
        ctl.add("rasd:ResourceSubType", "lsilogic")
        ctl.add("rasd:ResourceType", _RT_SCSI)
        for i, f in enumerate(disks):
            item = hw.add("Item")
            item.add("rasd:AddressOnParent", str(i if i < 7 else i + 1))  # 7: the controller
            item.add("rasd:Description", f.role.value)
            item.add("rasd:ElementName", f"Hard disk {i + 1}")
            item.add("rasd:HostResource", f"ovf:/disk/{f.id}")
            item.add("rasd:InstanceID", str(4 + i))
            item.add("rasd:Parent", "3")
            item.add("rasd:ResourceType", _RT_DISK)

    if desc.description:
        note = vs.add("AnnotationSection")
        note.add("Info", "A description of the work unit")
        note.add("Annotation", desc.description)

    wu = vs.add("vmwu:WorkUnitSection", ovf__required="false")
    wu.add("Info", "How vmwu boots this work unit and launches its application")
    wu.add("vmwu:VmwuVersion", desc.vmwu_version)
    base = wu.add("vmwu:Base")
    base.add("vmwu:Name", desc.base.name)
    base.add("vmwu:Sha256", desc.base.sha256)
    base.add("vmwu:Architecture", desc.base.architecture)
    base.add("vmwu:GuestOS", desc.base.guest_os)
    base.add("vmwu:BootMethod", desc.base.boot_method.value)
    base.add("vmwu:KernelCmdline", desc.base.cmdline)
    base.add("vmwu:AgentVersion", desc.base.agent_version)
    base.add("vmwu:CdromAsHardDisk", _bool(desc.base.cdrom_as_hard_disk))
    layout = wu.add("vmwu:GuestLayout")
    layout.add("vmwu:AppDir", desc.layout.app_dir)
    layout.add("vmwu:OutputDir", desc.layout.output_dir)
    layout.add("vmwu:CdromDir", desc.layout.cdrom_dir)
    layout.add("vmwu:ScriptName", desc.layout.script_name)
    wu.add("vmwu:AppLaunch", desc.app_launch)
    if desc.timeout is not None:
        wu.add("vmwu:Timeout", repr(float(desc.timeout)))

    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _serialize(env, out)
    return "".join(out).encode("utf-8")


# ---------------------------------------------------------------------------------------
# Parsing (untrusted input)


class _Refused(Exception):
    pass


def _refuse_declaration(*_args: object) -> NoReturn:
    raise _Refused


def _parse_xml(data: bytes, where: str) -> ET.Element:
    """Parse untrusted XML: DTDs (hence entities, billion laughs, external entities) are
    refused by a first expat pass that stops at the ``<!DOCTYPE``, before any expansion.
    The bytes are read as UTF-8 whatever encoding the XML declaration names (a descriptor
    is UTF-8; an unknown name made the parser raise LookupError, found by the fuzzer)."""
    scanner = expat.ParserCreate(encoding="UTF-8")
    scanner.StartDoctypeDeclHandler = _refuse_declaration
    scanner.EntityDeclHandler = _refuse_declaration
    scanner.ExternalEntityRefHandler = _refuse_declaration
    try:
        scanner.Parse(data, True)
    except _Refused:
        raise UnitError(
            f"{where} contains a DOCTYPE or ENTITY declaration, which vmwu refuses "
            "(a descriptor never needs one; this may be an attack)"
        ) from None
    except (expat.ExpatError, LookupError, ValueError) as err:
        raise UnitError(f"{where} is not well-formed XML (UTF-8): {err}") from None
    try:
        parser = ET.XMLParser(encoding="UTF-8")
        parser.feed(data)
        return parser.close()
    except (ET.ParseError, LookupError, ValueError) as err:  # pragma: no cover - scanned above
        raise UnitError(f"{where} is not well-formed XML (UTF-8): {err}") from None


class _Reader:
    """Helpers bound to one descriptor: namespaced lookups with errors naming the file."""

    def __init__(self, ovf_ns: str, where: str) -> None:
        self.ns = ovf_ns
        self.where = where

    def err(self, message: str) -> UnitError:
        return UnitError(f"{message} in {self.where}")

    def o(self, local: str) -> str:
        return f"{{{self.ns}}}{local}"

    def one(self, parent: ET.Element, tag: str, what: str) -> ET.Element:
        found = parent.findall(tag)
        if len(found) != 1:
            many = "several" if found else "no"
            raise self.err(f"{many} {what} element{'s' if found else ''}")
        return found[0]

    def attr(self, el: ET.Element, name: str, what: str) -> str:
        value = el.get(name)
        if value is None:
            local = name.rsplit("}", 1)[-1]
            raise self.err(f"{what} has no {local} attribute")
        return value

    def number(self, text: str | None, what: str) -> int:
        value = (text or "").strip()
        if not _DIGITS_RE.fullmatch(value):
            raise self.err(f"{what} is {text!r}, not a whole number")
        return int(value)

    def text(self, parent: ET.Element, local: str, what: str, required: bool = True) -> str:
        found = parent.findall(f"{{{VMWU_NS}}}{local}")
        if len(found) > 1:
            raise self.err(f"several vmwu:{local} elements in {what}")
        if not found:
            if required:
                raise self.err(f"{what} has no vmwu:{local}")
            return ""
        return found[0].text or ""

    def boolean(self, parent: ET.Element, local: str, what: str) -> bool:
        value = self.text(parent, local, what).strip()
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise self.err(f"vmwu:{local} of {what} is {value!r}, expected true or false")

    def sha256(self, value: str, what: str) -> str:
        value = value.strip().lower()
        if not _SHA256_RE.fullmatch(value):
            raise self.err(f"{what} sha256 {value!r} is not 64 hex digits")
        return value


def parse_ovf(data: bytes, where: str) -> UnitDescriptor:
    """Read a vmwu OVF descriptor; ``where`` names it in errors. Raises UnitError."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise UnitError(f"{where} is {len(data)} bytes, too large for an OVF descriptor")
    root = _parse_xml(data, where)
    ns, _, local = root.tag[1:].partition("}") if root.tag.startswith("{") else ("", "", "")
    if local != "Envelope" or not ns:
        raise UnitError(f"{where} is not an OVF descriptor (no OVF Envelope element)")
    version = root.get(f"{{{ns}}}version")
    if ns not in OVF_VERSIONS.values():
        shown = f"{version} ({ns})" if version else ns
        raise UnitError(f"unsupported OVF version {shown} in {where}")
    if version is None:
        version = "1.0" if ns == OVF1_NS else "2.0"
    if OVF_VERSIONS.get(version) != ns:
        raise UnitError(f"unsupported OVF version {version} in {where}")
    r = _Reader(ns, where)

    systems = root.findall(r.o("VirtualSystem"))
    if len(systems) != 1:
        if root.find(r.o("VirtualSystemCollection")) is not None or systems:
            raise r.err("more than one virtual system (a vmwu unit has exactly one)")
        raise r.err("no VirtualSystem")
    vs = systems[0]
    sections = vs.findall(f"{{{VMWU_NS}}}WorkUnitSection")
    if not sections:
        newer = [c.tag for c in vs if c.tag.startswith("{" + _VMWU_NS_FAMILY)]
        if newer:
            raise UnitError(
                f"{where} was written by a newer vmwu ({newer[0].split('}')[0][1:]})",
                hint="upgrade vmwu on this node",
            )
        raise UnitError(
            f"not a vmwu work unit: {where} has no vmwu:WorkUnitSection "
            "(a plain OVF appliance cannot be run by vmwu)"
        )
    if len(sections) > 1:
        raise r.err("several vmwu:WorkUnitSection elements")
    wu = sections[0]

    files = _parse_files(r, root)
    disk_ids = _parse_disks(r, root, files)
    cpus, memory = _parse_hardware(r, vs, disk_ids)
    name_el = vs.find(r.o("Name"))
    name = (name_el.text or "") if name_el is not None else r.attr(vs, r.o("id"), "a system")
    section = "vmwu:WorkUnitSection"
    timeout_text = r.text(wu, "Timeout", section, required=False).strip()
    timeout: float | None = None
    if timeout_text:
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise r.err(f"vmwu:Timeout {timeout_text!r} is not a number of seconds") from None
    desc = UnitDescriptor(
        name=name,
        base=_parse_base(r, wu),
        files=tuple(files.values()),
        memory_mib=memory,
        cpus=cpus,
        description=vs.findtext(f"{r.o('AnnotationSection')}/{r.o('Annotation')}") or "",
        app_launch=r.text(wu, "AppLaunch", section, required=False),
        layout=_parse_layout(r, wu),
        timeout=timeout,
        vmwu_version=r.text(wu, "VmwuVersion", section, required=False),
        ovf_version=version,
    )
    problem = descriptor_problem(desc)
    if problem:
        raise UnitError(f"{where}: {problem}")
    return desc


def _parse_hardware(r: _Reader, vs: ET.Element, disk_ids: set[str]) -> tuple[int, int]:
    """(cpus, memory MiB) from VirtualHardwareSection; disk items must name known disks."""
    hw = r.one(vs, r.o("VirtualHardwareSection"), "VirtualHardwareSection")
    cpus: int | None = None
    memory: int | None = None
    for item in hw.findall(r.o("Item")):
        kind = (item.findtext(f"{{{RASD_NS}}}ResourceType") or "").strip()
        quantity = item.findtext(f"{{{RASD_NS}}}VirtualQuantity")
        if kind == _RT_CPU:
            if cpus is not None:
                raise r.err("several CPU items")
            cpus = r.number(quantity, "the CPU count")
        elif kind == _RT_MEMORY:
            if memory is not None:
                raise r.err("several memory items")
            memory = _memory_mib(r, quantity, item.findtext(f"{{{RASD_NS}}}AllocationUnits"))
        for host in item.findall(f"{{{RASD_NS}}}HostResource"):
            ref = (host.text or "").strip()
            for prefix in ("ovf:/disk/", "/disk/"):
                if ref.startswith(prefix) and ref[len(prefix) :] not in disk_ids:
                    raise r.err(f"hardware item refers to {ref!r}, which DiskSection lacks")
    if cpus is None:
        raise r.err("no CPU item in VirtualHardwareSection")
    if memory is None:
        raise r.err("no memory item in VirtualHardwareSection")
    return cpus, memory


def _parse_base(r: _Reader, wu: ET.Element) -> BaseRef:
    el = r.one(wu, f"{{{VMWU_NS}}}Base", "vmwu:Base")
    what = "vmwu:Base"
    boot_text = r.text(el, "BootMethod", what).strip()
    try:
        boot = BootMethod(boot_text)
    except ValueError:
        raise r.err(f"unknown boot method {boot_text!r}") from None
    return BaseRef(
        name=r.text(el, "Name", what),
        sha256=r.sha256(r.text(el, "Sha256", what), "base"),
        architecture=r.text(el, "Architecture", what).strip(),
        guest_os=r.text(el, "GuestOS", what, required=False),
        boot_method=boot,
        cmdline=r.text(el, "KernelCmdline", what, required=False),
        agent_version=r.text(el, "AgentVersion", what, required=False),
        cdrom_as_hard_disk=r.boolean(el, "CdromAsHardDisk", what),
    )


def _parse_layout(r: _Reader, wu: ET.Element) -> GuestLayout:
    found = wu.findall(f"{{{VMWU_NS}}}GuestLayout")
    if len(found) > 1:
        raise r.err("several vmwu:GuestLayout elements")
    if not found:
        return GuestLayout()
    what = "vmwu:GuestLayout"
    return GuestLayout(
        app_dir=r.text(found[0], "AppDir", what),
        output_dir=r.text(found[0], "OutputDir", what),
        cdrom_dir=r.text(found[0], "CdromDir", what),
        script_name=r.text(found[0], "ScriptName", what),
    )


def _parse_files(r: _Reader, root: ET.Element) -> dict[str, UnitFile]:
    """References/File elements by id, in order; disks get their capacity later."""
    files: dict[str, UnitFile] = {}
    for el in r.one(root, r.o("References"), "References").findall(r.o("File")):
        fid = r.attr(el, r.o("id"), "a File")
        what = f"File {fid!r}"
        if fid in files:
            raise r.err(f"file id {fid!r} is used twice")
        for unsupported in ("compression", "chunkSize"):
            value = el.get(r.o(unsupported))
            if value is not None and value != "identity":
                raise r.err(f"{what} uses ovf:{unsupported}={value!r}, which vmwu does not")
        role_text = r.attr(el, f"{{{VMWU_NS}}}role", what)
        try:
            role = FileRole(role_text)
        except ValueError:
            raise r.err(f"{what} has unknown vmwu:role {role_text!r}") from None
        embedded = r.attr(el, f"{{{VMWU_NS}}}embedded", what)
        if embedded not in ("true", "false", "1", "0"):
            raise r.err(f"{what} has vmwu:embedded={embedded!r}, expected true or false")
        files[fid] = UnitFile(
            id=fid,
            href=r.attr(el, r.o("href"), what),
            role=role,
            sha256=r.sha256(r.attr(el, f"{{{VMWU_NS}}}sha256", what), what),
            size=r.number(r.attr(el, r.o("size"), what), f"ovf:size of {what}"),
            embedded=embedded in ("true", "1"),
            format=r.attr(el, f"{{{VMWU_NS}}}format", what),
            label=el.get(f"{{{VMWU_NS}}}label"),
            filesystem=el.get(f"{{{VMWU_NS}}}filesystem"),
        )
    return files


def _parse_disks(r: _Reader, root: ET.Element, files: dict[str, UnitFile]) -> set[str]:
    """Read DiskSection into the capacities of ``files``; return the disk ids."""
    disk_ids: set[str] = set()
    sections = root.findall(r.o("DiskSection"))
    if len(sections) > 1:
        raise r.err("several DiskSection elements")
    for el in sections[0].findall(r.o("Disk")) if sections else []:
        disk_id = r.attr(el, r.o("diskId"), "a Disk")
        what = f"Disk {disk_id!r}"
        if disk_id in disk_ids:
            raise r.err(f"disk id {disk_id!r} is used twice")
        disk_ids.add(disk_id)
        file_ref = r.attr(el, r.o("fileRef"), what)
        target = files.get(file_ref)
        if target is None:
            raise r.err(f"{what} refers to file {file_ref!r}, which References does not list")
        if target.capacity is not None:
            raise r.err(f"file {file_ref!r} backs more than one Disk")
        if not target.is_disk:
            raise r.err(f"file {file_ref!r} ({target.role}) is not a disk but backs {what}")
        units = el.get(r.o("capacityAllocationUnits"), "byte").strip()
        match = _BYTE_UNITS_RE.fullmatch(units)
        if not match:
            raise r.err(f"{what} has capacityAllocationUnits {units!r}, expected bytes")
        capacity = r.number(r.attr(el, r.o("capacity"), what), f"capacity of {what}")
        uri = r.attr(el, r.o("format"), what)
        fmt = _URI_FORMATS.get(uri)
        if fmt is None:
            raise r.err(f"{what} has unsupported format {uri!r}")
        if fmt != target.format:
            raise r.err(f"{what} is {fmt} but its file says vmwu:format={target.format!r}")
        files[file_ref] = replace(target, capacity=capacity << int(match["exp"] or 0))
    for f in files.values():
        if f.is_disk and f.capacity is None:
            raise r.err(f"disk file {f.id!r} has no Disk in DiskSection")
    return disk_ids


def _memory_mib(r: _Reader, quantity: str | None, units: str | None) -> int:
    amount = r.number(quantity, "the memory size")
    unit = (units or "byte * 2^20").strip()
    match = _BYTE_UNITS_RE.fullmatch(unit)
    exp = int(match["exp"] or 0) if match else {"MB": 20, "MegaBytes": 20, "GB": 30}.get(unit)
    if exp is None:
        raise r.err(f"memory AllocationUnits {unit!r} is not understood")
    return (amount << exp) >> 20


# ---------------------------------------------------------------------------------------
# Manifest


def render_manifest(entries: Sequence[tuple[str, str]]) -> bytes:
    """``SHA256(member)= hex`` lines, in the given order."""
    lines = []
    for name, digest in entries:
        if member_name_problem(name) or not _SHA256_RE.fullmatch(digest):
            raise ValueError(f"bad manifest entry {name!r}: {digest!r}")
        lines.append(f"SHA256({name})= {digest}\n")
    return "".join(lines).encode("utf-8")


def parse_manifest(data: bytes, where: str) -> dict[str, str]:
    """Member name -> lowercase hex SHA256. Only SHA256 lines are accepted (no SHA1 or
    SHA512: vmwu writes SHA256 and will not weaken verification for other tools' units)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UnitError(f"{where} is {len(data)} bytes, too large for a manifest")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnitError(f"{where} is not UTF-8 text") from None
    digests: dict[str, str] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        match = _MANIFEST_RE.fullmatch(line)
        if not match:
            hint = None
            if re.match(r"(SHA1|SHA512|SHA384|MD5)\(", line):
                hint = "vmwu accepts SHA256 manifests only"
            raise UnitError(
                f"{where}:{lineno}: expected 'SHA256(member)= hex', got {line[:120]!r}",
                hint=hint,
            )
        name = match["name"]
        if name in digests:
            raise UnitError(f"{where}:{lineno}: {name} is listed twice")
        digests[name] = match["digest"].lower()
    return digests


# ---------------------------------------------------------------------------------------
# Writing


def file_sha256(path: Path) -> tuple[str, int]:
    """(hex SHA256, size in bytes) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


class _SourceShrank(Exception):
    pass


class _HashingSource:
    """Reads a source file for tarfile, hashing and reporting progress on the way.
    tarfile asks for exactly the declared size, so a short read means the file shrank."""

    def __init__(self, src: IO[bytes], step: Callable[[int], None]) -> None:
        self.src = src
        self.step = step
        self.digest = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.src.read(size)
        if size > 0 and len(chunk) < size:
            raise _SourceShrank
        self.digest.update(chunk)
        self.step(len(chunk))
        return chunk


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_ova(
    path: Path,
    desc: UnitDescriptor,
    members: Mapping[str, Path],
    *,
    mtime: int = 0,
    progress: Progress | None = None,
) -> None:
    """Write the unit to ``path``: ``NAME.ovf``, ``NAME.mf``, then the embedded files.

    ``members`` maps each embedded file's href to its source. Sizes and digests in
    ``desc`` must match the sources (ValueError otherwise: a bug, not user input). Same
    inputs give the same bytes. The file appears atomically; on ENOSPC nothing is left
    behind and HostDiskFull is raised.
    """
    embedded = desc.embedded_files()
    wanted = {f.href for f in embedded}
    if set(members) != wanted:
        missing = sorted(wanted - set(members))
        extra = sorted(set(members) - wanted)
        raise ValueError(f"write_ova: sources missing for {missing}, unexpected {extra}")
    for f in embedded:
        actual = members[f.href].stat().st_size
        if actual != f.size:
            raise ValueError(f"write_ova: {members[f.href]} is {actual} bytes, not {f.size}")
    ovf = render_ovf(desc)
    ovf_name, mf_name = descriptor_member(desc), manifest_member(desc)
    manifest = render_manifest(
        [(ovf_name, hashlib.sha256(ovf).hexdigest())] + [(f.href, f.sha256) for f in embedded]
    )
    total = len(ovf) + len(manifest) + sum(f.size for f in embedded)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, total)

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as out:
            with tarfile.TarFile(
                fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK
            ) as tar:
                if progress is not None:
                    progress(0, total)
                for name, blob in ((ovf_name, ovf), (mf_name, manifest)):
                    tar.addfile(_tarinfo(name, len(blob), mtime), io.BytesIO(blob))
                    step(len(blob))
                for f in embedded:
                    with members[f.href].open("rb") as raw:
                        src = _HashingSource(raw, step)
                        tar.addfile(_tarinfo(f.href, f.size, mtime), src)
                        if raw.read(1) or src.digest.hexdigest() != f.sha256:
                            raise ValueError(
                                f"write_ova: {members[f.href]} changed or does not match the "
                                f"descriptor's sha256 for {f.href}"
                            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and _is_disk_full(err):
            raise HostDiskFull(str(path)) from err
        if isinstance(err, _SourceShrank):
            raise ValueError(f"write_ova: a source of {path} shrank while copying") from None
        if isinstance(err, OSError):
            detail = f"{err.strerror}: {err.filename}" if err.filename else str(err)
            raise HostFailure(f"could not write {path}: {detail}") from err
        raise


# ---------------------------------------------------------------------------------------
# Reading untrusted units


_TYPE_NAMES: Final[Mapping[bytes, str]] = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}

_COMPRESSION_MAGIC: Final = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


class OvaReader:
    """A ``.ova`` opened for reading, every header checked (see docs/ova-layout.md).

    Opening validates the structure and the descriptor against the tar headers and the
    manifest without reading the disks; :meth:`verify` hashes them; :meth:`extract`
    copies one member, verifying it on the way. Use as a context manager.
    """

    descriptor: UnitDescriptor
    manifest: dict[str, str]  # member -> sha256, as listed in the .mf
    members: dict[str, int]  # member -> size, in tar order
    ovf_member: str
    manifest_member: str

    def __init__(self, path: Path, *, max_member_size: int | None = None) -> None:
        self.path = Path(path)
        self.max_member_size = max_member_size
        self.compression: str | None = None  # "gz", "bz2", "xz" or None
        self.members = {}
        self._infos: dict[str, tarfile.TarInfo] = {}
        try:
            self._raw = self.path.open("rb")
        except OSError as err:
            raise UnitError(f"cannot open {self.path}: {err.strerror}") from None
        self._tar: tarfile.TarFile | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- context manager

    def __enter__(self) -> OvaReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._raw.close()

    # -- opening

    def _fail(self, message: str, *, hint: str | None = None) -> UnitError:
        return UnitError(f"{self.path}: {message}", hint=hint)

    def _truncated(self, detail: object) -> UnitError:
        return UnitError(
            f"{self.path} is truncated or damaged: {detail}",
            hint="re-copy the unit; compare its size with the original",
        )

    def _open(self) -> None:
        magic = self._raw.read(6)
        self._raw.seek(0)
        for prefix, kind in _COMPRESSION_MAGIC:
            if magic.startswith(prefix):
                self.compression = kind
        try:
            self._tar = tarfile.open(fileobj=self._raw, mode="r:*")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            if self.compression is not None and not isinstance(err, tarfile.ReadError):
                raise self._truncated(err) from None
            raise UnitError(f"{self.path} is not a .ova (tar) file") from None

        ovf_info = self._next()
        if ovf_info is None:
            raise UnitError(f"{self.path} is not a .ova (tar) file: the archive is empty")
        if not ovf_info.name.endswith(".ovf"):
            raise self._fail(
                f"the first member is {ovf_info.name!r}; a .ova starts with its .ovf descriptor"
            )
        stem = ovf_info.name[: -len(".ovf")]
        self.ovf_member = ovf_info.name
        if ovf_info.size > MAX_DESCRIPTOR_BYTES:
            raise self._fail(f"descriptor {ovf_info.name} is {ovf_info.size} bytes, too large")
        ovf_bytes = self._read_small(ovf_info)
        self.descriptor = parse_ovf(ovf_bytes, f"{ovf_info.name} in {self.path}")

        mf_info = self._next()
        if mf_info is None or mf_info.name != f"{stem}.mf":
            found = "nothing" if mf_info is None else repr(mf_info.name)
            raise self._fail(f"the second member is {found}; expected the manifest {stem}.mf")
        self.manifest_member = mf_info.name
        if mf_info.size > MAX_MANIFEST_BYTES:
            raise self._fail(f"manifest {mf_info.name} is {mf_info.size} bytes, too large")
        self.manifest = parse_manifest(self._read_small(mf_info), f"{mf_info.name} in {self.path}")

        declared = {f.href: f for f in self.descriptor.embedded_files()}
        referenced = {f.href for f in self.descriptor.referenced_files()}
        # Each further member must be a declared one, and names are unique, so this loop
        # runs at most len(declared) times before an error: a hostile tar cannot make us
        # walk millions of headers.
        while (info := self._next()) is not None:
            f = declared.get(info.name)
            if f is None:
                if info.name in referenced:
                    raise self._fail(
                        f"member {info.name!r} is declared as referenced by sha256, "
                        "not embedded; the unit is inconsistent"
                    )
                raise self._fail(f"member {info.name!r} is not declared in the descriptor")
            if info.size > f.size:
                raise self._fail(
                    f"member {info.name!r} is larger than declared "
                    f"({info.size} bytes, the descriptor says {f.size})"
                )
            if info.size < f.size:
                raise self._truncated(
                    f"member {info.name!r} is {info.size} bytes, the descriptor says {f.size}"
                )
        self._check_end()

        for href in declared:
            if href not in self.members:
                raise self._fail(f"member {href!r} declared in the descriptor is missing")
        listed = set(self.manifest)
        expected = set(self.members) - {mf_info.name}
        if listed != expected:
            if expected - listed:
                what = f"does not list {sorted(expected - listed)[0]!r}"
            else:
                what = f"lists {sorted(listed - expected)[0]!r}, which is not a member"
            raise self._fail(f"manifest {mf_info.name} {what}")
        if self.manifest[ovf_info.name] != hashlib.sha256(ovf_bytes).hexdigest():
            raise self._mismatch(ovf_info.name)
        for href, f in declared.items():
            if self.manifest[href] != f.sha256:
                raise self._fail(
                    f"the manifest and the descriptor disagree on the sha256 of {href!r}",
                    hint="the unit is corrupt; re-copy it",
                )

    def _next(self) -> tarfile.TarInfo | None:
        assert self._tar is not None
        try:
            info = self._tar.next()
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as err:
            raise self._truncated(err) from None
        if info is None:
            return None
        name = info.name
        problem = member_name_problem(name)
        if problem:
            raise self._fail(f"member {name!r} {problem}; refusing to read the unit")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
            kind = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
            if info.sparse is not None:
                kind = "a sparse file"
            raise self._fail(
                f"member {name!r} is {kind}; a .ova holds regular files only",
                hint="refusing to read a possibly malicious unit",
            )
        if name in self.members:
            raise self._fail(f"member {name!r} appears twice")
        if self.max_member_size is not None and info.size > self.max_member_size:
            raise self._fail(
                f"member {name!r} is {info.size} bytes, over the limit of {self.max_member_size}"
            )
        self.members[name] = info.size
        self._infos[name] = info
        return info

    def _check_end(self) -> None:
        """The walk ended: it must have been at an end-of-archive (zero) block, not at a
        short read or an unreadable header, which tarfile silently treats as the end."""
        assert self._tar is not None and self._tar.fileobj is not None
        fileobj = self._tar.fileobj
        try:
            fileobj.seek(self._tar.offset)
            block = fileobj.read(tarfile.BLOCKSIZE)
        except (EOFError, zlib.error, OSError) as err:
            raise self._truncated(err) from None
        if len(block) < tarfile.BLOCKSIZE:
            raise self._truncated(f"no end-of-archive marker at byte {self._tar.offset}")
        if block.count(0) != tarfile.BLOCKSIZE:
            raise self._truncated(f"unreadable tar header at byte {self._tar.offset}")

    def _read_small(self, info: tarfile.TarInfo) -> bytes:
        stream = self._stream(info)
        try:
            data = stream.read(info.size)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise self._truncated(err) from None
        if len(data) != info.size:
            raise self._truncated(f"member {info.name!r} is cut short")
        return data

    def _stream(self, info: tarfile.TarInfo) -> IO[bytes]:
        assert self._tar is not None
        stream = self._tar.extractfile(info)
        assert stream is not None  # regular files only
        return stream

    def _mismatch(self, member: str) -> UnitError:
        return UnitError(
            f"manifest mismatch for {member} in {self.path}: the unit is corrupt; re-copy it"
        )

    # -- using

    def _copy(
        self,
        f: UnitFile,
        write: Callable[[bytes], object] | None,
        progress: Progress | None,
        done: int,
        total: int,
    ) -> None:
        """Stream member ``f`` (exactly its declared size) through sha256 and ``write``;
        UnitError when it is short or its digest differs from the manifest."""
        if self._tar is None:
            raise ValueError(f"{self.path} is closed")
        stream = self._stream(self._infos[f.href])
        digest = hashlib.sha256()
        remaining = f.size
        while remaining > 0:
            try:
                chunk = stream.read(min(CHUNK, remaining))
            except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
                raise self._truncated(err) from None
            if not chunk:
                raise self._truncated(f"member {f.href!r} is cut short")
            digest.update(chunk)
            if write is not None:
                write(chunk)
            remaining -= len(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if digest.hexdigest() != self.manifest[f.href]:
            raise self._mismatch(f.href)

    def identity(self) -> str:
        """A name for the exact file being read (device, inode, size, mtime and ctime of
        the open file): the node cache remembers a verified unit under it, and any change
        to the file (a copy over it, an edit, even a ``touch``) gives another name."""
        st = os.fstat(self._raw.fileno())
        ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]

    def verify_member(self, href: str) -> None:
        """Hash embedded member ``href`` against the manifest (UnitError if it differs)."""
        f = next((f for f in self.descriptor.embedded_files() if f.href == href), None)
        if f is None:
            raise ValueError(f"{href!r} is not an embedded member of {self.path}")
        self._copy(f, None, None, 0, f.size)

    def verify(self, progress: Progress | None = None) -> None:
        """Hash every embedded member against the manifest (and so the descriptor)."""
        files = self.descriptor.embedded_files()
        total = sum(f.size for f in files)
        done = 0
        if progress is not None:
            progress(0, total)
        for f in files:
            self._copy(f, None, progress, done, total)
            done += f.size

    def extract(self, href: str, dest: Path, *, progress: Progress | None = None) -> None:
        """Copy embedded member ``href`` to ``dest`` (a temporary path chosen by the
        caller), verifying its size and sha256 on the way. On any failure ``dest`` is
        removed: UnitError if the member is corrupt, HostDiskFull on ENOSPC."""
        f = next((f for f in self.descriptor.embedded_files() if f.href == href), None)
        if f is None:
            raise ValueError(f"{href!r} is not an embedded member of {self.path}")
        try:
            with dest.open("wb") as out:
                if progress is not None:
                    progress(0, f.size)
                self._copy(f, out.write, progress, 0, f.size)
        except BaseException as err:
            dest.unlink(missing_ok=True)
            if isinstance(err, OSError) and _is_disk_full(err):
                raise HostDiskFull(str(dest.parent)) from err
            if isinstance(err, OSError):
                raise HostFailure(f"could not write {dest}: {err.strerror}") from err
            raise
