"""A whole disk that boots by its own boot loader (BIOS), made without root or mounts.

Layout (MBR, 1 MiB aligned)::

    sector 0        MBR: syslinux's mbr.bin boot code + the partition table (sfdisk)
    partition 1     FAT16, bootable: syslinux (ldlinux.sys), syslinux.cfg, kernel, initrd
    partition 2     ext4 root file system (mkfs.ext4 -d, written at its offset)

Every step works on the image file: ``sfdisk`` writes the table into the file, mtools
(``mformat``/``mcopy`` with ``-i IMAGE@@OFFSET``) fills the FAT partition in place,
``syslinux --offset`` installs its boot sector and ``ldlinux.sys`` there, and
``mkfs.ext4 -E offset=`` writes the root file system at partition 2's offset. No loop
device, no mount. vmwu itself boots its bases directly (no boot loader); this module
makes the *other* kind of image, the one ``vmwu base import`` takes, for tests and
benchmarks (docs/bases.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmwu import tools
from vmwu.errors import HostFailure
from vmwu.images import rootfs

MiB = 1024**2
SECTOR = 512
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")


@dataclass(frozen=True)
class BootEntry:
    """What syslinux boots: kernel and initrd (file names on the FAT partition) and the
    kernel command line."""

    kernel: str = "vmlinuz"
    initrd: str | None = "initrd.img"
    append: str = "console=ttyS0"


def syslinux_cfg(entry: BootEntry) -> str:
    """No menu, no prompt, no timeout: straight into the kernel."""
    lines = ["DEFAULT linux", "PROMPT 0", "TIMEOUT 0", "LABEL linux", f"  KERNEL /{entry.kernel}"]
    if entry.initrd:
        lines.append(f"  INITRD /{entry.initrd}")
    lines.append(f"  APPEND {entry.append}")
    return "\n".join(lines) + "\n"


def systemd_boot_entry(entry: BootEntry) -> dict[str, str]:
    """systemd-boot's configuration: boot the one entry at once, no menu."""
    lines = ["title vmwu", f"linux /{entry.kernel}"]
    if entry.initrd:
        lines.append(f"initrd /{entry.initrd}")
    lines.append(f"options {entry.append}")
    return {
        "loader/loader.conf": "default vmwu.conf\ntimeout 0\n",
        "loader/entries/vmwu.conf": "\n".join(lines) + "\n",
    }


def _partitions(dest: Path, label: str, boot: tuple[int, int], root: tuple[int, int]) -> None:
    if label == "gpt":
        table = (
            "label: gpt\n"
            f"start={boot[0] // SECTOR}, size={boot[1] // SECTOR}, type=U\n"
            f"start={root[0] // SECTOR}, size={root[1] // SECTOR}, type=L\n"
        )
    else:
        table = (
            "label: dos\n"
            f"start={boot[0] // SECTOR}, size={boot[1] // SECTOR}, type=e, bootable\n"
            f"start={root[0] // SECTOR}, size={root[1] // SECTOR}, type=83\n"
        )
    tools.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", dest], input=table.encode())


def _fat(dest: Path, start: int, size: int, files: Mapping[str, Path | str]) -> str:
    """Format the FAT partition at ``start`` in place and copy ``files`` into it (name ->
    host file, or text); returns the mtools image spec."""
    fat = f"{os.fspath(dest)}@@{start}"
    tools.run(["mformat", "-i", fat, "-T", str(size // SECTOR), "-h", "64", "-s", "32",
               "-H", str(start // SECTOR), "-v", "VMWUBOOT", "::"])  # fmt: skip
    made: set[str] = set()
    for name, src in files.items():
        parts = name.split("/")[:-1]
        for i in range(len(parts)):
            d = "/".join(parts[: i + 1])
            if d not in made:
                tools.run(["mmd", "-i", fat, f"::/{d}"])
                made.add(d)
        if isinstance(src, str):
            text = dest.parent / f".{dest.name}.{name.replace('/', '_')}"
            text.write_text(src)
            try:
                tools.run(["mcopy", "-i", fat, text, f"::/{name}"])
            finally:
                text.unlink()
        else:
            tools.run(["mcopy", "-i", fat, src, f"::/{name}"])
    return fat


def make_bios_disk(
    dest: Path,
    *,
    boot_files: Mapping[str, Path],
    entry: BootEntry,
    root: rootfs.Staged,
    root_size: int,
    boot_size: int = 64 * MiB,
    root_uuid: str = "7c6e0a5e-0000-4000-8000-0000000000b2",
    uefi_loader: Path | None = None,
) -> None:
    """Write a raw bootable disk at ``dest``: ``boot_files`` (name on the FAT partition ->
    host file) and the boot loader's configuration on partition 1, the staged ``root``
    tree as ext4 on partition 2 (``root_size`` bytes, label ``ROOT``, owners and modes
    fixed up). BIOS: MBR, syslinux. With ``uefi_loader`` (systemd-boot's
    ``systemd-bootx64.efi``): GPT, partition 1 is the EFI system partition holding it as
    ``EFI/BOOT/BOOTX64.EFI``, and no BIOS boot code at all."""
    boot_start = 1 * MiB
    root_start = boot_start + boot_size
    with open(dest, "wb") as fh:
        fh.truncate(root_start + root_size + (1 * MiB if uefi_loader else 0))  # backup GPT
    files: dict[str, Path | str] = dict(boot_files)
    if uefi_loader is not None:
        _partitions(dest, "gpt", (boot_start, boot_size), (root_start, root_size))
        files["EFI/BOOT/BOOTX64.EFI"] = uefi_loader
        files.update(systemd_boot_entry(entry))
        _fat(dest, boot_start, boot_size, files)
    else:
        if not MBR_CODE.is_file():
            raise HostFailure(f"{MBR_CODE} is missing", hint="apt-get install syslinux-common")
        _partitions(dest, "dos", (boot_start, boot_size), (root_start, root_size))
        with open(dest, "r+b") as fh:
            fh.write(MBR_CODE.read_bytes()[:440])  # boot code only: the table follows at 446
        files["syslinux.cfg"] = syslinux_cfg(entry)
        _fat(dest, boot_start, boot_size, files)
        tools.run(["syslinux", "--install", "--offset", str(boot_start), dest])
    rootfs.make_ext4(dest, root, size=root_size, label="ROOT", uuid=root_uuid, offset=root_start)
