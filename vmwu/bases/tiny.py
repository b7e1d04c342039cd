"""The "tiny" base: Debian's cloud kernel + busybox + the vmwu agent, booted directly.

Built from distribution packages without root mounts and without network inside a guest:

1. ``apt-get download`` the cloud kernel (``linux-image-cloud-amd64``'s current
   dependency; ``-arm64`` for an arm64 base, through a private apt state, see apt.py) and
   ``busybox-static`` (or use ``.deb`` files given on the command line);
2. ``dpkg-deb -x`` both into a scratch directory;
3. write a gzip'd newc initramfs: busybox, the agent and its helpers, ``/init``, and the
   kernel modules the vmwu disks need (virtio PCI/block/SCSI, isofs, CD-ROM) in
   dependency order;
4. copy the kernel (bzImage) and the initramfs into the base directory and register both
   in the catalog as one base (boot method ``direct-kernel``).

The root file system is the initramfs itself, so no base *disk* exists: a unit carries (or
references) just the kernel and the initramfs, and the VM boots with ``-kernel/-initrd``
(docs/tiny-base.md explains why).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmwu import guest, paths, tools
from vmwu.bases.apt import Apt
from vmwu.bases.catalog import BaseImage, Catalog
from vmwu.bases.register import direct_kernel_base
from vmwu.errors import BadInput, VmwuError
from vmwu.guest.protocol import AGENT_VERSION, KernelOption
from vmwu.images import cpio
from vmwu.unit.model import FileRole

log = logging.getLogger(__name__)

BUSYBOX = "busybox-static"


@dataclass(frozen=True)
class ArchProfile:
    """What differs between architectures of the tiny base."""

    arch: str  # vmwu's name (catalog, app-architecture)
    deb_arch: str  # Debian's name
    kernel_meta: str  # the metapackage pointing at the current cloud kernel
    kernel_format: str  # how QEMU takes the kernel file
    modules: tuple[str, ...]  # loaded at boot, with their dependencies, in order
    cmdline: str


# Modules the guest needs for the vmwu disks; the SCSI CD-ROM ones are loaded only when the
# launcher attaches the ISO as a CD-ROM (vmwu.cdrom_dev=scsi).
CDROM_MODULES = ("virtio_scsi", "sr_mod")

PROFILES = {
    "x86_64": ArchProfile(
        arch="x86_64",
        deb_arch="amd64",
        kernel_meta="linux-image-cloud-amd64",
        kernel_format="bzimage",
        modules=("virtio_pci", "virtio_blk", "isofs"),
        # Tuned for TCG (shared/notes/fast-boot.md): no crypto self-tests, no ACPI (we end
        # with reboot -f under -no-reboot), no timer calibration, no KASLR. Events go to
        # the second 8250 UART (ttyS1).
        cmdline=(
            "console=ttyS0 quiet panic=-1 cryptomgr.notests mitigations=off "
            "lapic_timer_period=4000000 no_timer_check nokaslr edd=off audit=0 apparmor=0 "
            "security=none acpi=off"
        ),
    ),
    "aarch64": ArchProfile(
        arch="aarch64",
        deb_arch="arm64",
        kernel_meta="linux-image-cloud-arm64",
        kernel_format="image",
        # QEMU's "virt" board has a single UART (the console, ttyAMA0): the agent's events
        # go to a virtio console (hvc0) instead.
        modules=("virtio_pci", "virtio_blk", "virtio_console", "isofs"),
        cmdline=(
            "console=ttyAMA0 quiet panic=-1 cryptomgr.notests mitigations=off nokaslr "
            f"audit=0 apparmor=0 security=none {KernelOption.EVENTS}=/dev/hvc0"
        ),
    ),
}
# The x86_64 command line, which other x86 bases built from the cloud kernel reuse.
CMDLINE = PROFILES["x86_64"].cmdline
ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def profile(arch: str) -> ArchProfile:
    try:
        return PROFILES[ARCH_ALIASES[arch.lower()]]
    except KeyError:
        raise BadInput(
            f"the tiny base cannot be built for {arch!r}", hint="use --arch amd64 or arm64"
        ) from None


Step = Callable[[str], None]


def module_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        ko = index.get(key)
        if ko is None:
            return  # built into the kernel
        match = re.search(rb"\0depends=([^\0]*)\0", b"\0" + ko.read_bytes())
        for dep in match.group(1).decode().split(",") if match and match.group(1) else []:
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def applet_links(busybox: Path) -> list[str]:
    """Paths of busybox's applets (``usr/bin/awk``...), asking the binary itself; empty if
    it cannot run here (another architecture): /init then installs them at boot."""
    try:
        out = tools.run([busybox, "--list-full"], check=False).stdout.decode()
    except (OSError, VmwuError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip() and ".." not in line]


DIRS = (
    "bin",
    "sbin",
    "dev",
    "etc",
    "etc/vmwu",
    "lib",
    "lib/modules",
    "proc",
    "sys",
    "tmp",
    "usr",
    "usr/bin",
    "usr/sbin",
    "root",
    "run",
)


def build_initramfs(
    busybox: Path, modules: list[Path], cdrom_modules: list[Path], dest: Path
) -> None:
    """The tiny base's root file system: busybox with its applet links, the agent and its
    helpers, /init, and the kernel modules with their load order."""
    entries = [cpio.directory(d) for d in DIRS]
    entries += [
        cpio.chardev("dev/console", 5, 1),
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.file("init", guest.read(guest.TINY_INIT), 0o755),
        cpio.file("usr/bin/vmwu-agent", guest.read(guest.AGENT), 0o755),
        cpio.file("usr/bin/vmwu-progress", guest.read(guest.PROGRESS), 0o755),
        cpio.file("usr/bin/vmwu-mount", guest.read(guest.MOUNT), 0o755),
        cpio.file("usr/bin/vmwu-findlabel", guest.read(guest.FINDLABEL), 0o755),
        cpio.file("etc/vmwu/agent-version", f"{AGENT_VERSION}\n".encode()),
    ]
    taken = {e.path for e in entries}
    entries += [cpio.symlink(p, "/bin/busybox") for p in applet_links(busybox) if p not in taken]
    added: set[str] = set()
    for listname, kos in (("modules", modules), ("modules.cdrom", cdrom_modules)):
        for ko in kos:
            if ko.stem not in added:
                entries.append(cpio.file(f"lib/modules/{ko.stem}.ko", ko.read_bytes()))
                added.add(ko.stem)
        order = "".join(ko.stem + "\n" for ko in kos)
        entries.append(cpio.file(f"etc/vmwu/{listname}", order.encode()))
    cpio.write_initramfs(dest, entries)


def build_tiny(
    catalog: Catalog,
    *,
    name: str = "tiny",
    kernel_deb: Path | None = None,
    busybox_deb: Path | None = None,
    arch: str = "x86_64",
    replace: bool = False,
    step: Step = lambda msg: None,
) -> BaseImage:
    prof = profile(arch)
    if not replace and catalog.exists(name):
        raise BadInput(f"base '{name}' already exists in {catalog.path}", hint="use --replace")
    from vmwu.cache import NodeCache

    # the package caches are in use until the packages are unpacked (`vmwu cache clean`)
    cache = NodeCache()
    downloads = cache.root / "downloads"
    with cache.in_use(downloads), cache.in_use(cache.root / "apt"):
        wanted = []
        apt = Apt(prof.deb_arch)
        if kernel_deb is None or busybox_deb is None:
            step("finding the kernel package" + (f" ({prof.deb_arch})" if apt.foreign else ""))
            apt.update()
        if kernel_deb is None:
            wanted.append(apt.depends(prof.kernel_meta))
        if busybox_deb is None:
            wanted.append(BUSYBOX)
        if wanted:
            step(f"downloading {', '.join(wanted)}")
            got = apt.download(wanted, downloads)
            if kernel_deb is None:
                kernel_deb = got.pop(0)
            if busybox_deb is None:
                busybox_deb = got.pop(0)
        assert kernel_deb is not None and busybox_deb is not None
        for deb in (kernel_deb, busybox_deb):
            if not deb.is_file():
                raise BadInput(f"{deb} does not exist")

        base_dir = paths.bases_dir() / name
        with tempfile.TemporaryDirectory(prefix="vmwu-tiny-") as tmp_str:
            tmp = Path(tmp_str)
            step("unpacking the packages")
            tools.run(["dpkg-deb", "-x", kernel_deb, tmp / "kernel"])
            tools.run(["dpkg-deb", "-x", busybox_deb, tmp / "busybox"])
            vmlinuz = sorted((tmp / "kernel" / "boot").glob("vmlinuz-*"))
            if not vmlinuz:
                raise BadInput(
                    f"{kernel_deb} holds no /boot/vmlinuz-*: is it a linux-image package?"
                )
            version = vmlinuz[-1].name.removeprefix("vmlinuz-")
            busybox = tmp / "busybox" / "bin" / "busybox"
            if not busybox.is_file():
                raise BadInput(f"{busybox_deb} holds no /bin/busybox: is it busybox-static?")
            step("writing the initramfs")
            moddir = tmp / "kernel" / "lib" / "modules" / version
            modules = module_order(moddir, prof.modules)
            cdrom = [
                m for m in module_order(moddir, prof.modules + CDROM_MODULES) if m not in modules
            ]
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_ensure(base_dir.parent)))
            try:
                build_initramfs(busybox, modules, cdrom, staging / "initrd.img")
                shutil.copyfile(vmlinuz[-1], staging / "kernel")
                (staging / "autorun.sh").write_bytes(guest.read(guest.DEFAULT_TEMPLATE))
                if base_dir.exists():
                    shutil.rmtree(base_dir)
                staging.rename(base_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    base = direct_kernel_base(
        name=name,
        description=f"busybox + vmwu agent on Debian's cloud kernel {version} (direct boot)",
        base_dir=base_dir,
        files=[
            (FileRole.KERNEL, "kernel", prof.kernel_format),
            (FileRole.INITRD, "initrd.img", "cpio"),
        ],
        architecture=prof.arch,
        kernel_version=version,
        cmdline=prof.cmdline,
    )
    step("registering the base")
    return catalog.add(base, replace=replace)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
