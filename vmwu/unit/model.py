"""The work-unit descriptor: what a ``.ova`` says about itself.

This is the in-memory form of the OVF descriptor (``vmwu.unit.ovf_render`` writes it,
``vmwu.unit.ovf_parse`` reads it).
``pack`` builds one, ``run``/``inspect``/``extract`` read one. Files are either embedded in
the ``.ova`` (listed in its manifest) or *referenced*: resolved on the node by sha256 from the
node cache or the base catalog, so a sweep ships a big base once per node, not once per job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from vmwu.guest.protocol import AGENT_VERSION


class FileRole(StrEnum):
    KERNEL = "kernel"  # direct-boot kernel of the base (bzImage)
    INITRD = "initrd"  # direct-boot initramfs of the base
    BASE_DISK = "base-disk"  # bootable or root disk of the base
    APP_DISK = "app-disk"  # application disk (label VMWU-APP)
    OUTPUT_DISK = "output-disk"  # empty output disk (label VMWU-OUT)
    # qcow2 overlay over the base disk with the unit's guest-packages installed (its
    # backing file is named by the base disk's sha256: a sibling blob in the node cache)
    BASE_LAYER = "base-layer"


class BootMethod(StrEnum):
    DIRECT_KERNEL = "direct-kernel"  # -kernel/-initrd/-append, no bootloader
    DISK = "disk"  # the base disk boots by its own bootloader


DISK_ROLES = (FileRole.BASE_DISK, FileRole.APP_DISK, FileRole.OUTPUT_DISK, FileRole.BASE_LAYER)
BASE_ROLES = (FileRole.KERNEL, FileRole.INITRD, FileRole.BASE_DISK)


@dataclass(frozen=True)
class UnitFile:
    """One file of a unit (an OVF ``References/File``)."""

    id: str  # OVF file id, e.g. "app-disk"
    href: str  # member name inside the .ova; for a referenced file, its original name
    role: FileRole
    sha256: str  # hex digest of the file's bytes
    size: int  # bytes of the file as stored
    embedded: bool  # member of the .ova (and its manifest), or resolved by sha256
    format: str  # "qcow2", "raw", "vmdk" for disks; "bzimage", "cpio" for kernel/initrd
    capacity: int | None = None  # virtual size in bytes (disks only)
    label: str | None = None  # file-system label inside the disk (VMWU-APP, VMWU-OUT)
    filesystem: str | None = None  # file system inside the disk (ext4, ...)

    @property
    def is_disk(self) -> bool:
        return self.role in DISK_ROLES


@dataclass(frozen=True)
class BaseRef:
    """Which base the unit runs on, and how to boot it."""

    name: str
    sha256: str  # identity of the base (catalog ``sha256``)
    architecture: str  # canonical: x86_64, i386, aarch64
    guest_os: str  # e.g. "linux6.1"
    boot_method: BootMethod
    cmdline: str = ""  # kernel command line (direct-kernel boot), without vmwu.* keys
    agent_version: int | None = AGENT_VERSION  # None: no vmwu agent (imported image)
    cdrom_as_hard_disk: bool = True  # how the base prefers the instance ISO attached


@dataclass(frozen=True)
class GuestLayout:
    """Mount points and names inside the guest (spec options app-dir & co.)."""

    app_dir: str = "/app"
    output_dir: str = "/output"
    cdrom_dir: str = "/cdrom"
    script_name: str = "autorun.sh"


@dataclass(frozen=True)
class UnitDescriptor:
    name: str
    base: BaseRef
    files: tuple[UnitFile, ...]
    memory_mib: int = 512
    cpus: int = 1
    description: str = ""
    app_launch: str = ""
    layout: GuestLayout = field(default_factory=GuestLayout)
    timeout: float | None = None  # default wall-clock limit for `vmwu run`, seconds
    vmwu_version: str = ""
    ovf_version: str = "1.0"

    def file(self, role: FileRole) -> UnitFile | None:
        for f in self.files:
            if f.role == role:
                return f
        return None

    def embedded_files(self) -> list[UnitFile]:
        return [f for f in self.files if f.embedded]

    def referenced_files(self) -> list[UnitFile]:
        return [f for f in self.files if not f.embedded]
