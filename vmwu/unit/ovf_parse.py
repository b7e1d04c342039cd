"""Reading an OVF descriptor from a unit of unknown origin (docs/ova-layout.md).

The XML goes through :mod:`vmwu.xmlsafe` (defusedxml: a DOCTYPE, hence any entity, is
refused before anything is expanded); every element vmwu needs is looked up by namespace,
counted (one of each), converted and checked, and the result must pass the same
consistency check the writer applies. Every refusal is one UnitError naming the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Final

from vmwu.errors import UnitError
from vmwu.guest.protocol import parse_agent_version
from vmwu.unit.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    OVF1_NS,
    OVF_VERSIONS,
    RASD_NS,
    RT_CPU,
    RT_MEMORY,
    SHA256_RE,
    URI_FORMATS,
    VMWU_NS,
    VMWU_NS_FAMILY,
    descriptor_problem,
)
from vmwu.unit.model import BaseRef, BootMethod, FileRole, GuestLayout, UnitDescriptor, UnitFile
from vmwu.xmlsafe import XmlMalformed, XmlRefused, parse_element

_DIGITS_RE: Final = re.compile(r"[0-9]{1,20}")
_BYTE_UNITS_RE: Final = re.compile(r"byte(?:\s*\*\s*2\s*\^\s*(?P<exp>[0-9]{1,2}))?")


def _parse_xml(data: bytes, where: str) -> ET.Element:
    """The root element; a DOCTYPE or ENTITY declaration is refused before any expansion,
    and the bytes are read as UTF-8 whatever encoding the XML declaration names."""
    try:
        return parse_element(data, encoding="UTF-8")
    except XmlRefused:
        raise UnitError(
            f"{where} contains a DOCTYPE or ENTITY declaration, which vmwu refuses "
            "(a descriptor never needs one; this may be an attack)"
        ) from None
    except XmlMalformed as err:
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
        if not SHA256_RE.fullmatch(value):
            raise self.err(f"{what} sha256 {value!r} is not 64 hex digits")
        return value


def parse_ovf(data: bytes, where: str) -> UnitDescriptor:
    """Read a vmwu OVF descriptor; ``where`` names it in errors. Raises UnitError."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise UnitError(f"{where} is {len(data)} bytes, too large for an OVF descriptor")
    root = _parse_xml(data, where)
    ns, version = _envelope_version(root, where)
    r = _Reader(ns, where)
    vs = _virtual_system(r, root)
    wu = _work_unit_section(r, vs)
    files = _parse_files(r, root)
    disk_ids = _parse_disks(r, root, files)
    cpus, memory = _parse_hardware(r, vs, disk_ids)
    name_el = vs.find(r.o("Name"))
    name = (name_el.text or "") if name_el is not None else r.attr(vs, r.o("id"), "a system")
    section = "vmwu:WorkUnitSection"
    timeout = _parse_timeout(r, wu)
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


def _envelope_version(root: ET.Element, where: str) -> tuple[str, str]:
    """(envelope namespace, OVF version) of an ``Envelope`` root, or UnitError."""
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
    return ns, version


def _virtual_system(r: _Reader, root: ET.Element) -> ET.Element:
    """The one ``VirtualSystem`` (a collection of systems is not a work unit)."""
    systems = root.findall(r.o("VirtualSystem"))
    if len(systems) != 1:
        if root.find(r.o("VirtualSystemCollection")) is not None or systems:
            raise r.err("more than one virtual system (a vmwu unit has exactly one)")
        raise r.err("no VirtualSystem")
    return systems[0]


def _work_unit_section(r: _Reader, vs: ET.Element) -> ET.Element:
    """The one ``vmwu:WorkUnitSection``; a newer vmwu's section is named as such."""
    sections = vs.findall(f"{{{VMWU_NS}}}WorkUnitSection")
    if not sections:
        newer = [c.tag for c in vs if c.tag.startswith("{" + VMWU_NS_FAMILY)]
        if newer:
            raise UnitError(
                f"{r.where} was written by a newer vmwu ({newer[0].split('}')[0][1:]})",
                hint="upgrade vmwu on this node",
            )
        raise UnitError(
            f"not a vmwu work unit: {r.where} has no vmwu:WorkUnitSection "
            "(a plain OVF appliance cannot be run by vmwu)"
        )
    if len(sections) > 1:
        raise r.err("several vmwu:WorkUnitSection elements")
    return sections[0]


def _parse_timeout(r: _Reader, wu: ET.Element) -> float | None:
    text = r.text(wu, "Timeout", "vmwu:WorkUnitSection", required=False).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise r.err(f"vmwu:Timeout {text!r} is not a number of seconds") from None


def _parse_hardware(r: _Reader, vs: ET.Element, disk_ids: set[str]) -> tuple[int, int]:
    """(cpus, memory MiB) from VirtualHardwareSection; disk items must name known disks."""
    hw = r.one(vs, r.o("VirtualHardwareSection"), "VirtualHardwareSection")
    cpus: int | None = None
    memory: int | None = None
    for item in hw.findall(r.o("Item")):
        kind = (item.findtext(f"{{{RASD_NS}}}ResourceType") or "").strip()
        quantity = item.findtext(f"{{{RASD_NS}}}VirtualQuantity")
        if kind == RT_CPU:
            if cpus is not None:
                raise r.err("several CPU items")
            cpus = r.number(quantity, "the CPU count")
        elif kind == RT_MEMORY:
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
        agent_version=_agent_version(r, el, what),
        cdrom_as_hard_disk=r.boolean(el, "CdromAsHardDisk", what),
    )


def _agent_version(r: _Reader, el: ET.Element, what: str) -> int | None:
    """vmwu:AgentVersion: a number, "none" (no vmwu agent), or empty/absent (this vmwu's)."""
    try:
        return parse_agent_version(r.text(el, "AgentVersion", what, required=False))
    except ValueError as exc:
        raise r.err(f"{what}: {exc}") from None


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
        fmt = URI_FORMATS.get(uri)
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
