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


def make_bios_disk(
    dest: Path,
    *,
    boot_files: Mapping[str, Path],
    entry: BootEntry,
    root: rootfs.Staged,
    root_size: int,
    boot_size: int = 64 * MiB,
    root_uuid: str = "7c6e0a5e-0000-4000-8000-0000000000b2",
) -> None:
    """Write a raw bootable disk at ``dest``: ``boot_files`` (name on the FAT partition ->
    host file) and ``syslinux.cfg`` on partition 1, the staged ``root`` tree as ext4 on
    partition 2 (``root_size`` bytes, label ``ROOT``, owners and modes fixed up)."""
    if not MBR_CODE.is_file():
        raise HostFailure(f"{MBR_CODE} is missing", hint="apt-get install syslinux-common")
    boot_start = 1 * MiB
    root_start = boot_start + boot_size
    total = root_start + root_size
    with open(dest, "wb") as fh:
        fh.truncate(total)
    table = (
        "label: dos\n"
        f"start={boot_start // SECTOR}, size={boot_size // SECTOR}, type=e, bootable\n"
        f"start={root_start // SECTOR}, size={root_size // SECTOR}, type=83\n"
    )
    tools.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", dest], input=table.encode())
    with open(dest, "r+b") as fh:
        fh.write(MBR_CODE.read_bytes()[:440])  # boot code only: the table follows at 446
    fat = f"{os.fspath(dest)}@@{boot_start}"
    sectors = boot_size // SECTOR
    tools.run(["mformat", "-i", fat, "-T", str(sectors), "-h", "64", "-s", "32",
               "-H", str(boot_start // SECTOR), "-v", "VMWUBOOT", "::"])  # fmt: skip
    cfg = dest.parent / f".{dest.name}.syslinux.cfg"
    cfg.write_text(syslinux_cfg(entry))
    try:
        tools.run(["mcopy", "-i", fat, cfg, "::/syslinux.cfg"])
    finally:
        cfg.unlink()
    for name, src in boot_files.items():
        tools.run(["mcopy", "-i", fat, src, f"::/{name}"])
    tools.run(["syslinux", "--install", "--offset", str(boot_start), dest])
    rootfs.make_ext4(dest, root, size=root_size, label="ROOT", uuid=root_uuid, offset=root_start)
