"""Writing the OVF descriptor: deterministic UTF-8 XML (docs/ova-layout.md, "The descriptor").

A tiny XML writer gives full control of namespaces, attribute order and escaping, so the
bytes do not depend on the Python version (ElementTree cannot write a default namespace
together with prefixed attributes in that same namespace, which OVF needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from vmwu.guest.protocol import agent_version_text
from vmwu.unit.descriptor import (
    DISK_FORMAT_URIS,
    OVF_VERSIONS,
    RASD_NS,
    RT_CPU,
    RT_DISK,
    RT_MEMORY,
    RT_SCSI,
    VMWU_NS,
    VSSD_NS,
    XSI_NS,
    descriptor_problem,
)
from vmwu.unit.model import BaseRef, UnitDescriptor, UnitFile

_64_BIT_ARCHES: Final = frozenset({"x86_64", "aarch64", "ppc64le", "ppc64", "riscv64", "s390x"})


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
    env = _envelope(desc.ovf_version)
    _add_references(env, desc.files)
    disks = [f for f in desc.files if f.is_disk]
    if disks:
        _add_disk_section(env, disks)
    vs = _add_virtual_system(env, desc)
    _add_hardware(vs, desc, disks)
    if desc.description:
        note = vs.add("AnnotationSection")
        note.add("Info", "A description of the work unit")
        note.add("Annotation", desc.description)
    _add_work_unit_section(vs, desc)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _serialize(env, out)
    return "".join(out).encode("utf-8")


def _envelope(ovf_version: str) -> _El:
    return _El(
        "Envelope",
        [
            ("xmlns", OVF_VERSIONS[ovf_version]),
            ("xmlns:ovf", OVF_VERSIONS[ovf_version]),
            ("xmlns:rasd", RASD_NS),
            ("xmlns:vssd", VSSD_NS),
            ("xmlns:xsi", XSI_NS),
            ("xmlns:vmwu", VMWU_NS),
            ("ovf:version", ovf_version),
        ],
    )


def _add_references(env: _El, files: tuple[UnitFile, ...]) -> None:
    """``References``: one ``File`` per unit file, with the vmwu attributes."""
    refs = env.add("References")
    for f in files:
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


def _add_disk_section(env: _El, disks: list[UnitFile]) -> None:
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


def _add_virtual_system(env: _El, desc: UnitDescriptor) -> _El:
    """``VirtualSystem`` with its name and ``OperatingSystemSection``."""
    vs = env.add("VirtualSystem", ovf__id=desc.name)
    vs.add("Info", "A vmwu work unit (virtual machine work unit)")
    vs.add("Name", desc.name)
    os_section = vs.add("OperatingSystemSection", ovf__id=_os_type(desc.base))
    os_section.add("Info", "The guest operating system")
    os_section.add("Description", desc.base.guest_os or "unknown")
    return vs


def _add_hardware(vs: _El, desc: UnitDescriptor, disks: list[UnitFile]) -> None:
    """``VirtualHardwareSection``: the system type, CPUs, memory and the disks."""
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
    cpu.add("rasd:ResourceType", RT_CPU)
    cpu.add("rasd:VirtualQuantity", str(desc.cpus))
    mem = hw.add("Item")
    mem.add("rasd:AllocationUnits", "byte * 2^20")
    mem.add("rasd:Description", "Memory size")
    mem.add("rasd:ElementName", f"{desc.memory_mib} MiB of memory")
    mem.add("rasd:InstanceID", "2")
    mem.add("rasd:ResourceType", RT_MEMORY)
    mem.add("rasd:VirtualQuantity", str(desc.memory_mib))
    if disks:
        _add_disk_items(hw, disks)


def _add_disk_items(hw: _El, disks: list[UnitFile]) -> None:
    """A SCSI controller and one hard disk item per disk."""
    ctl = hw.add("Item")
    ctl.add("rasd:Address", "0")
    ctl.add("rasd:Description", "SCSI controller")
    ctl.add("rasd:ElementName", "SCSI controller 0")
    ctl.add("rasd:InstanceID", "3")
    ctl.add("rasd:ResourceSubType", "lsilogic")
    ctl.add("rasd:ResourceType", RT_SCSI)
    for i, f in enumerate(disks):
        item = hw.add("Item")
        item.add("rasd:AddressOnParent", str(i if i < 7 else i + 1))  # 7: the controller
        item.add("rasd:Description", f.role.value)
        item.add("rasd:ElementName", f"Hard disk {i + 1}")
        item.add("rasd:HostResource", f"ovf:/disk/{f.id}")
        item.add("rasd:InstanceID", str(4 + i))
        item.add("rasd:Parent", "3")
        item.add("rasd:ResourceType", RT_DISK)


def _add_work_unit_section(vs: _El, desc: UnitDescriptor) -> None:
    """``vmwu:WorkUnitSection``: how vmwu boots the unit and launches its application."""
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
    base.add("vmwu:AgentVersion", agent_version_text(desc.base.agent_version))
    base.add("vmwu:CdromAsHardDisk", _bool(desc.base.cdrom_as_hard_disk))
    layout = wu.add("vmwu:GuestLayout")
    layout.add("vmwu:AppDir", desc.layout.app_dir)
    layout.add("vmwu:OutputDir", desc.layout.output_dir)
    layout.add("vmwu:CdromDir", desc.layout.cdrom_dir)
    layout.add("vmwu:ScriptName", desc.layout.script_name)
    wu.add("vmwu:AppLaunch", desc.app_launch)
    if desc.timeout is not None:
        wu.add("vmwu:Timeout", repr(float(desc.timeout)))
